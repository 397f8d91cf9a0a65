"""Leaf converter: original SegFormer / mmseg / HRDA / DAFormer checkpoints -> this project's layout
(docs/method.md §13, model contract). The dispatcher (:mod:`.conversion`) calls it through :data:`LAYOUTS`.

==================================================  ===========================================
original key                                        Detectron2 key
==================================================  ===========================================
SegFormer ImageNet file ``X`` (``head.*`` dropped)  ``backbone.X``
``<p>backbone.X``                                   ``backbone.X``
``<p>decode_head.head.X`` (HRDAHead)                ``sem_seg_head.head.X``
``<p>decode_head.scale_attention.X`` (HRDAHead)     ``sem_seg_head.scale_attention.X``
``<p>decode_head.X`` (plain DAFormer head)          ``sem_seg_head.X``
==================================================  ===========================================

i.e. ``decode_head.`` becomes ``sem_seg_head.``: the HRDA meta-architecture holds the registered ``HRDAHead``
(single-scale head ``head`` + ``scale_attention``) as its ``sem_seg_head``, as the original's
``HRDAEncoderDecoder`` holds its ``HRDAHead`` as ``decode_head``.

``<p>`` is ``model.`` (student, default) or ``ema_model.`` (EMA teacher) in a DACS training checkpoint
(``{"state_dict": ..., "meta": ...}``; ``imnet_model.*`` is dropped) and empty in a bare segmentor state dict
(``HRDAEncoderDecoder`` / ``EncoderDecoder``, optionally wrapped in ``{"state_dict": ...}``). BatchNorm buffers are
kept. Every function here is pure: it reads mappings and returns new ones.
"""
import logging
import re
from collections import OrderedDict
from typing import Any, Mapping, Optional, Tuple

import torch

from ..modeling.backbone.mit import MIT_VARIANTS, MiTVariant
from .conversion_types import (
    CheckpointConversionError,
    ConversionRequest,
    ConvertedCheckpoint,
    HeadSummary,
    OriginalLayout,
    first_items,
    split_prefix,
)

__all__ = [
    "LAYOUTS",
    "LAYOUT_SEGFORMER_IMAGENET",
    "LAYOUT_HRDA_TRAINING",
    "LAYOUT_DAFORMER_TRAINING",
    "LAYOUT_HRDA_SEGMENTOR",
    "LAYOUT_DAFORMER_SEGMENTOR",
    "detect_mit_variant",
    "mit_state_dict_shapes",
]

logger = logging.getLogger(__name__)

LAYOUT_SEGFORMER_IMAGENET = "SegFormer ImageNet MiT state dict"
LAYOUT_HRDA_TRAINING = "HRDA DACS training checkpoint"
LAYOUT_DAFORMER_TRAINING = "DAFormer DACS training checkpoint"
LAYOUT_HRDA_SEGMENTOR = "HRDAEncoderDecoder state dict"
LAYOUT_DAFORMER_SEGMENTOR = "EncoderDecoder (DAFormer) state dict"

STUDENT_PREFIX = "model."
TEACHER_PREFIX = "ema_model."
IMAGENET_MODEL_PREFIX = "imnet_model."
_UDA_PREFIXES = (STUDENT_PREFIX, TEACHER_PREFIX, IMAGENET_MODEL_PREFIX)
_HRDA_HEAD_PARTS = ("head", "scale_attention")


# ------------------------------------------------------------------------------------------------------------
# MiT backbone keys
# ------------------------------------------------------------------------------------------------------------
def mit_state_dict_shapes(variant: MiTVariant, in_channels: int = 3) -> "OrderedDict[str, Tuple[int, ...]]":
    """Key -> shape of an official MiT state dict (docs/method.md §2.2, §2.3), without the ImageNet ``head.*``."""
    shapes: "OrderedDict[str, Tuple[int, ...]]" = OrderedDict()
    prev = in_channels
    for s in range(4):
        c, sr, hidden = variant.embed_dims[s], variant.sr_ratios[s], variant.embed_dims[s] * variant.mlp_ratios[s]
        k = 7 if s == 0 else 3
        pe = f"patch_embed{s + 1}"
        shapes.update({f"{pe}.proj.weight": (c, prev, k, k), f"{pe}.proj.bias": (c,)})
        shapes.update({f"{pe}.norm.weight": (c,), f"{pe}.norm.bias": (c,)})
        for j in range(variant.depths[s]):
            b = f"block{s + 1}.{j}"
            block = [
                ("norm1.weight", (c,)), ("norm1.bias", (c,)),
                ("attn.q.weight", (c, c)), ("attn.q.bias", (c,)),
                ("attn.kv.weight", (2 * c, c)), ("attn.kv.bias", (2 * c,)),
                ("attn.proj.weight", (c, c)), ("attn.proj.bias", (c,)),
            ]
            if sr > 1:
                block += [
                    ("attn.sr.weight", (c, c, sr, sr)), ("attn.sr.bias", (c,)),
                    ("attn.norm.weight", (c,)), ("attn.norm.bias", (c,)),
                ]
            block += [
                ("norm2.weight", (c,)), ("norm2.bias", (c,)),
                ("mlp.fc1.weight", (hidden, c)), ("mlp.fc1.bias", (hidden,)),
                ("mlp.dwconv.dwconv.weight", (hidden, 1, 3, 3)), ("mlp.dwconv.dwconv.bias", (hidden,)),
                ("mlp.fc2.weight", (c, hidden)), ("mlp.fc2.bias", (c,)),
            ]
            shapes.update((f"{b}.{name}", shape) for name, shape in block)
        shapes.update({f"norm{s + 1}.weight": (c,), f"norm{s + 1}.bias": (c,)})
        prev = c
    return shapes


def detect_mit_variant(backbone: Mapping[str, torch.Tensor], where: str = "backbone") -> str:
    """Name of the MiT variant (``mit_b0`` ... ``mit_b5``) of a backbone state dict (official key names).

    The widths are read from ``patch_embed{s}.proj.weight`` and the depths from the ``block{s}.{j}`` indices;
    then the key set and every shape must equal the variant's (:func:`mit_state_dict_shapes`).
    """
    try:
        dims = tuple(int(backbone[f"patch_embed{s}.proj.weight"].shape[0]) for s in range(1, 5))
    except KeyError as e:
        raise CheckpointConversionError(
            f"{where}: MiT key {e.args[0]!r} is missing (every stage needs patch_embed<s>.proj.weight); "
            f"keys found: {first_items(backbone)}"
        ) from None
    depths = []
    for s in range(1, 5):
        indices = {int(m.group(1)) for k in backbone for m in [re.match(rf"block{s}\.(\d+)\.", k)] if m}
        if not indices or indices != set(range(len(indices))):
            raise CheckpointConversionError(
                f"{where}: stage {s} has block indices {sorted(indices)}; expected block{s}.0 ... block{s}.<d-1>"
            )
        depths.append(len(indices))
    matches = [n for n, v in MIT_VARIANTS.items() if v.embed_dims == dims and v.depths == tuple(depths)]
    if not matches:
        known = "; ".join(f"{n}: dims {list(v.embed_dims)} depths {list(v.depths)}" for n, v in MIT_VARIANTS.items())
        raise CheckpointConversionError(
            f"{where}: MiT with widths {list(dims)} and depths {depths} is not a known variant ({known})"
        )
    name = matches[0]
    expected = mit_state_dict_shapes(MIT_VARIANTS[name], in_channels=int(backbone["patch_embed1.proj.weight"].shape[1]))
    missing = [k for k in expected if k not in backbone]
    unexpected = [k for k in backbone if k not in expected]
    wrong = [f"{k} {tuple(backbone[k].shape)} (expected {v})" for k, v in expected.items()
             if k in backbone and tuple(backbone[k].shape) != v]
    if missing or unexpected or wrong:
        raise CheckpointConversionError(
            f"{where}: inconsistent {name} weights: missing [{first_items(missing)}], unexpected [{first_items(unexpected)}], "
            f"wrong shapes [{first_items(wrong)}]"
        )
    return name


# ------------------------------------------------------------------------------------------------------------
# DAFormer head keys
# ------------------------------------------------------------------------------------------------------------
def _summarize_daformer_head(
    head: Mapping[str, torch.Tensor], in_channels: Tuple[int, ...], where: str
) -> HeadSummary:
    """Check the key families of a DAFormerHead state dict (docs/method.md §3.4) against the backbone widths."""
    required = [f"embed_layers.{i}.proj.{p}" for i in range(len(in_channels)) for p in ("weight", "bias")]
    required += ["conv_seg.weight", "conv_seg.bias"]
    missing = [k for k in required if k not in head]
    if missing:
        raise CheckpointConversionError(f"{where}: DAFormer head keys missing: [{first_items(missing)}]; "
                                        f"keys found: [{first_items(head)}]")
    embed = {int(head[f"embed_layers.{i}.proj.weight"].shape[0]) for i in range(len(in_channels))}
    embed_in = tuple(int(head[f"embed_layers.{i}.proj.weight"].shape[1]) for i in range(len(in_channels)))
    if len(embed) != 1 or embed_in != in_channels:
        raise CheckpointConversionError(
            f"{where}: embed_layers map {list(embed_in)} -> {sorted(embed)} channels; expected the backbone "
            f"widths {list(in_channels)} -> one common width"
        )
    embed_dim = embed.pop()
    fused_in = embed_dim * len(in_channels)
    if "fuse_layer.aspp_modules.0.conv.weight" in head:
        fusion = "aspp"
        branches = 1 + len({k.split(".")[2] for k in head if re.match(r"fuse_layer\.aspp_modules\.[1-9]\d*\.", k)})
        conv_in = int(head["fuse_layer.aspp_modules.0.conv.weight"].shape[1])
        if "fuse_layer.bottleneck.conv.weight" not in head:
            raise CheckpointConversionError(f"{where}: ASPP fusion without fuse_layer.bottleneck.conv.weight")
        channels = int(head["fuse_layer.bottleneck.conv.weight"].shape[0])
    elif "fuse_layer.conv.weight" in head:
        fusion, branches = "conv", 0
        conv_in = int(head["fuse_layer.conv.weight"].shape[1])
        channels = int(head["fuse_layer.conv.weight"].shape[0])
    else:
        fuse = [k for k in head if k.startswith("fuse_layer.")]
        raise CheckpointConversionError(
            f"{where}: unsupported fusion layer (expected fuse_layer.aspp_modules.* or fuse_layer.conv.*), "
            f"found [{first_items(fuse)}]"
        )
    seg = head["conv_seg.weight"]
    if conv_in != fused_in or seg.dim() != 4 or int(seg.shape[1]) != channels:
        raise CheckpointConversionError(
            f"{where}: inconsistent widths: fusion input {conv_in} (expected {fused_in} = 4 x {embed_dim}), "
            f"conv_seg.weight {tuple(seg.shape)} (expected [K, {channels}, 1, 1])"
        )
    return HeadSummary(int(seg.shape[0]), embed_dim, channels, fusion, branches)


# ------------------------------------------------------------------------------------------------------------
# segmentors and the three layouts
# ------------------------------------------------------------------------------------------------------------
def _convert_segmentor(
    seg: Mapping[str, torch.Tensor], source: str
) -> Tuple["OrderedDict[str, torch.Tensor]", str, Optional[HeadSummary], Optional[HeadSummary], bool]:
    """Segmentor keys (``backbone.*``, ``decode_head.*``) -> (d2 state dict, variant, head, attention, is_hrda)."""
    others = sorted({k.split(".")[0] for k in seg if not k.startswith(("backbone.", "decode_head."))})
    if others:
        raise CheckpointConversionError(
            f"{source}: unsupported segmentor parts {others} (only backbone.* and decode_head.* can be converted)"
        )
    backbone = split_prefix(seg, "backbone.")
    variant = detect_mit_variant(backbone, where=f"{source} backbone")
    dims = MIT_VARIANTS[variant].embed_dims
    decode = split_prefix(seg, "decode_head.")
    is_hrda = any(k.startswith("head.") for k in decode)
    if is_hrda:
        leftover = sorted({k.split(".")[0] for k in decode if k.split(".")[0] not in _HRDA_HEAD_PARTS})
        if leftover:
            raise CheckpointConversionError(
                f"{source}: HRDAHead with unsupported parts {leftover} (expected decode_head.head.* and "
                f"decode_head.scale_attention.*)"
            )
        head_info = _summarize_daformer_head(split_prefix(decode, "head."), dims, f"{source} decode_head.head")
        attention = split_prefix(decode, "scale_attention.")
        att_info = _summarize_daformer_head(attention, dims, f"{source} decode_head.scale_attention") \
            if attention else None
        if att_info is not None and att_info.num_classes not in (1, head_info.num_classes):
            raise CheckpointConversionError(
                f"{source}: scale attention predicts {att_info.num_classes} channels; expected 1 or "
                f"{head_info.num_classes} (the number of classes)"
            )
    else:
        head_info, att_info = _summarize_daformer_head(decode, dims, f"{source} decode_head"), None
    out = OrderedDict(("backbone." + k, v) for k, v in backbone.items())
    out.update(("sem_seg_head." + k, v) for k, v in decode.items())
    return out, variant, head_info, att_info, is_hrda


def _is_training_checkpoint(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith((STUDENT_PREFIX, TEACHER_PREFIX)) for k in sd)


def _is_segmentor(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("backbone.") for k in sd) and any(k.startswith("decode_head.") for k in sd)


def _is_segformer_imagenet(sd: Mapping[str, torch.Tensor]) -> bool:
    return "patch_embed1.proj.weight" in sd


def _convert_training_checkpoint(
    sd: Mapping[str, torch.Tensor], meta: Optional[Mapping[str, Any]], request: ConversionRequest
) -> ConvertedCheckpoint:
    source = request.source
    prefixes = [p for p in _UDA_PREFIXES if any(k.startswith(p) for k in sd)]
    prefix = TEACHER_PREFIX if request.teacher else STUDENT_PREFIX
    if prefix not in prefixes:
        raise CheckpointConversionError(
            f"{source}: the DACS checkpoint has no '{prefix}*' weights (prefixes found: {prefixes})"
        )
    outside = [k for k in sd if not k.startswith(_UDA_PREFIXES)]
    if outside:
        raise CheckpointConversionError(
            f"{source}: a DACS training checkpoint holds only model.* / ema_model.* / imnet_model.* keys, this one "
            f"also [{first_items(outside, 4)}]"
        )
    state, variant, head, att, is_hrda = _convert_segmentor(split_prefix(sd, prefix), source)
    layout = LAYOUT_HRDA_TRAINING if is_hrda else LAYOUT_DAFORMER_TRAINING
    dropped = [k for k in sd if not k.startswith(prefix)]
    return ConvertedCheckpoint(state, layout, variant, prefix, head, att, meta, dropped)


def _convert_segmentor_state_dict(
    sd: Mapping[str, torch.Tensor], meta: Optional[Mapping[str, Any]], request: ConversionRequest
) -> ConvertedCheckpoint:
    state, variant, head, att, is_hrda = _convert_segmentor(sd, request.source)
    layout = LAYOUT_HRDA_SEGMENTOR if is_hrda else LAYOUT_DAFORMER_SEGMENTOR
    return ConvertedCheckpoint(state, layout, variant, "", head, att, meta, [])


def _convert_segformer_imagenet(
    sd: Mapping[str, torch.Tensor], meta: Optional[Mapping[str, Any]], request: ConversionRequest
) -> ConvertedCheckpoint:
    backbone = OrderedDict((k, v) for k, v in sd.items() if not k.startswith("head."))
    variant = detect_mit_variant(backbone, where=request.source)
    state = OrderedDict(("backbone." + k, v) for k, v in backbone.items())
    dropped = [k for k in sd if k.startswith("head.")]
    return ConvertedCheckpoint(state, LAYOUT_SEGFORMER_IMAGENET, variant, "", None, None, meta, dropped)


LAYOUTS = (
    OriginalLayout(
        name="HRDA / DAFormer DACS training checkpoint",
        expected="an HRDA or DAFormer DACS training checkpoint (iter_40000.pth): {'state_dict': {model.backbone.*,\n"
                 "     model.decode_head.*, ema_model.*, imnet_model.*}, 'meta': {...}}",
        description="an mmseg DACS training checkpoint (model.* / ema_model.* keys)",
        detect=_is_training_checkpoint,
        convert=_convert_training_checkpoint,
        has_teacher=True,
    ),
    OriginalLayout(
        name="HRDAEncoderDecoder / EncoderDecoder state dict",
        expected="a bare HRDAEncoderDecoder / EncoderDecoder state dict {backbone.*, decode_head.*}, possibly under\n"
                 "     'state_dict' (mmseg's own save of a segmentor)",
        description="an mmseg segmentor state dict (backbone.* / decode_head.* keys)",
        detect=_is_segmentor,
        convert=_convert_segmentor_state_dict,
    ),
    OriginalLayout(
        name=LAYOUT_SEGFORMER_IMAGENET,
        expected="official SegFormer ImageNet MiT weights (mit_b0.pth ... mit_b5.pth): a plain state dict with keys\n"
                 "     patch_embed1.proj.weight, block1.0.attn.q.weight, ..., norm4.bias (+ head.weight, head.bias)",
        description="an official SegFormer ImageNet MiT file (patch_embed1.* / block1.* keys)",
        detect=_is_segformer_imagenet,
        convert=_convert_segformer_imagenet,
    ),
)
