"""DAFormer decode head (docs/method.md §3).

Per-level MLP embeddings -> bilinear resize to the stride-4 map -> concatenation -> context-aware fusion
(depthwise-separable ASPP without pooling branch, or a 1x1 conv for the scale-attention head) ->
``Dropout2d`` -> 1x1 classifier ``conv_seg``. Child module names equal the original mmseg module tree
(docs/method.md §3.4), so an original state dict loads without renaming below the head prefix.
"""
from typing import Dict, List, Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import Tensor, nn
from torch.nn import functional as F

from ...config import check_choice
from ..activation_checkpointing import checkpointed_call, should_checkpoint

__all__ = ["DAFormerHead", "ConvNormReLU", "DepthwiseSeparableConvNormReLU", "SeparableASPPFusion", "MLPEmbedding"]


class ConvNormReLU(nn.Module):
    """conv -> norm -> ReLU (mmcv ``ConvModule`` order); children ``conv`` and ``bn``.

    The conv has a bias only when ``norm`` is empty (mmcv ``bias='auto'``). Initialisation as mmcv's
    ConvModule: kaiming-normal weights (``fan_out``, ReLU gain), zero bias, norm weight 1 and bias 0.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        norm: str = "BN",
    ):
        super().__init__()
        bn = get_norm(norm, out_channels)
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bn is None,
        )
        self.bn = bn
        self.activation = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, a=0, mode="fan_out", nonlinearity="relu")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)
        if self.bn is not None and getattr(self.bn, "weight", None) is not None:
            nn.init.ones_(self.bn.weight)
            nn.init.zeros_(self.bn.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.activation(x)


class DepthwiseSeparableConvNormReLU(nn.Module):
    """``depthwise_conv`` (k x k, groups = in_channels, norm, ReLU) -> ``pointwise_conv`` (1x1, norm, ReLU).

    Both parts get norm and activation (mmcv ``DepthwiseSeparableConvModule`` defaults).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, dilation: int, norm: str):
        super().__init__()
        self.depthwise_conv = ConvNormReLU(
            in_channels,
            in_channels,
            kernel_size,
            padding=dilation * (kernel_size // 2),
            dilation=dilation,
            groups=in_channels,
            norm=norm,
        )
        self.pointwise_conv = ConvNormReLU(in_channels, out_channels, 1, norm=norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class SeparableASPPFusion(nn.Module):
    """Depthwise-separable ASPP without image-pool branch, followed by a 3x3 ``bottleneck``.

    ``aspp_modules[k]`` for dilation 1 is a 1x1 ``ConvNormReLU``; every other dilation d is a 3x3
    depthwise-separable module with dilation and padding d. Branch outputs are concatenated in the order
    of ``dilations``.

    Input ``N x in_channels x H x W`` -> output ``N x channels x H x W``.
    """

    def __init__(self, in_channels: int, channels: int, dilations: Sequence[int], norm: str):
        super().__init__()
        branches: List[nn.Module] = []
        for dilation in dilations:
            if dilation == 1:
                branches.append(ConvNormReLU(in_channels, channels, 1, norm=norm))
            else:
                branches.append(
                    DepthwiseSeparableConvNormReLU(in_channels, channels, 3, dilation=dilation, norm=norm)
                )
        self.aspp_modules = nn.ModuleList(branches)
        self.bottleneck = ConvNormReLU(len(dilations) * channels, channels, 3, padding=1, norm=norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.bottleneck(torch.cat([branch(x) for branch in self.aspp_modules], dim=1))


class MLPEmbedding(nn.Module):
    """Per-pixel ``Linear`` projection (child ``proj``): ``N x C_in x H x W`` -> ``N x C_out x H x W``.

    Keeps torch's default Linear initialisation (the original's recursive init does not reach it).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Linear(in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        tokens = self.proj(x.flatten(2).transpose(1, 2).contiguous())  # N x HW x C_out, row-major pixels
        return tokens.permute(0, 2, 1).contiguous().reshape(n, -1, h, w)


@SEM_SEG_HEADS_REGISTRY.register()
class DAFormerHead(nn.Module):
    """DAFormer decode head.

    ``forward(features)`` takes the backbone feature dict, uses ``in_features`` in the given order (the
    first one defines the output size, stride 4 for MiT) and returns logits
    ``N x num_classes x H_0 x W_0``. Losses are computed by the meta-architecture.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        in_features: Sequence[str],
        num_classes: int,
        embed_dim: int = 256,
        channels: int = 256,
        fusion: str = "aspp",
        aspp_dilations: Sequence[int] = (1, 6, 12, 18),
        dropout: float = 0.1,
        norm: str = "BN",
        checkpoint_activations: bool = False,
    ):
        """
        Args:
            input_shape: shapes of the backbone outputs (channels are read for ``in_features``).
            in_features: names of the backbone maps, finest first (e.g. res2..res5).
            num_classes: output channels of ``conv_seg``.
            embed_dim: width of every MLP embedding.
            channels: output width of the fusion layer (input width of ``conv_seg``).
            fusion: "aspp" (depthwise-separable ASPP + 3x3 bottleneck) or "conv" (1x1 conv, norm, ReLU).
            aspp_dilations: ASPP branch dilations (fusion "aspp" only).
            dropout: ``Dropout2d`` probability before ``conv_seg``.
            norm: Detectron2 norm name for ``get_norm`` ("BN", "SyncBN", "" for none, ...).
            checkpoint_activations: in training forwards with autograd on, recompute the head's activations
                (the stride-4 embeddings and fusion) in the backward pass; same gradients and BN statistics.
        """
        super().__init__()
        missing = [name for name in in_features if name not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES names {missing}, which the backbone does not output "
                f"(it outputs {sorted(input_shape)}); set IN_FEATURES to a subset of the backbone's OUT_FEATURES."
            )
        check_choice("MODEL.SEM_SEG_HEAD.FUSION", fusion)
        self.in_features = list(in_features)
        self.checkpoint_activations = bool(checkpoint_activations)
        self.num_classes = num_classes
        self.embed_layers = nn.ModuleDict(
            {
                str(i): MLPEmbedding(input_shape[name].channels, embed_dim)
                for i, name in enumerate(self.in_features)
            }
        )
        fused_channels = embed_dim * len(self.in_features)
        if fusion == "aspp":
            self.fuse_layer = SeparableASPPFusion(fused_channels, channels, aspp_dilations, norm)
        else:
            self.fuse_layer = ConvNormReLU(fused_channels, channels, 1, norm=norm)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv_seg.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": input_shape,
            "in_features": list(head.IN_FEATURES),
            "num_classes": head.NUM_CLASSES,
            "embed_dim": head.EMBED_DIM,
            "channels": head.EMBED_DIM,
            "fusion": head.FUSION,
            "aspp_dilations": list(head.ASPP_DILATIONS),
            "dropout": head.DROPOUT,
            "norm": head.NORM,
            "checkpoint_activations": head.CHECKPOINT_ACTIVATIONS,
        }

    @classmethod
    def scale_attention_config(cls, cfg, input_shape: Dict[str, ShapeSpec], num_classes: int):
        """Constructor kwargs of the HRDA scale-attention head of this type (docs/method.md §5.1): the head's own
        config with ``MODEL.HRDA.ATTENTION_EMBED_DIM`` as embedding and fusion width, a 1x1-conv fusion, and
        ``num_classes`` outputs (the classes for class-wise attention, else 1)."""
        kwargs = cls.from_config(cfg, input_shape)
        width = cfg.MODEL.HRDA.ATTENTION_EMBED_DIM
        kwargs.update(embed_dim=width, channels=width, fusion="conv", num_classes=num_classes)
        return kwargs

    def forward(self, features: Dict[str, Tensor]) -> Tensor:
        """features: backbone maps by name -> logits ``N x num_classes x H_0 x W_0`` (size of the first map)."""
        maps = [features[name] for name in self.in_features]
        if should_checkpoint(self.checkpoint_activations, self):
            return checkpointed_call(self._decode, *maps, module=self)
        return self._decode(*maps)

    def _decode(self, *maps: Tensor) -> Tensor:
        """The head on the maps of ``in_features`` (in that order)."""
        out_size = maps[0].shape[-2:]
        embedded = []
        for i, x in enumerate(maps):
            e = self.embed_layers[str(i)](x)
            if e.shape[-2:] != out_size:
                e = F.interpolate(e, size=out_size, mode="bilinear", align_corners=False)
            embedded.append(e)
        x = self.fuse_layer(torch.cat(embedded, dim=1))
        return self.conv_seg(self.dropout(x))
