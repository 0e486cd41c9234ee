"""Simulate: discrete-event replay in virtual time, writing the same run directory as replay."""
