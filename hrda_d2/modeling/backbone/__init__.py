"""Backbones (MiT). Importing registers ``build_mit_backbone`` in Detectron2's ``BACKBONE_REGISTRY``."""
from .mit import MIT_VARIANTS, MiTVariant, MixVisionTransformer, build_mit_backbone

__all__ = ["MIT_VARIANTS", "MiTVariant", "MixVisionTransformer", "build_mit_backbone"]
