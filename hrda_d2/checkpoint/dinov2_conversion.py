"""Official DINOv2 backbone checkpoints -> Detectron2 checkpoints of ``build_timm_backbone``.

The files ``dinov2_vit{s,b,l}14_pretrain.pth`` and ``dinov2_vit{s,b,l}14_reg4_pretrain.pth`` (facebookresearch/
dinov2, "backbone only") are plain state dicts of its ``DinoVisionTransformer``:

=====================================  =======================================  ===============================
official key                           shape                                    here (below ``backbone.net.vit.``)
=====================================  =======================================  ===============================
``cls_token``                          1 x 1 x C                                ``cls_token`` (+ cls position*)
``pos_embed``                          1 x (1 + 37*37) x C (518 px / 14)        ``pos_embed``, resized to the grid
``register_tokens`` (reg4 only)        1 x 4 x C                                ``reg_token``
``mask_token``                         1 x C (iBOT masking, unused)             dropped
``patch_embed.proj.{weight,bias}``     C x 3 x 14 x 14, C                       same
``blocks.<i>.norm1/attn.qkv/attn.proj``                                         same
``blocks.<i>.ls1.gamma/norm2/mlp.fc1/mlp.fc2/ls2.gamma``                        same
``norm.{weight,bias}``                 C                                        same
=====================================  =======================================  ===============================

``blocks.<chunk>.<i>.*`` (checkpoints saved with ``block_chunks > 0``) are flattened to ``blocks.<i>.*``.
(*) With registers, timm's ViT adds no position embedding to the prefix tokens (``no_embed_class``), while
DINOv2 adds ``pos_embed[:, 0]`` to the class token before inserting the registers (which get none); the class
position is therefore folded into ``cls_token`` and ``pos_embed`` keeps the patch positions only. Without
registers timm keeps the class position in ``pos_embed`` like DINOv2.

The patch-position grid (37 x 37) is resized to the token grid of ``MODEL.TIMM.IMG_SIZE`` (``H/16 x W/16``,
32 x 32 for 512 x 512) with timm's ``resample_abs_pos_embed`` (bicubic, antialiased), the resampling timm
applies at run time for other grids, so that the checkpoint loads with matching shapes. The converted keys
and shapes are checked against the timm model (built on the meta device): no backbone key of the ViT is
missing; the feature pyramid and the decode heads are not in a DINOv2 file and start from their
initialisation.
"""
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Tuple

import timm
import torch
from timm.layers import resample_abs_pos_embed

from ..modeling.backbone.dinov2_vit import flatten_block_chunks, is_official_dinov2_state_dict
from ..modeling.backbone.timm_backbone import VIT_TOKEN_STRIDE, VIT_TRUNK_PREFIX
from .conversion_types import CheckpointConversionError, ConversionRequest, ConvertedCheckpoint, OriginalLayout

__all__ = [
    "DINOV2_ARCHS",
    "LAYOUTS",
    "LAYOUT_DINOV2",
    "Dinov2Arch",
    "Dinov2ConversionError",
    "Dinov2ConvertedCheckpoint",
    "convert_dinov2_checkpoint",
    "convert_dinov2_state_dict",
    "dinov2_usage",
    "dinov2_timm_name",
    "is_dinov2_state_dict",
]

logger = logging.getLogger(__name__)

LAYOUT_DINOV2 = "official DINOv2 backbone state dict"
BACKBONE_PREFIX = "backbone." + VIT_TRUNK_PREFIX
OFFICIAL_PATCH_SIZE = 14
DEFAULT_IMG_SIZE = (512, 512)


@dataclass(frozen=True)
class Dinov2Arch:
    """Published DINOv2 architecture (facebookresearch/dinov2, dinov2/models/vision_transformer.py)."""

    timm_arch: str  # timm name without the ``_reg4`` part: vit_<size>_patch14_dinov2
    embed_dim: int
    depth: int
    num_heads: int


DINOV2_ARCHS: Mapping[int, Dinov2Arch] = {
    384: Dinov2Arch("vit_small_patch14_dinov2", 384, 12, 6),
    768: Dinov2Arch("vit_base_patch14_dinov2", 768, 12, 12),
    1024: Dinov2Arch("vit_large_patch14_dinov2", 1024, 24, 16),
}


class Dinov2ConversionError(CheckpointConversionError):
    """A DINOv2-looking state dict that cannot be converted (unsupported size, inconsistent keys)."""


@dataclass
class Dinov2ConvertedCheckpoint(ConvertedCheckpoint):
    """:class:`ConvertedCheckpoint` of a DINOv2 file (``backbone`` holds the timm model name) with the
    position-embedding grids before and after resizing."""

    old_grid: Tuple[int, int] = (0, 0)
    new_grid: Tuple[int, int] = (0, 0)


# whether a state dict has the top-level keys of an official DINOv2 backbone (shared with DINOv2ViT's loading)
is_dinov2_state_dict = is_official_dinov2_state_dict


def dinov2_timm_name(sd: Mapping[str, torch.Tensor]) -> str:
    """timm model name of an official DINOv2 state dict: ``vit_{small,base,large}_patch14[_reg4]_dinov2``."""
    dim = int(sd["patch_embed.proj.weight"].shape[0])
    patch = tuple(sd["patch_embed.proj.weight"].shape[-2:])
    if patch != (OFFICIAL_PATCH_SIZE, OFFICIAL_PATCH_SIZE):
        raise Dinov2ConversionError(f"DINOv2 patch size {patch}; the official backbones have 14 x 14")
    if any(".mlp.w12." in k for k in sd) or dim not in DINOV2_ARCHS:
        raise Dinov2ConversionError(
            f"DINOv2 with width {dim}{' and a SwiGLU MLP (ViT-g/14)' if any('.mlp.w12.' in k for k in sd) else ''} "
            f"is not supported; supported: ViT-S/14, ViT-B/14, ViT-L/14 (widths {sorted(DINOV2_ARCHS)}), with or "
            f"without 4 registers")
    arch = DINOV2_ARCHS[dim]
    if "register_tokens" in sd:
        registers = int(sd["register_tokens"].shape[1])
        if registers != 4:
            raise Dinov2ConversionError(f"DINOv2 with {registers} register tokens; timm has the reg4 variants only")
        return arch.timm_arch.replace("_patch14_", "_patch14_reg4_")
    return arch.timm_arch


def _expected_shapes(name: str, grid: Tuple[int, int]) -> "OrderedDict[str, Tuple[int, ...]]":
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="", dynamic_img_size=True,
                                  img_size=tuple(g * OFFICIAL_PATCH_SIZE for g in grid))
    return OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items())


def convert_dinov2_state_dict(
    sd: Mapping[str, torch.Tensor], img_size: Sequence[int] = DEFAULT_IMG_SIZE, source: str = "checkpoint"
) -> Tuple["OrderedDict[str, torch.Tensor]", str, Tuple[int, int], Tuple[int, int]]:
    """Convert an official DINOv2 state dict (see the module docstring) to ``backbone.net.vit.*`` keys.

    Args:
        sd: the loaded file (official key names, float tensors).
        img_size: ``MODEL.TIMM.IMG_SIZE`` ``(H, W)`` of the training config; the position embedding is resized
            to ``ceil(H/16) x ceil(W/16)``.
        source: file name for messages.

    Returns:
        ``(state_dict, timm_name, old_grid, new_grid)``.

    Raises:
        Dinov2ConversionError: unsupported variant, or converted keys/shapes differ from the timm model's.
    """
    sd = flatten_block_chunks(sd)
    name = dinov2_timm_name(sd)
    grid = tuple(int(-(-int(s) // VIT_TOKEN_STRIDE)) for s in img_size)
    dim = int(sd["patch_embed.proj.weight"].shape[0])
    arch = DINOV2_ARCHS[dim]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    if depth != arch.depth:
        raise Dinov2ConversionError(f"{source}: {depth} blocks of width {dim}; DINOv2 {arch.timm_arch} has "
                                    f"{arch.depth}")
    pos = sd["pos_embed"].float()
    old_patches = pos.shape[1] - 1 if pos.dim() == 3 else -1
    side = int(round(max(old_patches, 0) ** 0.5))
    if old_patches < 1 or side * side != old_patches or pos.shape[2] != dim:
        raise Dinov2ConversionError(f"{source}: pos_embed {tuple(pos.shape)} is not 1 x (1 + n*n) x {dim}")
    cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
    if (side, side) != grid:
        patch_pos = resample_abs_pos_embed(patch_pos, new_size=list(grid), old_size=[side, side],
                                           num_prefix_tokens=0, interpolation="bicubic", antialias=True)
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for k, v in sd.items():
        if k in ("mask_token", "pos_embed", "register_tokens", "cls_token"):
            continue
        out[k] = v
    if "register_tokens" in sd:
        out["cls_token"] = sd["cls_token"] + cls_pos.to(sd["cls_token"].dtype)
        out["reg_token"] = sd["register_tokens"]
        out["pos_embed"] = patch_pos.to(sd["pos_embed"].dtype)
    else:
        out["cls_token"] = sd["cls_token"]
        out["pos_embed"] = torch.cat([cls_pos, patch_pos], dim=1).to(sd["pos_embed"].dtype)
    expected = _expected_shapes(name, grid)
    missing = [k for k in expected if k not in out]
    unexpected = [k for k in out if k not in expected]
    wrong = [f"{k} {tuple(out[k].shape)} (timm: {s})" for k, s in expected.items() if k in out and
             tuple(out[k].shape) != s]
    if missing or unexpected or wrong:
        raise Dinov2ConversionError(f"{source}: the {name} weights do not match timm's model: missing {missing[:6]}, "
                                    f"unexpected {unexpected[:6]}, wrong shapes {wrong[:6]}")
    state = OrderedDict((BACKBONE_PREFIX + k, out[k]) for k in expected)
    logger.info("%s: %s, position grid %dx%d -> %dx%d", source, name, side, side, *grid)
    return state, name, (side, side), grid


def convert_dinov2_checkpoint(
    sd: Mapping[str, torch.Tensor], meta: Optional[Mapping[str, Any]] = None,
    img_size: Sequence[int] = DEFAULT_IMG_SIZE, source: str = "checkpoint",
) -> "Dinov2ConvertedCheckpoint":
    """:func:`convert_dinov2_state_dict` as the converter's result (``backbone`` holds the timm name;
    ``dropped_keys`` the unused ``mask_token``)."""
    state, name, old_grid, new_grid = convert_dinov2_state_dict(sd, img_size, source)
    dropped = [k for k in sd if k == "mask_token"]
    return Dinov2ConvertedCheckpoint(state, LAYOUT_DINOV2, name, "", None, None, meta, dropped,
                                     old_grid=old_grid, new_grid=new_grid)


def dinov2_usage(result: Dinov2ConvertedCheckpoint) -> str:
    """The config keys a converted DINOv2 checkpoint is used with (printed by the CLI)."""
    (old_h, old_w), (new_h, new_w) = result.old_grid, result.new_grid
    return (f"position embedding {old_h}x{old_w} -> {new_h}x{new_w} tokens; train with MODEL.BACKBONE.NAME "
            f"build_timm_backbone MODEL.TIMM.NAME {result.backbone} MODEL.TIMM.IMG_SIZE "
            f"[{new_h * VIT_TOKEN_STRIDE}, {new_w * VIT_TOKEN_STRIDE}] MODEL.WEIGHTS <this file>")


def _convert_layout(sd: Mapping[str, torch.Tensor], meta: Optional[Mapping[str, Any]],
                    request: ConversionRequest) -> "Dinov2ConvertedCheckpoint":
    return convert_dinov2_checkpoint(sd, meta, request.vit_img_size, request.source)


LAYOUTS = (
    OriginalLayout(
        name=LAYOUT_DINOV2,
        expected="an official DINOv2 backbone (dinov2_vit{s,b,l}14[_reg4]_pretrain.pth): cls_token, pos_embed,\n"
                 "     patch_embed.proj.weight, blocks.<i>.ls1.gamma, ..., norm.bias (hrda_d2/checkpoint/dinov2_conversion.py)",
        description="an official DINOv2 backbone file (cls_token / pos_embed / blocks.* keys)",
        detect=is_dinov2_state_dict,
        convert=_convert_layout,
    ),
)
