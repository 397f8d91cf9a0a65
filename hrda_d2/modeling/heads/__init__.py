"""Semantic-segmentation heads (DAFormer)."""
