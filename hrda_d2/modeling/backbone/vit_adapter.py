"""ViT-Adapter over the DINOv2 ViT: VFM-UDA++'s encoder, registered backbone ``VFMViTAdapter`` (docs/method.md §20).

Pieces (docs/method.md §20.1-§20.4):

* :func:`ms_deform_attn_core`: multi-scale deformable attention sampling in plain PyTorch (``F.grid_sample``,
  bilinear, zero padding, ``align_corners=False``), on CPU and CUDA; always float32 (autocast off inside).
* :class:`MSDeformAttn`: the attention module (offsets, softmax weights, value / output projections).
* :class:`SpatialPriorModule`: a small conv stem giving ``c1..c4`` at strides 4, 8, 16, 32.
* :class:`Injector` / :class:`Extractor` / :class:`InteractionBlock`: spatial features -> ViT tokens before each
  group of ViT blocks, ViT tokens -> spatial features after it (the class token rides through the blocks).
* :class:`VFMViTAdapter`: resize (``MODEL.VFM.INPUT_SCALE``), optional block masking of the RESIZED image
  (VFM-UDA++ masked pass), the adapter, ``res2..res5`` = the original's ``f1..f4``.

Coordinates: sampling locations and reference points are normalised ``(x, y)`` in ``[0, 1]`` of a level, (0, 0) the
top-left corner of the top-left pixel, pixel centres at ``(i + 0.5) / W``; ``F.grid_sample`` gets ``2 * loc - 1``.
Flattened spatial features are row-major per level, levels concatenated finest first (strides 8, 16, 32).

BatchNorms (the SPM's and ``norm1..norm4``): momentum 0.01 as the original; the original builds
``nn.SyncBatchNorm``; here the type is Detectron2's ``get_norm(MODEL.VFM.ADAPTER.NORM)`` ("SyncBN" = the
original: ``nn.SyncBatchNorm``, which normalises with the local batch when no process group with several ranks
is initialised, i.e. equals ``BatchNorm2d`` on one device and in eval mode).
"""
import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from torch import Tensor, nn

from ..activation_checkpointing import checkpointed_call, should_checkpoint
from .dinov2_vit import DINOv2ViT, vfm_input_size

__all__ = [
    "ADAPTER_BN_MOMENTUM",
    "ADAPTER_NAMES",
    "Extractor",
    "Injector",
    "InteractionBlock",
    "MSDeformAttn",
    "SpatialPriorModule",
    "VFMViTAdapter",
    "adapter_interaction_indexes",
    "block_keep_mask",
    "ms_deform_attn_core",
]

logger = logging.getLogger(__name__)

ADAPTER_NAMES: Tuple[str, ...] = ("res2", "res3", "res4", "res5")
ADAPTER_STRIDES: Tuple[int, ...] = (4, 8, 16, 32)
ADAPTER_BN_MOMENTUM = 0.01  # every BatchNorm of VFM-UDA++'s adapter and pyramid head


def ms_deform_attn_core(value: Tensor, spatial_shapes: Sequence[Tuple[int, int]], sampling_locations: Tensor,
                        attention_weights: Tensor) -> Tensor:
    """Deformable attention sampling (docs/method.md §20.1).

    Args:
        value: ``N x S x M x D`` (S = sum of ``h_l * w_l``, levels concatenated, row-major; M heads of D channels).
        spatial_shapes: ``L`` pairs ``(h_l, w_l)`` (Python ints).
        sampling_locations: ``N x Q x M x L x P x 2`` normalised ``(x, y)`` (module docstring), outside ``[0, 1]``
            sampling zeros.
        attention_weights: ``N x Q x M x L x P`` (softmax over ``L * P`` per head).

    Returns ``N x Q x (M * D)``: per head, the attention-weighted sum of the bilinear samples. Computed in float32
    with autocast disabled (the original's ``custom_fwd(cast_inputs=torch.float32)``).
    """
    n, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    if len(spatial_shapes) != levels:
        raise ValueError(f"ms_deform_attn_core: {len(spatial_shapes)} spatial shapes for {levels} sampling levels")
    with torch.autocast(device_type=value.device.type, enabled=False):
        value = value.float()
        grids = 2 * sampling_locations.float() - 1
        per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
        samples = []
        for level, (h, w) in enumerate(spatial_shapes):
            # N x hw x M x D -> (N * M) x D x h x w
            v = per_level[level].flatten(2).transpose(1, 2).reshape(n * heads, dim, h, w)
            # N x Q x M x P x 2 -> (N * M) x Q x P x 2
            g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
            samples.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
        # (N * M) x D x Q x (L * P) weighted by (N * M) x 1 x Q x (L * P)
        weights = attention_weights.float().transpose(1, 2).reshape(n * heads, 1, queries, levels * points)
        out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)
        return out.view(n, heads * dim, queries).transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable DETR; docs/method.md §20.1).

    ``forward(query: N x Q x C, reference_points: N|1 x Q x 1 x 2, value_input: N x S x C, spatial_shapes)``
    -> ``N x Q x C``. Offsets are in pixels of each level (divided by ``(w_l, h_l)``). Values are projected to
    ``int(C * ratio)`` channels split into ``heads`` heads. Parameter names as the original.
    """

    def __init__(self, dim: int, levels: int, heads: int, points: int, ratio: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"MSDeformAttn: {dim} channels are not divisible by {heads} heads")
        self.dim, self.levels, self.heads, self.points = dim, levels, heads, points
        self.value_dim = int(dim * ratio)
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, self.value_dim)
        self.output_proj = nn.Linear(self.value_dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The original's init: zero offset weights, offset biases pointing in ``heads`` directions around the
        reference (unit square scaled, point ``k`` at ``k + 1`` pixels), zero attention logits, Xavier-uniform
        projections with zero biases."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        bias = directions.view(self.heads, 1, 1, 2).repeat(1, self.levels, self.points, 1)
        bias = bias * torch.arange(1, self.points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query: Tensor, reference_points: Tensor, value_input: Tensor,
                spatial_shapes: Sequence[Tuple[int, int]]) -> Tensor:
        n, queries, _ = query.shape
        value = self.value_proj(value_input).view(n, value_input.shape[1], self.heads, self.value_dim // self.heads)
        offsets = self.sampling_offsets(query).view(n, queries, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(n, queries, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(n, queries, self.heads, self.levels, self.points)
        normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=offsets.dtype, device=offsets.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        return self.output_proj(ms_deform_attn_core(value, spatial_shapes, locations, weights))


def reference_points(shapes: Sequence[Tuple[int, int]], device: torch.device) -> Tensor:
    """Pixel centres of the levels ``shapes`` as normalised ``(x, y)``: ``1 x sum(h*w) x 1 x 2``."""
    refs = []
    for h, w in shapes:
        ys, xs = torch.meshgrid(torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
                                torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device), indexing="ij")
        refs.append(torch.stack([xs.reshape(-1) / w, ys.reshape(-1) / h], -1))
    return torch.cat(refs, 0)[None, :, None]


class ConvFFN(nn.Module):
    """Linear -> 3x3 depthwise conv per level -> GELU -> linear on the flattened spatial features."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Module()
        self.dwconv.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)  # original name dwconv.dwconv
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, shapes: Sequence[Tuple[int, int]]) -> Tensor:
        x = self.fc1(x)
        n, _, c = x.shape
        parts = []
        for part, (h, w) in zip(x.split([h * w for h, w in shapes], dim=1), shapes):
            part = part.transpose(1, 2).reshape(n, c, h, w)
            parts.append(self.dwconv.dwconv(part).flatten(2).transpose(1, 2))
        return self.fc2(self.act(torch.cat(parts, dim=1)))


class Injector(nn.Module):
    """ViT tokens (queries) attend to the 3 spatial levels: ``x + gamma * attn`` (``gamma`` init ``init_values``)."""

    def __init__(self, dim: int, heads: int, points: int, ratio: float, init_values: float):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim)
        self.feat_norm = nn.LayerNorm(dim)
        self.attn = MSDeformAttn(dim, 3, heads, points, ratio)
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: Tensor, refs: Tensor, c: Tensor, shapes: Sequence[Tuple[int, int]]) -> Tensor:
        return x + self.gamma * self.attn(self.query_norm(x), refs, self.feat_norm(c), shapes)


class Extractor(nn.Module):
    """Spatial features (queries) attend to the ViT token grid; then ``+ ConvFFN`` (if ``with_cffn``)."""

    def __init__(self, dim: int, heads: int, points: int, ratio: float, with_cffn: bool, cffn_ratio: float):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim)
        self.feat_norm = nn.LayerNorm(dim)
        self.attn = MSDeformAttn(dim, 1, heads, points, ratio)
        self.with_cffn = with_cffn
        if with_cffn:
            self.ffn = ConvFFN(dim, int(dim * cffn_ratio))
            self.ffn_norm = nn.LayerNorm(dim)

    def forward(self, c: Tensor, refs: Tensor, x: Tensor, token_shape: Tuple[int, int],
                shapes: Sequence[Tuple[int, int]]) -> Tensor:
        c = c + self.attn(self.query_norm(c), refs, self.feat_norm(x), [token_shape])
        if self.with_cffn:
            c = c + self.ffn(self.ffn_norm(c), shapes)
        return c


class InteractionBlock(nn.Module):
    """Injector, the ViT blocks of this group (on ``[cls, patches]``), extractor (+ 2 extra extractors in the last
    group); docs/method.md §20.3. Blocks are passed in: they belong to the trunk."""

    def __init__(self, dim: int, heads: int, points: int, ratio: float, init_values: float, with_cffn: bool,
                 cffn_ratio: float, extra_extractor: bool):
        super().__init__()
        self.injector = Injector(dim, heads, points, ratio, init_values)
        self.extractor = Extractor(dim, heads, points, ratio, with_cffn, cffn_ratio)
        self.extra_extractors = (nn.ModuleList(Extractor(dim, heads, points, ratio, with_cffn, cffn_ratio)
                                               for _ in range(2)) if extra_extractor else None)

    def forward(self, x: Tensor, c: Tensor, cls: Tensor, blocks: Sequence[nn.Module], geometry: "_Geometry",
                checkpointing: bool) -> Tuple[Tensor, Tensor, Tensor]:
        x = self.injector(x, geometry.token_refs, c, geometry.level_shapes)
        tokens = torch.cat([cls, x], dim=1)
        for block in blocks:
            tokens = checkpointed_call(block, tokens, module=block) if checkpointing else block(tokens)
        cls, x = tokens[:, :1], tokens[:, 1:]
        extractors = [self.extractor] + (list(self.extra_extractors) if self.extra_extractors is not None else [])
        for extractor in extractors:
            c = extractor(c, geometry.level_refs, x, geometry.token_shape, geometry.level_shapes)
        return x, c, cls


class SpatialPriorModule(nn.Module):
    """Conv stem (docs/method.md §20.2): ``c1..c4`` at strides 4, 8, 16, 32 of the image, each mapped to ``dim``
    channels by a 1x1 conv. Widths ``w, 2w, 4w, 4w`` (``w`` = ``conv_inplane``). Original module names."""

    def __init__(self, inplanes: int, dim: int, norm: str):
        super().__init__()

        def conv_bn_relu(cin, cout, stride):
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _bn(norm, cout), nn.ReLU(inplace=True)]

        self.stem = nn.Sequential(*conv_bn_relu(3, inplanes, 2), *conv_bn_relu(inplanes, inplanes, 1),
                                  *conv_bn_relu(inplanes, inplanes, 1), nn.MaxPool2d(3, 2, 1))
        self.conv2 = nn.Sequential(*conv_bn_relu(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*conv_bn_relu(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*conv_bn_relu(4 * inplanes, 4 * inplanes, 2))
        self.fc1 = nn.Conv2d(inplanes, dim, 1)
        self.fc2 = nn.Conv2d(2 * inplanes, dim, 1)
        self.fc3 = nn.Conv2d(4 * inplanes, dim, 1)
        self.fc4 = nn.Conv2d(4 * inplanes, dim, 1)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return self.fc1(c1), self.fc2(c2), self.fc3(c3), self.fc4(c4)


def _bn(norm: str, channels: int) -> nn.Module:
    layer = get_norm(norm, channels)
    if not isinstance(layer, nn.modules.batchnorm._BatchNorm):
        raise ValueError(f"MODEL.VFM.ADAPTER.NORM={norm!r} is not a BatchNorm; use 'SyncBN' (the original) or 'BN'")
    layer.momentum = ADAPTER_BN_MOMENTUM
    return layer


def adapter_interaction_indexes(depth: int) -> List[Tuple[int, int]]:
    """The original's groups of ViT blocks (first, last; inclusive): ``range(depth // 4 - 1, depth, depth // 4)``
    as group ends, each group starting after the previous end (12 -> (0,2),(3,5),(6,8),(9,11); 24 -> (0,5),...,
    (18,23)). Depths must be multiples of 4 (others give more than 4 groups, which the original's forward
    cannot unpack)."""
    if depth < 4 or depth % 4:
        raise ValueError(f"the ViT-Adapter needs a multiple of 4 ViT blocks (4 groups giving f1..f4), the trunk "
                         f"has {depth}")
    step = depth // 4
    groups, start = [], 0
    for end in range(step - 1, depth, step):
        groups.append((start, end))
        start = end + 1
    return groups


class _Geometry:
    """Per-forward sizes of the adapter (no state kept between forwards)."""

    def __init__(self, size: Tuple[int, int], patch: int, device: torch.device):
        h, w = size
        self.level_shapes = [(h // 8, w // 8), (h // 16, w // 16), (h // 32, w // 32)]
        self.token_shape = (h // patch, w // patch)
        self.token_refs = reference_points([self.token_shape], device)
        self.level_refs = reference_points(self.level_shapes, device)


def block_keep_mask(token_mask: Tensor, size: Tuple[int, int]) -> Tensor:
    """``N x gh x gw`` bool block mask (True = masked) -> ``N x 1 x H x W`` float keep mask (1 = kept) by
    nearest upsampling, VFM-UDA++'s ``BlockMasking`` rule (docs/method.md §20.5)."""
    keep = (~token_mask).unsqueeze(1).float()
    return F.interpolate(keep, size=tuple(size), mode="nearest")


@BACKBONE_REGISTRY.register()
class VFMViTAdapter(Backbone):
    """VFM-UDA++'s ViT-Adapter encoder (docs/method.md §20): ``forward(x: N x 3 x H x W, token_mask=None) ->
    {res2: N x C x H'/4 x W'/4, res3: .../8, res4: .../16, res5: .../32}`` with ``(H', W') =
    input_size((H, W))`` (``MODEL.VFM.INPUT_SCALE``; both multiples of 14 and 32, e.g. 1024 -> 1120) and
    ``C`` the ViT width.

    ``token_mask`` (``N x gh x gw`` bool, True = masked, grid :meth:`token_grid`) is VFM-UDA++'s block masking:
    one cell per ``MASK_BLOCK_SIZE`` block of the RESIZED image; masked blocks are set to 0 (the normalised mean)
    before the adapter. Reported strides are the nominal 4, 8, 16, 32 of the resized image; heads resize their
    logits to the input size.

    Children: ``vit`` (:class:`DINOv2ViT` without its final norm and mask token, which the adapter does not
    use), ``spm``, ``interactions``, ``up`` (2x2 transposed conv), ``norm1..norm4``; parameter ``level_embed``
    (3 x C).
    """

    @configurable
    def __init__(self, *, vit: DINOv2ViT, input_scale: float = 1.1, conv_inplane: int = 64, n_points: int = 4,
                 init_values: float = 0.0, deform_ratio: float = 0.5, with_cffn: bool = True,
                 cffn_ratio: float = 0.25, add_vit_feature: bool = True, use_extra_extractor: bool = True,
                 norm: str = "SyncBN", mask_block_size: int = 64, checkpoint_activations: bool = False):
        """
        Args:
            vit: the DINOv2 trunk (``MODEL.TIMM.*``); must have no register tokens (the adapter reads the class
                token and the patch tokens only).
            input_scale: ``MODEL.VFM.INPUT_SCALE``.
            conv_inplane, n_points, init_values, deform_ratio, with_cffn, cffn_ratio, add_vit_feature,
                use_extra_extractor, norm, mask_block_size: ``MODEL.VFM.ADAPTER.*`` (defaults.py).
            checkpoint_activations: recompute each ViT block in the backward pass (``MODEL.TIMM.*``).
        """
        super().__init__()
        if vit.num_register_tokens:
            raise ValueError(f"VFMViTAdapter: MODEL.TIMM.NAME has {vit.num_register_tokens} register tokens; the "
                             f"ViT-Adapter of VFM-UDA++ uses a DINOv2 without registers (vit_*_patch14_dinov2)")
        if not input_scale > 0:
            raise ValueError(f"MODEL.VFM.INPUT_SCALE={input_scale} must be > 0 (VFM-UDA++: 1.1)")
        # the final norm and the mask token are not part of the adapter (nor of its checkpoints)
        vit.norm = nn.Identity()
        vit.mask_token = None
        self.vit = vit
        self.input_scale = float(input_scale)
        self.mask_block_size = int(mask_block_size)
        self.add_vit_feature = bool(add_vit_feature)
        self.checkpoint_activations = bool(checkpoint_activations)
        dim = vit.embed_dim
        self.embed_dim = dim
        self.interaction_indexes = adapter_interaction_indexes(len(vit.blocks))
        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.spm = SpatialPriorModule(conv_inplane, dim, norm)
        last = len(self.interaction_indexes) - 1
        self.interactions = nn.ModuleList(
            InteractionBlock(dim, dim // 64, n_points, deform_ratio, init_values, with_cffn, cffn_ratio,
                             extra_extractor=use_extra_extractor and i == last)
            for i in range(len(self.interaction_indexes)))
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        self.norm1, self.norm2, self.norm3, self.norm4 = (_bn(norm, dim) for _ in range(4))
        self._init_weights()
        self._out_features = list(ADAPTER_NAMES)
        self._out_feature_channels = {name: dim for name in ADAPTER_NAMES}
        self._out_feature_strides = dict(zip(ADAPTER_NAMES, ADAPTER_STRIDES))

    def _init_weights(self) -> None:
        """The original's init of the new parts (docs/method.md §20.4): Linear trunc-normal(0.02) / zero bias,
        norms (1, 0), (transposed) convs normal(0, sqrt(2 / fan_out)) / zero bias, then every MSDeformAttn reset,
        ``level_embed`` N(0, 1)."""
        for part in (self.up, self.spm, self.interactions):
            for m in part.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm)):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                    nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    @classmethod
    def from_config(cls, cfg, input_shape: Optional[ShapeSpec] = None) -> Dict:
        if input_shape is not None and input_shape.channels not in (None, 3):
            raise ValueError(f"VFMViTAdapter: {input_shape.channels}-channel input; the DINOv2 ViT takes RGB")
        t, a = cfg.MODEL.TIMM, cfg.MODEL.VFM.ADAPTER
        return {
            "vit": DINOv2ViT(t.NAME, t.WEIGHTS, t.DROP_PATH_RATE),
            "input_scale": cfg.MODEL.VFM.INPUT_SCALE,
            "conv_inplane": a.CONV_INPLANE,
            "n_points": a.N_POINTS,
            "init_values": a.INIT_VALUES,
            "deform_ratio": a.DEFORM_RATIO,
            "with_cffn": a.WITH_CFFN,
            "cffn_ratio": a.CFFN_RATIO,
            "add_vit_feature": a.ADD_VIT_FEATURE,
            "use_extra_extractor": a.USE_EXTRA_EXTRACTOR,
            "norm": a.NORM,
            "mask_block_size": a.MASK_BLOCK_SIZE,
            "checkpoint_activations": t.CHECKPOINT_ACTIVATIONS,
        }

    # ------------------------------------------------------------------------------------------------------
    @property
    def supports_token_mask(self) -> bool:
        """``forward`` takes ``token_mask`` (here: the block mask of the resized image)."""
        return True

    def layer_decay_groups(self) -> Dict[str, List[str]]:
        """Parameter-name prefixes by role for the layer-wise lr decay of the solver (docs/method.md §21.1),
        VFM-UDA++'s ``param_defs_*`` of ``VITAdapterLightweightPyramidHead``: the adapter's own modules
        ``level_embed``, ``spm``, ``interactions``, ``up``, ``norm1..4`` are "decoder" (trained at the head lr),
        ``vit.blocks.<i>`` the blocks (block 0 first), ``vit.patch_embed``, ``vit.pos_embed``, ``vit.cls_token``
        the stems (the adapter's trunk has no ``mask_token``, no final ``norm`` and no register tokens)."""
        decoder = ["level_embed", "spm", "interactions", "up", "norm1", "norm2", "norm3", "norm4"]
        return {"decoder": decoder, "blocks": [f"vit.blocks.{i}" for i in range(len(self.vit.blocks))],
                "stems": ["vit.patch_embed", "vit.pos_embed", "vit.cls_token"]}

    def input_size(self, image_hw: Sequence[int]) -> Tuple[int, int]:
        """Size ``(H', W')`` the adapter sees for an input of ``image_hw`` (``int(side * scale) // 14 * 14``)."""
        return vfm_input_size(image_hw, self.input_scale, self.vit.patch_size)

    def token_grid(self, image_hw: Sequence[int]) -> Tuple[int, int]:
        """Block grid ``(round(H' / B), round(W' / B))`` of the mask of an ``image_hw`` input (B =
        ``MASK_BLOCK_SIZE``; Python's round, half to even: 1120 / 64 = 17.5 -> 18)."""
        h, w = self.input_size(image_hw)
        return round(h / self.mask_block_size), round(w / self.mask_block_size)

    def forward(self, x: Tensor, token_mask: Optional[Tensor] = None) -> Dict[str, Tensor]:
        size = self.input_size(x.shape[-2:])
        if size[0] % 32 or size[1] % 32 or min(size) < 32:
            raise ValueError(f"VFMViTAdapter: input {tuple(x.shape[-2:])} x MODEL.VFM.INPUT_SCALE "
                             f"{self.input_scale:g} -> {size}; the adapter needs sides that are multiples of 14 "
                             f"and 32 (e.g. 1024 x 1.1 -> 1120, 224 x 1.0)")
        if tuple(size) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if token_mask is not None:
            grid = (round(size[0] / self.mask_block_size), round(size[1] / self.mask_block_size))
            if token_mask.dtype != torch.bool or tuple(token_mask.shape) != (x.shape[0], *grid):
                raise ValueError(f"token_mask must be a bool tensor N x gh x gw = {(x.shape[0], *grid)} (the "
                                 f"{self.mask_block_size}-px block grid of the {size} resized input), got "
                                 f"{token_mask.dtype} {tuple(token_mask.shape)}")
            x = x * block_keep_mask(token_mask, size).to(x.dtype)
        return dict(zip(ADAPTER_NAMES, self.adapter_features(x)))

    def adapter_features(self, x: Tensor) -> List[Tensor]:
        """The adapter on an already resized ``N x 3 x H' x W'`` image -> ``[f1, f2, f3, f4]``."""
        n = x.shape[0]
        dim = self.embed_dim
        geometry = _Geometry(tuple(x.shape[-2:]), self.vit.patch_size, x.device)
        c1, c2, c3, c4 = self.spm(x)
        c = torch.cat([(ci.flatten(2).transpose(1, 2) + self.level_embed[i]) for i, ci in enumerate((c2, c3, c4))],
                      dim=1)
        tokens = self.vit.prepare_tokens(x)
        cls, tokens = tokens[:, :1], tokens[:, 1:]
        checkpointing = should_checkpoint(self.checkpoint_activations, self)
        outs = []
        th, tw = geometry.token_shape
        for (first, last), layer in zip(self.interaction_indexes, self.interactions):
            tokens, c, cls = layer(tokens, c, cls, self.vit.blocks[first:last + 1], geometry, checkpointing)
            outs.append(tokens.transpose(1, 2).reshape(n, dim, th, tw))
        sizes = geometry.level_shapes
        c2, c3, c4 = (part.transpose(1, 2).reshape(n, dim, h, w)
                      for part, (h, w) in zip(c.split([h * w for h, w in sizes], dim=1), sizes))
        c1 = self.up(c2) + c1
        maps = [c1, c2, c3, c4]
        if self.add_vit_feature:
            maps = [m + F.interpolate(o, size=m.shape[-2:], mode="bilinear", align_corners=False)
                    for m, o in zip(maps, outs)]
        return [norm(m) for norm, m in zip((self.norm1, self.norm2, self.norm3, self.norm4), maps)]
