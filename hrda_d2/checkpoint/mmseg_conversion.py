"""Leaf converter: original SegFormer / mmseg / HRDA / DAFormer checkpoints -> this project's layout
(docs/method.md §13, model contract). The dispatcher (:mod:`.conversion`) calls it through :data:`LAYOUTS`.

==================================================  ===========================================
original key                                        Detectron2 key
==================================================  ===========================================
SegFormer ImageNet file ``X`` (``head.*`` dropped)  ``backbone.X``
``<p>backbone.X``                                   ``backbone.X``
``<p>decode_head.head.X`` (HRDAHead)                ``sem_seg_head.head.X``
``<p>decode_head.scale_attention.X`` (HRDAHead)     ``sem_seg_head.scale_attention.X``
``<p>decode_head.X`` (plain DAFormer head)          ``sem_seg_head.head.X``
==================================================  ===========================================

ResNet-V1c backbones and DeepLabV2 heads (the paper's Table 2) are renamed by :mod:`.resnet_conversion`.

i.e. ``decode_head.`` becomes ``sem_seg_head.``: the HRDA meta-architecture holds the registered ``HRDAHead``
(single-scale head ``head`` + ``scale_attention``) as its ``sem_seg_head``, as the original's
``HRDAEncoderDecoder`` holds its ``HRDAHead`` as ``decode_head``; with one scale it holds the ``SingleScaleHead``
(single-scale head ``head``), so the plain segmentor's ``decode_head.`` becomes ``sem_seg_head.head.``.

``<p>`` is ``model.`` (student, default) or ``ema_model.`` (EMA teacher) in a UDA training checkpoint
(``{"state_dict": ..., "meta": ...}``; ``imnet_model.*`` and AdvSeg's discriminator ``model_D.*`` are dropped) and empty in a bare segmentor state dict
(``HRDAEncoderDecoder`` / ``EncoderDecoder``, optionally wrapped in ``{"state_dict": ...}``). BatchNorm buffers are
kept. Every function here is pure: it reads mappings and returns new ones.
"""
import logging
import re
from collections import OrderedDict
from typing import Any, Mapping, Optional, Tuple

import torch

from ..modeling.backbone.mit import MIT_VARIANTS, MiTVariant
from .resnet_conversion import convert_dlv2_head, convert_resnet_v1c, is_dlv2_head, is_resnet_v1c
from .conversion_types import (
    CheckpointConversionError,
    ConversionRequest,
    ConvertedCheckpoint,
    HeadSummary,
    OriginalLayout,
    first_items,
    shape_mismatches,
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
LAYOUT_HRDA_TRAINING = "HRDA DACS training checkpoint"  # also "DeepLabV2 AdvSeg training checkpoint", ...
LAYOUT_DAFORMER_TRAINING = "DAFormer DACS training checkpoint"
LAYOUT_HRDA_SEGMENTOR = "HRDAEncoderDecoder state dict"
LAYOUT_DAFORMER_SEGMENTOR = "EncoderDecoder (DAFormer) state dict"

STUDENT_PREFIX = "model."
TEACHER_PREFIX = "ema_model."
IMAGENET_MODEL_PREFIX = "imnet_model."
DISCRIMINATOR_PREFIX = "model_D."  # AdvSeg's discriminator(s); not part of the segmentation model
_UDA_PREFIXES = (STUDENT_PREFIX, TEACHER_PREFIX, IMAGENET_MODEL_PREFIX, DISCRIMINATOR_PREFIX)
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
    missing, unexpected, wrong = shape_mismatches(backbone, expected)
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
def _convert_backbone(backbone: Mapping[str, torch.Tensor], where: str) -> Tuple[
        "OrderedDict[str, torch.Tensor]", str, Optional[Tuple[int, ...]]]:
    """(d2 backbone keys, architecture name, MiT widths or None for a ResNet) of a segmentor's backbone."""
    if is_resnet_v1c(backbone):
        state, name = convert_resnet_v1c(backbone, where)
        return state, name, None
    variant = detect_mit_variant(backbone, where=where)
    return OrderedDict(backbone), variant, MIT_VARIANTS[variant].embed_dims


def _convert_head(head: Mapping[str, torch.Tensor], widths: Optional[Tuple[int, ...]], in_channels: int,
                  where: str) -> Tuple["OrderedDict[str, torch.Tensor]", HeadSummary]:
    """A single-scale head's keys (DLV2Head or DAFormerHead) -> (d2 keys, summary)."""
    if is_dlv2_head(head):
        return convert_dlv2_head(head, in_channels, where)
    if widths is None:
        raise CheckpointConversionError(f"{where}: a ResNet backbone with a head that is not a DLV2Head (keys "
                                        f"[{first_items(head)}]); only DeepLabV2 heads are known on ResNets")
    return OrderedDict(head), _summarize_daformer_head(head, widths, where)


def _convert_segmentor(
    seg: Mapping[str, torch.Tensor], source: str
) -> Tuple["OrderedDict[str, torch.Tensor]", str, Optional[HeadSummary], Optional[HeadSummary], bool]:
    """Segmentor keys (``backbone.*``, ``decode_head.*``) -> (d2 state dict, backbone name, head, attention,
    is_hrda)."""
    others = sorted({k.split(".")[0] for k in seg if not k.startswith(("backbone.", "decode_head."))})
    if others:
        raise CheckpointConversionError(
            f"{source}: unsupported segmentor parts {others} (only backbone.* and decode_head.* can be converted)"
        )
    backbone, variant, widths = _convert_backbone(split_prefix(seg, "backbone."), f"{source} backbone")
    deepest = int(backbone["res5.0.conv3.weight"].shape[0]) if widths is None else widths[-1]
    decode = split_prefix(seg, "decode_head.")
    is_hrda = any(k.startswith("head.") for k in decode)
    out = OrderedDict(("backbone." + k, v) for k, v in backbone.items())
    if is_hrda:
        leftover = sorted({k.split(".")[0] for k in decode if k.split(".")[0] not in _HRDA_HEAD_PARTS})
        if leftover:
            raise CheckpointConversionError(
                f"{source}: HRDAHead with unsupported parts {leftover} (expected decode_head.head.* and "
                f"decode_head.scale_attention.*)"
            )
        head, head_info = _convert_head(split_prefix(decode, "head."), widths, deepest, f"{source} decode_head.head")
        out.update(("sem_seg_head.head." + k, v) for k, v in head.items())
        attention = split_prefix(decode, "scale_attention.")
        att_info = None
        if attention:
            attention, att_info = _convert_head(attention, widths, deepest, f"{source} decode_head.scale_attention")
            out.update(("sem_seg_head.scale_attention." + k, v) for k, v in attention.items())
        if att_info is not None and att_info.num_classes not in (1, head_info.num_classes):
            raise CheckpointConversionError(
                f"{source}: scale attention predicts {att_info.num_classes} channels; expected 1 or "
                f"{head_info.num_classes} (the number of classes)"
            )
    else:
        head, head_info = _convert_head(decode, widths, deepest, f"{source} decode_head")
        out.update(("sem_seg_head.head." + k, v) for k, v in head.items())
        att_info = None
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
            f"{source}: the training checkpoint has no '{prefix}*' weights (prefixes found: {prefixes}); "
            f"{'only DACS checkpoints hold an EMA teacher' if request.teacher else 'no student model'}"
        )
    outside = [k for k in sd if not k.startswith(_UDA_PREFIXES)]
    if outside:
        raise CheckpointConversionError(
            f"{source}: a UDA training checkpoint holds only model.* / ema_model.* / imnet_model.* / model_D.* keys, "
            f"this one also [{first_items(outside, 4)}]"
        )
    state, variant, head, att, is_hrda = _convert_segmentor(split_prefix(sd, prefix), source)
    method = "DACS" if TEACHER_PREFIX in prefixes else ("AdvSeg" if DISCRIMINATOR_PREFIX in prefixes else "UDA")
    layout = f"{_model_name(is_hrda, head)} {method} training checkpoint"
    dropped = [k for k in sd if not k.startswith(prefix)]
    return ConvertedCheckpoint(state, layout, variant, prefix, head, att, meta, dropped)


def _convert_segmentor_state_dict(
    sd: Mapping[str, torch.Tensor], meta: Optional[Mapping[str, Any]], request: ConversionRequest
) -> ConvertedCheckpoint:
    state, variant, head, att, is_hrda = _convert_segmentor(sd, request.source)
    layout = LAYOUT_HRDA_SEGMENTOR if is_hrda else f"EncoderDecoder ({_model_name(False, head)}) state dict"
    return ConvertedCheckpoint(state, layout, variant, "", head, att, meta, [])


def _model_name(is_hrda: bool, head: HeadSummary) -> str:
    """HRDA / DeepLabV2 / DAFormer, the paper's name of a segmentor (for the layout names)."""
    return "HRDA" if is_hrda else ("DeepLabV2" if head.fusion == "dlv2" else "DAFormer")


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
