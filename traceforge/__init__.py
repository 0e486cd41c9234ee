"""traceforge: generate, replay and explain ML inference workload traces on shared GPUs.

Data flow (imports point one way): generate/importers -> trace Parquet -> replay (dispatcher,
backends) -> record (run directory) -> analyze. simulate/ writes the same run directory in
virtual time. Only cli.py and commands/ import everything.
"""

__version__ = "0.1.0"
