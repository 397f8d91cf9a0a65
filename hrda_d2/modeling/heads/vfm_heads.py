"""Decode heads of the VFM-UDA models (docs/method.md §19.2), registered in ``SEM_SEG_HEADS_REGISTRY``.

``VFMLightweightHead``: VFM-UDA's head on the ViT token map (``vit_tokens``, C channels, grid h x w):

    upscale: ConvTranspose2d(C, C/2, 2, stride 2, no bias) -> LayerNorm2d -> GELU
             -> ConvTranspose2d(C/2, C/4, 2, stride 2, no bias) -> LayerNorm2d
             -> Conv2d(C/4, C/4, 3, padding 1, no bias) -> LayerNorm2d
    out:     Conv2d(C/4, num_classes, 1, no bias), weights N(0, 0.1)

``forward(features) -> N x num_classes x 4h x 4w`` logits; the meta-architecture's ``SingleScaleHead`` resizes
them bilinearly to the input size (the original's final ``F.interpolate``). The children ``upscale`` (indices
0..6 as above) and ``out`` have the original's parameter names, so VFM-UDA's ``network.upscale.*`` /
``network.out.*`` weights load below ``sem_seg_head.head.``.
"""
from typing import Dict, Sequence

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from timm.layers import LayerNorm2d
from torch import Tensor, nn

__all__ = ["VFMLightweightHead"]

# the original initialises the classifier with N(0, 0.1) and leaves every other layer at PyTorch's default
CLASSIFIER_INIT_STD = 0.1


@SEM_SEG_HEADS_REGISTRY.register()
class VFMLightweightHead(nn.Module):
    """Two transposed-conv upscalings (x4) and a 1x1 classifier on one token map (module docstring).

    Attributes: ``in_features`` (one name), ``upscale`` (``nn.Sequential``), ``out`` (the classifier),
    ``num_classes``.
    """

    @configurable
    def __init__(self, input_shape: Dict[str, ShapeSpec], *, in_features: Sequence[str], num_classes: int):
        """
        Args:
            input_shape: shapes of the backbone outputs.
            in_features: the ONE map the head reads (``["vit_tokens"]`` of ``VFMViT``), C divisible by 4.
            num_classes: output channels.
        """
        super().__init__()
        if len(in_features) != 1 or in_features[0] not in input_shape:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.IN_FEATURES={list(in_features)}: VFMLightweightHead reads one "
                             f"backbone map (the backbone outputs {sorted(input_shape)}); use ['vit_tokens']")
        channels = int(input_shape[in_features[0]].channels)
        if channels % 4:
            raise ValueError(f"VFMLightweightHead: the {in_features[0]} map has {channels} channels, not divisible "
                             f"by 4 (the head halves them twice)")
        self.in_features = list(in_features)
        self.num_classes = int(num_classes)
        half, quarter = channels // 2, channels // 4
        self.upscale = nn.Sequential(
            nn.ConvTranspose2d(channels, half, kernel_size=2, stride=2, bias=False),
            LayerNorm2d(half),
            nn.GELU(),
            nn.ConvTranspose2d(half, quarter, kernel_size=2, stride=2, bias=False),
            LayerNorm2d(quarter),
            nn.Conv2d(quarter, quarter, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(quarter),
        )
        self.out = nn.Conv2d(quarter, self.num_classes, kernel_size=1, bias=False)
        nn.init.normal_(self.out.weight, mean=0.0, std=CLASSIFIER_INIT_STD)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {"input_shape": input_shape, "in_features": list(head.IN_FEATURES), "num_classes": head.NUM_CLASSES}

    def forward(self, features: Dict[str, Tensor]) -> Tensor:
        return self.out(self.upscale(features[self.in_features[0]]))
