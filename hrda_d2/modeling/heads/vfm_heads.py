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

``VFMPyramidHead`` (VFM-UDA++, docs/method.md §20.6): FPN-like top-down head over the ViT-Adapter's res2..res5
(class docstring).
"""
from typing import Dict, Sequence

from detectron2.config import configurable
import torch.nn.functional as F
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from ..backbone.vit_adapter import ADAPTER_BN_MOMENTUM

__all__ = ["VFMLightweightHead", "VFMPyramidHead"]

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


# ------------------------------------------------------------------------------------------------------------
# VFM-UDA++: pyramid head over the ViT-Adapter's res2..res5 (helper vfm-adapter)
# ------------------------------------------------------------------------------------------------------------
def _pyramid_bn(norm: str, channels: int) -> nn.Module:
    layer = get_norm(norm, channels)
    if not isinstance(layer, nn.modules.batchnorm._BatchNorm):
        raise ValueError(f"MODEL.SEM_SEG_HEAD.NORM={norm!r}: VFMPyramidHead needs a BatchNorm ('SyncBN' as the "
                         f"original, or 'BN')")
    layer.momentum = ADAPTER_BN_MOMENTUM
    return layer


@SEM_SEG_HEADS_REGISTRY.register()
class VFMPyramidHead(nn.Module):
    """VFM-UDA++'s pyramid head (docs/method.md §20.6) on the ViT-Adapter maps ``res2..res5`` (C channels each,
    strides 4, 8, 16, 32 of the resized input):

        up1 = ReLU(BN(smooth_conv1(up_conv1(res5) + reduce_conv1(res4))))      C/2, stride 16
        up2 = ReLU(BN(smooth_conv2(up_conv2(up1)  + reduce_conv2(res3))))      C/4, stride 8
        up3 = ReLU(BN(smooth_conv3(up_conv3(up2)  + reduce_conv3(res2))))      C/8, stride 4
        logits = out(smooth_conv4(up3))                                         num_classes, stride 4

    ``up_conv*``: 2x2 stride-2 transposed convs; ``reduce_conv*``: 1x1; ``smooth_conv*``: 3x3 (all with bias);
    BNs ``MODEL.SEM_SEG_HEAD.NORM`` with momentum 0.01; ``out``: 1x1 without bias. Init as the original:
    convs Kaiming-uniform (fan_in, ReLU gain), transposed convs Kaiming-uniform (fan_out), zero biases, BN (1, 0),
    classifier N(0, 0.1). ``forward(features) -> N x num_classes x h2 x w2`` (the res2 grid); the
    ``SingleScaleHead`` resizes to the input size. Children ``upscale`` (original names) and ``out``: VFM-UDA++'s
    ``network.upscale.*`` / ``network.out.*`` load below ``sem_seg_head.head.``.
    """

    @configurable
    def __init__(self, input_shape: Dict[str, ShapeSpec], *, in_features: Sequence[str], num_classes: int,
                 norm: str = "SyncBN"):
        """
        Args:
            input_shape: shapes of the backbone outputs.
            in_features: the four maps finest first (``["res2", "res3", "res4", "res5"]``), equal channels C
                divisible by 8.
            num_classes: output channels.
            norm: Detectron2 norm name of the three BatchNorms (``MODEL.SEM_SEG_HEAD.NORM``).
        """
        super().__init__()
        if len(in_features) != 4 or any(f not in input_shape for f in in_features):
            raise ValueError(f"MODEL.SEM_SEG_HEAD.IN_FEATURES={list(in_features)}: VFMPyramidHead reads 4 maps "
                             f"finest first (the backbone outputs {sorted(input_shape)}); use "
                             f"['res2', 'res3', 'res4', 'res5']")
        channels = {int(input_shape[f].channels) for f in in_features}
        c = channels.pop()
        if channels or c % 8:
            raise ValueError(f"VFMPyramidHead: maps {list(in_features)} need equal channels divisible by 8, got "
                             f"{[input_shape[f].channels for f in in_features]}")
        self.in_features = list(in_features)
        self.num_classes = int(num_classes)
        self.upscale = nn.Module()
        u = self.upscale
        for k, (cin, cout) in enumerate([(c, c // 2), (c // 2, c // 4), (c // 4, c // 8)], start=1):
            setattr(u, f"up_conv{k}", nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2))
            setattr(u, f"reduce_conv{k}", nn.Conv2d(c, cout, kernel_size=1))
            setattr(u, f"smooth_conv{k}", nn.Conv2d(cout, cout, kernel_size=3, padding=1))
            setattr(u, f"norm{k}", _pyramid_bn(norm, cout))
        u.smooth_conv4 = nn.Conv2d(c // 8, c // 8, kernel_size=3, padding=1)
        for m in u.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.kaiming_uniform_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.out = nn.Conv2d(c // 8, self.num_classes, kernel_size=1, bias=False)
        nn.init.normal_(self.out.weight, mean=0.0, std=CLASSIFIER_INIT_STD)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {"input_shape": input_shape, "in_features": list(head.IN_FEATURES), "num_classes": head.NUM_CLASSES,
                "norm": head.NORM}

    def forward(self, features: Dict[str, Tensor]) -> Tensor:
        u = self.upscale
        f1, f2, f3, f4 = (features[f] for f in self.in_features)
        x = F.relu(u.norm1(u.smooth_conv1(u.up_conv1(f4) + u.reduce_conv1(f3))))
        x = F.relu(u.norm2(u.smooth_conv2(u.up_conv2(x) + u.reduce_conv2(f2))))
        x = F.relu(u.norm3(u.smooth_conv3(u.up_conv3(x) + u.reduce_conv3(f1))))
        return self.out(u.smooth_conv4(x))
