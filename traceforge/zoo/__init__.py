"""Model zoo: models built from configs with random weights, and per-request input synthesis."""
