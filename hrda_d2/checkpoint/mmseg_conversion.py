"""Detect the layout of an original (SegFormer / mmseg / HRDA) checkpoint and convert it to this project's
Detectron2 layout (docs/method.md §13, model contract):

==================================================  ===========================================
original key                                        Detectron2 key
==================================================  ===========================================
SegFormer ImageNet file ``X`` (``head.*`` dropped)  ``backbone.X``
``<p>backbone.X``                                   ``backbone.X``
``<p>decode_head.head.X`` (HRDAHead)                ``sem_seg_head.X``
``<p>decode_head.scale_attention.X`` (HRDAHead)     ``scale_attention.X``
``<p>decode_head.X`` (plain DAFormer head)          ``sem_seg_head.X``
==================================================  ===========================================

``<p>`` is ``model.`` (student, default) or ``ema_model.`` (EMA teacher) in a DACS training checkpoint
(``{"state_dict": ..., "meta": ...}``; ``imnet_model.*`` is dropped) and empty in a bare segmentor state dict
(``HRDAEncoderDecoder`` / ``EncoderDecoder``, optionally wrapped in ``{"state_dict": ...}``). BatchNorm buffers are
kept. Every function here is pure: it reads mappings and returns new ones; files are read by
:func:`load_checkpoint_file` and written by ``tools/convert_mmseg_checkpoint.py``.
"""
import logging
import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple, Union

import torch

from ..modeling.backbone.mit import MIT_VARIANTS, MiTVariant

__all__ = [
    "CheckpointConversionError",
    "ConvertedCheckpoint",
    "HeadSummary",
    "LAYOUT_SEGFORMER_IMAGENET",
    "LAYOUT_HRDA_TRAINING",
    "LAYOUT_DAFORMER_TRAINING",
    "LAYOUT_HRDA_SEGMENTOR",
    "LAYOUT_DAFORMER_SEGMENTOR",
    "convert_mmseg_checkpoint",
    "detect_mit_variant",
    "load_checkpoint_file",
    "mit_state_dict_shapes",
    "original_layout",
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

EXPECTED_LAYOUTS = (
    "  1. official SegFormer ImageNet MiT weights (mit_b0.pth ... mit_b5.pth): a plain state dict with keys\n"
    "     patch_embed1.proj.weight, block1.0.attn.q.weight, ..., norm4.bias (+ head.weight, head.bias);\n"
    "  2. an HRDA or DAFormer DACS training checkpoint (iter_40000.pth): {'state_dict': {model.backbone.*,\n"
    "     model.decode_head.*, ema_model.*, imnet_model.*}, 'meta': {...}};\n"
    "  3. a bare HRDAEncoderDecoder / EncoderDecoder state dict {backbone.*, decode_head.*}, possibly under\n"
    "     'state_dict' (mmseg's own save of a segmentor);\n"
    "  4. an official DINOv2 backbone (dinov2_vit{s,b,l}14[_reg4]_pretrain.pth): cls_token, pos_embed,\n"
    "     patch_embed.proj.weight, blocks.<i>.ls1.gamma, ..., norm.bias (hrda_d2/checkpoint/dinov2_conversion.py)."
)


class CheckpointConversionError(ValueError):
    """The file is not a checkpoint layout the converter knows, or it is inconsistent."""


@dataclass(frozen=True)
class HeadSummary:
    """What a DAFormer head's weights say about its configuration."""

    num_classes: int
    embed_dim: int
    channels: int
    fusion: str  # "aspp" (depthwise-separable ASPP) | "conv"
    num_aspp_branches: int = 0


@dataclass
class ConvertedCheckpoint:
    """Result of :func:`convert_mmseg_checkpoint`.

    ``state_dict`` holds ``backbone.*``, ``sem_seg_head.*`` and ``scale_attention.*`` keys (the latter two only
    when present in the source); ``source_prefix`` is ``"model."`` / ``"ema_model."`` for a training checkpoint,
    ``""`` otherwise; ``meta`` is the source file's ``meta`` dict (or None); ``dropped_keys`` lists source keys
    not converted (ImageNet classifier, the other models of a DACS checkpoint).
    """

    state_dict: "OrderedDict[str, torch.Tensor]"
    layout: str
    mit_variant: str
    source_prefix: str = ""
    sem_seg_head: Optional[HeadSummary] = None
    scale_attention: Optional[HeadSummary] = None
    meta: Optional[Mapping[str, Any]] = None
    dropped_keys: List[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line per fact, for logs and the CLI."""
        lines = [
            f"layout: {self.layout}",
            f"weights: {self.source_prefix or '(no prefix)'}",
            f"backbone: {self.mit_variant}",
            f"sem_seg_head: {self.sem_seg_head}",
            f"scale_attention: {self.scale_attention}",
            f"tensors written: {len(self.state_dict)}, source keys dropped: {len(self.dropped_keys)}",
        ]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------------------
def load_checkpoint_file(path: Union[str, Path], allow_pickle: bool = False) -> Any:
    """``torch.load`` on CPU; ``weights_only`` unless ``allow_pickle`` (only for files you trust).

    Raises CheckpointConversionError naming the file when it cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointConversionError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # torch raises RuntimeError / UnpicklingError / EOFError / ... for bad files
        hint = "" if allow_pickle or not isinstance(e, pickle.UnpicklingError) else (
            " It stores Python objects other than tensors and containers; if you trust the file, retry with "
            "allow_pickle=True (CLI: --allow-pickle)."
        )
        raise CheckpointConversionError(
            f"{path}: cannot be read as a torch checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:300]})."
            f"{hint}"
        ) from e


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


def _first(items, n: int = 8) -> str:
    items = list(items)
    more = f" ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(str(i) for i in items[:n]) + more


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
            f"keys found: {_first(backbone)}"
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
            f"{where}: inconsistent {name} weights: missing [{_first(missing)}], unexpected [{_first(unexpected)}], "
            f"wrong shapes [{_first(wrong)}]"
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
        raise CheckpointConversionError(f"{where}: DAFormer head keys missing: [{_first(missing)}]; "
                                        f"keys found: [{_first(head)}]")
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
            f"found [{_first(fuse)}]"
        )
    seg = head["conv_seg.weight"]
    if conv_in != fused_in or seg.dim() != 4 or int(seg.shape[1]) != channels:
        raise CheckpointConversionError(
            f"{where}: inconsistent widths: fusion input {conv_in} (expected {fused_in} = 4 x {embed_dim}), "
            f"conv_seg.weight {tuple(seg.shape)} (expected [K, {channels}, 1, 1])"
        )
    return HeadSummary(int(seg.shape[0]), embed_dim, channels, fusion, branches)


# ------------------------------------------------------------------------------------------------------------
# layout detection and conversion
# ------------------------------------------------------------------------------------------------------------
def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _describe(obj: Any) -> str:
    if not isinstance(obj, Mapping):
        return f"a {type(obj).__name__}"
    text = f"a dict with top-level keys [{_first(map(repr, obj))}]"
    for wrapper in ("state_dict", "model"):
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping):
            text += f"; '{wrapper}' holds {len(inner)} entries, first keys [{_first(inner, 6)}]"
    return text


def _unknown_layout(source: str, obj: Any, reason: str) -> CheckpointConversionError:
    return CheckpointConversionError(
        f"{source}: not a checkpoint layout this converter knows ({reason}).\nExpected one of:\n{EXPECTED_LAYOUTS}\n"
        f"Found: {_describe(obj)}."
    )


def _split_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict((k[len(prefix):], v) for k, v in sd.items() if k.startswith(prefix))


def _unwrap(obj: Any, source: str) -> Tuple["OrderedDict[str, torch.Tensor]", Optional[Mapping[str, Any]]]:
    """(state dict, meta) of a loaded file: ``{'state_dict': sd, 'meta': ...}``, ``{'model': sd}`` or ``sd``."""
    if _is_state_dict(obj):
        sd, meta = obj, None
    elif isinstance(obj, Mapping) and _is_state_dict(obj.get("state_dict")):
        sd, meta = obj["state_dict"], obj.get("meta")
    elif isinstance(obj, Mapping) and _is_state_dict(obj.get("model")):
        sd, meta = obj["model"], obj.get("meta")
    else:
        raise _unknown_layout(source, obj, "no state dict of tensors at the top level, under 'state_dict' or 'model'")
    sd = OrderedDict(sd)
    if all(k.startswith("module.") for k in sd):  # a DataParallel wrapper saved as is
        sd = _split_prefix(sd, "module.")
    return sd, (meta if isinstance(meta, Mapping) else None)


def _convert_segmentor(
    seg: Mapping[str, torch.Tensor], source: str
) -> Tuple["OrderedDict[str, torch.Tensor]", str, Optional[HeadSummary], Optional[HeadSummary], bool]:
    """Segmentor keys (``backbone.*``, ``decode_head.*``) -> (d2 state dict, variant, head, attention, is_hrda)."""
    others = sorted({k.split(".")[0] for k in seg if not k.startswith(("backbone.", "decode_head."))})
    if others:
        raise CheckpointConversionError(
            f"{source}: unsupported segmentor parts {others} (only backbone.* and decode_head.* can be converted)"
        )
    backbone = _split_prefix(seg, "backbone.")
    variant = detect_mit_variant(backbone, where=f"{source} backbone")
    dims = MIT_VARIANTS[variant].embed_dims
    decode = _split_prefix(seg, "decode_head.")
    is_hrda = any(k.startswith("head.") for k in decode)
    out = OrderedDict(("backbone." + k, v) for k, v in backbone.items())
    if is_hrda:
        parts = {"head": "sem_seg_head", "scale_attention": "scale_attention"}
        leftover = sorted({k.split(".")[0] for k in decode if k.split(".")[0] not in parts})
        if leftover:
            raise CheckpointConversionError(
                f"{source}: HRDAHead with unsupported parts {leftover} (expected decode_head.head.* and "
                f"decode_head.scale_attention.*)"
            )
        head = _split_prefix(decode, "head.")
        attention = _split_prefix(decode, "scale_attention.")
        head_info = _summarize_daformer_head(head, dims, f"{source} decode_head.head")
        att_info = _summarize_daformer_head(attention, dims, f"{source} decode_head.scale_attention") \
            if attention else None
        if att_info is not None and att_info.num_classes not in (1, head_info.num_classes):
            raise CheckpointConversionError(
                f"{source}: scale attention predicts {att_info.num_classes} channels; expected 1 or "
                f"{head_info.num_classes} (the number of classes)"
            )
        out.update(("sem_seg_head." + k, v) for k, v in head.items())
        out.update(("scale_attention." + k, v) for k, v in attention.items())
    else:
        head_info, att_info = _summarize_daformer_head(decode, dims, f"{source} decode_head"), None
        out.update(("sem_seg_head." + k, v) for k, v in decode.items())
    return out, variant, head_info, att_info, is_hrda


def original_layout(obj: Any) -> Optional[str]:
    """A short description of ``obj`` (what ``torch.load`` returned) if it is an ORIGINAL checkpoint that
    :func:`convert_mmseg_checkpoint` converts (DACS training checkpoint, mmseg segmentor state dict, SegFormer
    ImageNet MiT weights), else None (this project's layout, or an unknown one). Only key names are read."""
    try:
        sd, _ = _unwrap(obj, "")
    except CheckpointConversionError:
        return None
    if any(k.startswith((STUDENT_PREFIX, TEACHER_PREFIX)) for k in sd):
        return "an mmseg DACS training checkpoint (model.* / ema_model.* keys)"
    if any(k.startswith("backbone.") for k in sd) and any(k.startswith("decode_head.") for k in sd):
        return "an mmseg segmentor state dict (backbone.* / decode_head.* keys)"
    if "patch_embed1.proj.weight" in sd:
        return "an official SegFormer ImageNet MiT file (patch_embed1.* / block1.* keys)"
    if _is_dinov2(sd):
        return "an official DINOv2 backbone file (cls_token / pos_embed / blocks.* keys)"
    return None


def convert_mmseg_checkpoint(obj: Any, teacher: bool = False, source: str = "checkpoint",
                             vit_img_size: Tuple[int, int] = (512, 512)) -> ConvertedCheckpoint:
    """Convert a loaded original checkpoint (see the module docstring for the layouts) to the Detectron2 layout.

    Args:
        obj: what ``torch.load`` returned for the file.
        teacher: take the EMA teacher (``ema_model.*``) instead of the student (``model.*``) of a DACS
            training checkpoint; an error for layouts without a teacher.
        source: name of the file, used in error messages.
        vit_img_size: ``MODEL.TIMM.IMG_SIZE`` a DINOv2 position embedding is resized for.
    Raises:
        CheckpointConversionError: unknown layout (the message lists the expected layouts and what was found),
            missing key families, inconsistent shapes, or ``teacher`` without a teacher in the file.
    """
    sd, meta = _unwrap(obj, source)
    prefixes = [p for p in _UDA_PREFIXES if any(k.startswith(p) for k in sd)]
    if STUDENT_PREFIX in prefixes or TEACHER_PREFIX in prefixes:
        prefix = TEACHER_PREFIX if teacher else STUDENT_PREFIX
        if prefix not in prefixes:
            raise CheckpointConversionError(
                f"{source}: the DACS checkpoint has no '{prefix}*' weights (prefixes found: {prefixes})"
            )
        outside = [k for k in sd if not k.startswith(_UDA_PREFIXES)]
        if outside:
            raise _unknown_layout(source, obj, f"keys outside model./ema_model./imnet_model.: {_first(outside, 4)}")
        state, variant, head, att, is_hrda = _convert_segmentor(_split_prefix(sd, prefix), source)
        layout = LAYOUT_HRDA_TRAINING if is_hrda else LAYOUT_DAFORMER_TRAINING
        dropped = [k for k in sd if not k.startswith(prefix)]
        result = ConvertedCheckpoint(state, layout, variant, prefix, head, att, meta, dropped)
    elif any(k.startswith("backbone.") for k in sd) and any(k.startswith("decode_head.") for k in sd):
        _reject_teacher(teacher, source, "a segmentor state dict")
        state, variant, head, att, is_hrda = _convert_segmentor(sd, source)
        layout = LAYOUT_HRDA_SEGMENTOR if is_hrda else LAYOUT_DAFORMER_SEGMENTOR
        result = ConvertedCheckpoint(state, layout, variant, "", head, att, meta, [])
    elif "patch_embed1.proj.weight" in sd:
        _reject_teacher(teacher, source, "an ImageNet MiT state dict")
        backbone = OrderedDict((k, v) for k, v in sd.items() if not k.startswith("head."))
        variant = detect_mit_variant(backbone, where=source)
        state = OrderedDict(("backbone." + k, v) for k, v in backbone.items())
        dropped = [k for k in sd if k.startswith("head.")]
        result = ConvertedCheckpoint(state, LAYOUT_SEGFORMER_IMAGENET, variant, "", None, None, meta, dropped)
    elif _is_dinov2(sd):
        _reject_teacher(teacher, source, "a DINOv2 backbone state dict")
        from .dinov2_conversion import convert_dinov2_checkpoint  # it imports this module

        result = convert_dinov2_checkpoint(sd, meta, vit_img_size, source)
    elif "backbone.patch_embed1.proj.weight" in sd or any(k.startswith("sem_seg_head.") for k in sd):
        raise CheckpointConversionError(
            f"{source}: already in this project's Detectron2 layout (backbone.* / sem_seg_head.* keys); "
            f"use it directly as MODEL.WEIGHTS"
        )
    else:
        raise _unknown_layout(source, obj, "no MiT or DINOv2 backbone keys found")
    logger.info("%s converted:\n%s", source, result.summary())
    return result


def _is_dinov2(sd: Mapping[str, torch.Tensor]) -> bool:
    from .dinov2_conversion import is_dinov2_state_dict

    return is_dinov2_state_dict(sd)


def _reject_teacher(teacher: bool, source: str, what: str) -> None:
    if teacher:
        raise CheckpointConversionError(
            f"{source}: teacher weights were requested, but the file is {what} without EMA teacher (ema_model.*)"
        )
