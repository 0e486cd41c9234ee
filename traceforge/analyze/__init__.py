"""Analyze: metrics, significance, plots, HTML report, Perfetto export for any run directory."""
