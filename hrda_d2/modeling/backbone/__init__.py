"""Backbones (MiT, any timm model). Importing registers ``build_mit_backbone`` and ``build_timm_backbone`` in
Detectron2's ``BACKBONE_REGISTRY``."""
from .mit import MIT_VARIANTS, MiTVariant, MixVisionTransformer, build_mit_backbone
from .timm_backbone import TimmHierarchicalBackbone, TimmViTBackbone, build_timm_backbone

__all__ = ["MIT_VARIANTS", "MiTVariant", "MixVisionTransformer", "build_mit_backbone",
           "TimmHierarchicalBackbone", "TimmViTBackbone", "build_timm_backbone"]
