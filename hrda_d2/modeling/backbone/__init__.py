"""Backbones (MiT, ResNet-V1c, any timm model, DINOv2 for VFM-UDA). Importing registers ``build_mit_backbone``,
``build_resnet_v1c_backbone``, ``build_timm_backbone`` and ``VFMViT`` in Detectron2's ``BACKBONE_REGISTRY``."""
from .dinov2_vit import DINOv2ViT, VFMViT
from .mit import MIT_VARIANTS, MiTVariant, MixVisionTransformer, build_mit_backbone
from .resnet_v1c import build_resnet_v1c_backbone
from .timm_backbone import TimmHierarchicalBackbone, TimmViTBackbone, build_timm_backbone

__all__ = ["MIT_VARIANTS", "MiTVariant", "MixVisionTransformer", "build_mit_backbone", "build_resnet_v1c_backbone",
           "TimmHierarchicalBackbone", "TimmViTBackbone", "build_timm_backbone",
           "DINOv2ViT", "VFMViT"]
