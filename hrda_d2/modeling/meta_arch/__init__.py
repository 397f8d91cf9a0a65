"""Meta-architectures (HRDA)."""
