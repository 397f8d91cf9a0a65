"""Training engine: DACS trainer and its hooks."""
