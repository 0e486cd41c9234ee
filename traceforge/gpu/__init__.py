"""GPU plumbing: MPS daemon control, sharing modes, NVML telemetry, NVTX ranges."""
