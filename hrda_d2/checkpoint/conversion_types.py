"""What every checkpoint conversion shares: its error, its result, and the key helpers (docs/method.md §13).

The dispatcher (:mod:`.conversion`) and every leaf converter (:mod:`.mmseg_conversion`,
:mod:`.dinov2_conversion`) import this module; it imports neither, so the package has no import circle.

A leaf converter contributes :class:`OriginalLayout` entries: a name, the text the "expected one of" error lists,
a key-only detector and the conversion itself. The dispatcher tries them in order.
"""
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, List, Mapping, Optional, Tuple

import torch

__all__ = [
    "CheckpointConversionError",
    "ConversionRequest",
    "ConvertedCheckpoint",
    "HeadSummary",
    "OriginalLayout",
    "StateDict",
    "first_items",
    "shape_mismatches",
    "split_prefix",
]

StateDict = "OrderedDict[str, torch.Tensor]"


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
    """Result of :func:`hrda_d2.checkpoint.convert_checkpoint`.

    ``state_dict`` holds this project's keys (``backbone.*``, ``sem_seg_head.*``); ``layout`` names the source
    layout; ``backbone`` the architecture the weights are for (``mit_b0`` ... ``mit_b5``, or the timm name of a
    DINOv2 ViT); ``source_prefix`` is ``"model."`` / ``"ema_model."`` for a training checkpoint, ``""`` otherwise;
    ``sem_seg_head`` / ``scale_attention`` summarise the single-scale head and the HRDA scale attention (None when
    the source has none); ``meta`` is the source file's ``meta`` dict (or None); ``dropped_keys`` lists source keys
    not converted (ImageNet classifier, the other models of a DACS checkpoint).
    """

    state_dict: "OrderedDict[str, torch.Tensor]"
    layout: str
    backbone: str
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
            f"backbone: {self.backbone}",
            f"sem_seg_head: {self.sem_seg_head}",
            f"scale_attention: {self.scale_attention}",
            f"tensors written: {len(self.state_dict)}, source keys dropped: {len(self.dropped_keys)}",
        ]
        return "\n".join(lines)


@dataclass(frozen=True)
class ConversionRequest:
    """What the caller asked for: the EMA teacher instead of the student (training checkpoints only), the file
    name for messages, and ``MODEL.TIMM.IMG_SIZE`` ``(H, W)`` that a ViT position embedding is resized for."""

    teacher: bool = False
    source: str = "checkpoint"
    vit_img_size: Tuple[int, int] = (512, 512)


@dataclass(frozen=True)
class OriginalLayout:
    """One original checkpoint layout a leaf converter handles.

    name: the layout's name (``ConvertedCheckpoint.layout`` of its results, or the family of names).
    expected: the lines the "expected one of" error shows for it.
    description: what :func:`hrda_d2.checkpoint.original_layout` says of such a file.
    detect: whether a state dict (already unwrapped) has this layout; reads key names only.
    convert: ``(state dict, meta, request) -> ConvertedCheckpoint``.
    has_teacher: whether the layout can hold an EMA teacher (``request.teacher`` is refused otherwise).
    """

    name: str
    expected: str
    description: str
    detect: Callable[[Mapping[str, torch.Tensor]], bool]
    convert: Callable[[Mapping[str, torch.Tensor], Optional[Mapping[str, Any]], ConversionRequest],
                      ConvertedCheckpoint]
    has_teacher: bool = False


def first_items(items: Iterable[Any], n: int = 8) -> str:
    """The first ``n`` items, comma-separated, and how many more there are."""
    items = list(items)
    more = f" ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(str(i) for i in items[:n]) + more


def shape_mismatches(state: Mapping[str, torch.Tensor], expected: Mapping[str, Tuple[int, ...]],
                     optional: Iterable[str] = ()) -> Tuple[List[str], List[str], List[str]]:
    """``(missing, unexpected, wrong shapes)`` of ``state`` against the key -> shape table ``expected``; keys in
    ``optional`` may be absent. The wrong-shape entries read ``"<key> (a, b) (expected (c, d))"``."""
    optional = set(optional)
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {s})" for k, s in expected.items()
             if k in state and tuple(state[k].shape) != tuple(s)]
    return missing, unexpected, wrong


def split_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> "OrderedDict[str, torch.Tensor]":
    """The entries of ``sd`` whose key starts with ``prefix``, with the prefix removed (order kept)."""
    return OrderedDict((k[len(prefix):], v) for k, v in sd.items() if k.startswith(prefix))
