"""Semantic-segmentation heads (DAFormer)."""
from .daformer_head import DAFormerHead

__all__ = ["DAFormerHead"]
