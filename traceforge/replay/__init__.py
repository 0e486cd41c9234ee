"""Replay: the precise clock, the open/closed-loop dispatcher and the Backend protocol."""
