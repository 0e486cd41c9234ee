"""Simulate: discrete-event replay in virtual time, writing the same run directory as replay.

    simulate(trace, run_dir, ...)   the public entry point (:mod:`.simulator`)
    load_profile(path) -> Profile   GPU profiles measured by ``traceforge profile`` (:mod:`.profile`)
    measure_profile(...)            the measuring code behind ``traceforge profile`` (:mod:`.measure`)
"""

from traceforge.simulate.profile import PROFILE_SCHEMA_ID, Profile, load_profile
from traceforge.simulate.simulator import SimulationSummary, simulate

__all__ = ["PROFILE_SCHEMA_ID", "Profile", "SimulationSummary", "load_profile", "simulate"]
