"""Importers: real public traces (Azure Functions/LLM, BurstGPT, Mooncake, CSV) -> trace table."""
