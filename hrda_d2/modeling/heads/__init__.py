"""Single-scale semantic-segmentation heads (DAFormer, DeepLabV2, VFM-UDA's lightweight head); the HRDA head that
wraps one of them is ``modeling/meta_arch/hrda_head.py``."""
from .daformer_head import DAFormerHead
from .dlv2_head import DLV2Head
from .vfm_heads import VFMLightweightHead

__all__ = ["DAFormerHead", "DLV2Head", "VFMLightweightHead"]
