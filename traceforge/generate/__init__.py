"""Generate: workload spec (TOML) -> arrival processes and request shapes -> trace table."""
