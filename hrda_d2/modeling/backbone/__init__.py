"""Backbones (MiT)."""
