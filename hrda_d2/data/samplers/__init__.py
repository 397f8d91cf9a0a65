"""Samplers (rare class sampling)."""
