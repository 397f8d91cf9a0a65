"""Mix Transformer (MiT, the SegFormer encoder) as a Detectron2 backbone.

Reference: docs/method.md §2 ("MiT backbone"). Submodule and parameter names are exactly the keys of the
official SegFormer ImageNet checkpoints (``patch_embed1.proj.weight``, ``block1.0.attn.kv.weight``,
``norm4.bias``, ...), so such a file minus its ``head.*`` classifier loads with ``strict=True``.

Tensor conventions: images are ``N x 3 x H x W``; inside a stage the tokens are ``N x (h*w) x C``
(row-major over h then w), the stage outputs are ``N x C_s x h_s x w_s`` with
``h_1 = ceil(H / 4)`` and ``h_{s+1} = ceil(h_s / 2)`` (no padding to a multiple of 32 anywhere).
"""
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from timm.layers import DropPath, trunc_normal_
from torch import nn

from ..activation_checkpointing import checkpointed_call, should_checkpoint

__all__ = [
    "MIT_VARIANTS",
    "MIT_STAGE_NAMES",
    "MiTVariant",
    "MixVisionTransformer",
    "build_mit_backbone",
]


# LayerNorm eps values of the original (docs/method.md §2.2, §15 Q9): plain nn.LayerNorm (1e-5) in the patch
# embeddings and after the spatial-reduction conv, 1e-6 in the block norms (norm1, norm2) and the stage norms.
PATCH_EMBED_NORM_EPS = 1e-5
SPATIAL_REDUCTION_NORM_EPS = 1e-5
BLOCK_NORM_EPS = 1e-6

MIT_STAGE_NAMES: Tuple[str, ...] = ("res2", "res3", "res4", "res5")
MIT_STAGE_STRIDES: Tuple[int, ...] = (4, 8, 16, 32)


@dataclass(frozen=True)
class MiTVariant:
    """Published settings of one MiT variant (all four stages)."""

    embed_dims: Tuple[int, int, int, int]
    num_heads: Tuple[int, int, int, int]
    depths: Tuple[int, int, int, int]
    mlp_ratios: Tuple[int, int, int, int] = (4, 4, 4, 4)
    sr_ratios: Tuple[int, int, int, int] = (8, 4, 2, 1)


_WIDE = (64, 128, 320, 512)
_HEADS = (1, 2, 5, 8)
MIT_VARIANTS: Mapping[str, MiTVariant] = MappingProxyType(
    {
        "mit_b0": MiTVariant(embed_dims=(32, 64, 160, 256), num_heads=_HEADS, depths=(2, 2, 2, 2)),
        "mit_b1": MiTVariant(embed_dims=_WIDE, num_heads=_HEADS, depths=(2, 2, 2, 2)),
        "mit_b2": MiTVariant(embed_dims=_WIDE, num_heads=_HEADS, depths=(3, 4, 6, 3)),
        "mit_b3": MiTVariant(embed_dims=_WIDE, num_heads=_HEADS, depths=(3, 4, 18, 3)),
        "mit_b4": MiTVariant(embed_dims=_WIDE, num_heads=_HEADS, depths=(3, 8, 27, 3)),
        "mit_b5": MiTVariant(embed_dims=_WIDE, num_heads=_HEADS, depths=(3, 6, 40, 3)),
    }
)


def _tokens_to_map(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``N x (h*w) x C`` tokens -> ``N x C x h x w`` map."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], height, width)


def _map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``N x C x h x w`` map -> ``N x (h*w) x C`` tokens (row-major)."""
    return x.flatten(2).transpose(1, 2)


class OverlapPatchEmbed(nn.Module):
    """Strided conv with overlapping windows + LayerNorm (eps 1e-5).

    ``forward(x: N x C_in x H x W) -> (N x (h*w) x C, h, w)`` with ``h = floor((H + 2p - k) / s) + 1``,
    i.e. ``ceil(H / s)`` for the settings used here (k7/s4/p3 and k3/s2/p1).
    """

    def __init__(self, in_channels: int, embed_dim: int, kernel_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size, stride=stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(embed_dim, eps=PATCH_EMBED_NORM_EPS)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.norm(_map_to_tokens(x)), height, width


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys/values come from a spatially reduced token grid.

    ``q`` acts on all ``h*w`` tokens; with ``sr_ratio > 1`` the grid is first reduced by the conv ``sr``
    (kernel = stride = sr_ratio, no padding: ``floor(h / sr) x floor(w / sr)`` positions) and ``norm``
    (LayerNorm eps 1e-5). ``kv`` produces ``2C`` channels: the first ``C`` are the keys, the last ``C`` the
    values; head ``i`` uses channels ``[i*d, (i+1)*d)`` of each (``d = C / num_heads``).
    Scores are ``q k^T * d^-0.5``, computed by ``F.scaled_dot_product_attention``.
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=SPATIAL_REDUCTION_NORM_EPS)

    def key_value_tokens(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Tokens ``N x (h*w) x C`` -> the (reduced) tokens the keys/values are computed from."""
        if self.sr_ratio > 1:
            x = self.norm(_map_to_tokens(self.sr(_tokens_to_map(x, height, width))))
        return x

    def split_heads(self, x: torch.Tensor, groups: int) -> torch.Tensor:
        """``N x L x (groups*C)`` -> ``groups x N x heads x L x d`` (channel order: group, head, d)."""
        n, length, _ = x.shape
        return x.reshape(n, length, groups, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        n, length, channels = x.shape
        q = self.split_heads(self.q(x), 1)[0]
        k, v = self.split_heads(self.kv(self.key_value_tokens(x, height, width)), 2)
        out = F.scaled_dot_product_attention(q, k, v)  # default scale = head_dim ** -0.5
        return self.proj(out.transpose(1, 2).reshape(n, length, channels))


class DepthwiseConv(nn.Module):
    """3x3 depthwise conv (stride 1, padding 1, bias) applied to ``N x (h*w) x C`` tokens."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, stride=1, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return _map_to_tokens(self.dwconv(_tokens_to_map(x, height, width)))


class MixFFN(nn.Module):
    """``fc1`` (C -> hidden) -> depthwise 3x3 conv on the token grid -> exact (erf) GELU -> ``fc2``."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = DepthwiseConv(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), height, width)))


class MiTBlock(nn.Module):
    """Pre-norm transformer block: ``x + DropPath(attn(norm1(x)))``, then ``x + DropPath(mlp(norm2(x)))``."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: int, sr_ratio: int, drop_path: float, qkv_bias: bool = True
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp = MixFFN(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))


def drop_path_schedule(drop_path_rate: float, total_blocks: int) -> List[float]:
    """``torch.linspace(0, rate, total)`` as Python floats: block k (global, 0-based) gets ``rate*k/(total-1)``."""
    return torch.linspace(0, drop_path_rate, total_blocks, device="cpu").tolist()


class MixVisionTransformer(Backbone):
    """MiT encoder (4 stages) returning the stage outputs named res2..res5 (strides 4, 8, 16, 32).

    ``forward(x: N x 3 x H x W normalized float) -> {name: N x C_s x h_s x w_s}`` for the names in
    ``out_features``; ``h_1 = ceil(H/4)``, then ``ceil(h/2)`` per stage.
    """

    @configurable
    def __init__(
        self,
        *,
        embed_dims: Sequence[int],
        num_heads: Sequence[int],
        depths: Sequence[int],
        mlp_ratios: Sequence[int] = (4, 4, 4, 4),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        qkv_bias: bool = True,
        drop_path_rate: float = 0.1,
        in_channels: int = 3,
        out_features: Sequence[str] = MIT_STAGE_NAMES,
        checkpoint_activations: bool = False,
    ):
        """
        Args:
            embed_dims, num_heads, depths, mlp_ratios, sr_ratios: per-stage settings (4 entries each).
            qkv_bias: bias in the ``q`` and ``kv`` projections.
            drop_path_rate: stochastic depth of the last block (linear schedule from 0, docs/method.md §2.2).
            in_channels: image channels.
            out_features: subset of ``("res2", "res3", "res4", "res5")`` returned by ``forward``.
            checkpoint_activations: in training forwards with autograd on, recompute every transformer block's
                activations in the backward pass instead of storing them (same gradients, less memory).
        """
        super().__init__()
        settings = (embed_dims, num_heads, depths, mlp_ratios, sr_ratios)
        if any(len(s) != 4 for s in settings):
            raise ValueError(f"MiT needs 4 values per stage setting, got {settings}")
        unknown = [f for f in out_features if f not in MIT_STAGE_NAMES]
        if unknown or not out_features:
            raise ValueError(f"MiT out_features {list(out_features)} must be a non-empty subset of {MIT_STAGE_NAMES}")
        self.embed_dims = tuple(int(c) for c in embed_dims)
        self.depths = tuple(int(d) for d in depths)
        self._out_features = [f for f in MIT_STAGE_NAMES if f in out_features]
        self._out_feature_channels = dict(zip(MIT_STAGE_NAMES, self.embed_dims))
        self._out_feature_strides = dict(zip(MIT_STAGE_NAMES, MIT_STAGE_STRIDES))
        self._num_stages = MIT_STAGE_NAMES.index(self._out_features[-1]) + 1
        self.checkpoint_activations = bool(checkpoint_activations)

        dpr = drop_path_schedule(drop_path_rate, sum(self.depths))
        prev_dim = in_channels
        for s in range(4):
            kernel, stride = (7, 4) if s == 0 else (3, 2)
            setattr(self, f"patch_embed{s + 1}", OverlapPatchEmbed(prev_dim, self.embed_dims[s], kernel, stride))
            first = sum(self.depths[:s])
            blocks = [
                MiTBlock(self.embed_dims[s], num_heads[s], mlp_ratios[s], sr_ratios[s], dpr[first + j], qkv_bias)
                for j in range(self.depths[s])
            ]
            setattr(self, f"block{s + 1}", nn.ModuleList(blocks))
            setattr(self, f"norm{s + 1}", nn.LayerNorm(self.embed_dims[s], eps=BLOCK_NORM_EPS))
            prev_dim = self.embed_dims[s]
        if self.norm1.weight.device.type != "meta":  # a meta-device build has shapes only: no values to draw
            self.apply(_segformer_init)

    @classmethod
    def from_config(cls, cfg, input_shape: Optional[ShapeSpec] = None) -> Dict:
        name = cfg.MODEL.MIT.VARIANT
        if name not in MIT_VARIANTS:
            raise ValueError(f"MODEL.MIT.VARIANT={name!r} is not one of {sorted(MIT_VARIANTS)}")
        variant = MIT_VARIANTS[name]
        in_channels = input_shape.channels if input_shape is not None and input_shape.channels else 3
        return {
            "embed_dims": variant.embed_dims,
            "num_heads": variant.num_heads,
            "depths": variant.depths,
            "mlp_ratios": variant.mlp_ratios,
            "sr_ratios": variant.sr_ratios,
            "drop_path_rate": cfg.MODEL.MIT.DROP_PATH_RATE,
            "in_channels": in_channels,
            "out_features": tuple(cfg.MODEL.MIT.OUT_FEATURES),
            "checkpoint_activations": cfg.MODEL.MIT.CHECKPOINT_ACTIVATIONS,
        }

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"MiT expects N x C x H x W images, got shape {tuple(x.shape)}")
        outputs = {}
        use_checkpoint = should_checkpoint(self.checkpoint_activations, self)
        for s in range(self._num_stages):
            x, height, width = getattr(self, f"patch_embed{s + 1}")(x)
            for block in getattr(self, f"block{s + 1}"):
                if use_checkpoint:
                    x = checkpointed_call(block, x, height, width, module=block)
                else:
                    x = block(x, height, width)
            x = _tokens_to_map(getattr(self, f"norm{s + 1}")(x), height, width).contiguous()
            if MIT_STAGE_NAMES[s] in self._out_features:
                outputs[MIT_STAGE_NAMES[s]] = x
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }


def _segformer_init(m: nn.Module) -> None:
    """SegFormer init (docs/method.md §2.3): Linear trunc_normal(std 0.02, cut at +-2) / bias 0; LayerNorm 1 / 0;
    Conv2d N(0, sqrt(2 / fan_out)) with fan_out = k_h * k_w * out_channels / groups, bias 0."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


@BACKBONE_REGISTRY.register()
def build_mit_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> MixVisionTransformer:
    """MiT backbone of ``cfg.MODEL.MIT`` (VARIANT, DROP_PATH_RATE, OUT_FEATURES)."""
    return MixVisionTransformer(cfg, input_shape)
