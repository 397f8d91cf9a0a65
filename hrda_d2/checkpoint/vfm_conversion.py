"""VFM-UDA / VFM-UDA++ training checkpoints (Lightning) -> Detectron2 checkpoints of the VFM models
(docs/method.md §19.4, §20.7).

A VFM-UDA run (github.com/tue-mps/vfm-uda, ``training/uda_vit/*.py``) or a VFM-UDA++ run
(github.com/tue-mps/vfm-uda-plusplus, ``training/uda/uda.py``) saves a Lightning checkpoint whose ``state_dict``
holds its modules by attribute name:

===============================  ===========================================================================
top-level group                  here
===============================  ===========================================================================
``network.*``                    the student (default)
``network_ema.*``                the EMA teacher (``--teacher`` / ``teacher=True``)
``network_pretrained_frozen.*``  the frozen pretrained copy of the feature-distance runs: dropped (rebuilt
``network_feature_extractor.*``  from the pretrained weights at training time)
``network_feature_head.*``       the feature-distance projection head: dropped (not part of the segmentor)
other groups                     dropped, listed in ``dropped_keys``
===============================  ===========================================================================

Inside the chosen network, :data:`NETWORK_LAYOUTS` says how its children map to this project's keys. A layout
is a :class:`VFMNetworkLayout`: the child prefixes that identify it (``signature``) and those it must not have
(``excludes``), so that at most one layout matches a network; ``(source prefix, target prefix)`` pairs, and the
children that are dropped; every key of the network must fall under exactly one pair or a dropped prefix. Known:

* ``VITLightweightHead`` (VFM-UDA, docs/method.md §19.4): ``encoder.*`` (an official DINOv2 ViT,
  :class:`~hrda_d2.modeling.backbone.dinov2_vit.DINOv2ViT` keys) -> ``backbone.vit.*`` of ``VFMViT``; ``upscale.*``
  / ``out.*`` -> ``sem_seg_head.head.upscale.*`` / ``sem_seg_head.head.out.*`` of ``VFMLightweightHead``. Told
  apart from the adapter layouts by the absence of ``encoder.spm.*`` / ``encoder.interactions.*``.
* ``VITAdapterLightweightPyramidHead`` (VFM-UDA++, docs/method.md §20.7): the DINOv2 trunk of the encoder
  (``encoder.{cls_token, pos_embed, patch_embed.*, blocks.*}``) -> ``backbone.vit.*``; the adapter
  (``encoder.{level_embed, spm.*, interactions.*, up.*, norm1..4.*}``) -> ``backbone.*`` of ``VFMViTAdapter``;
  ``upscale.*`` / ``out.*`` -> ``sem_seg_head.head.*`` of ``VFMPyramidHead``.
* ``DinoV2ViTAdapter ImageNet-1k pretraining`` (the ``dinov2_*_with_vitadapter_pretraining_in1k_step50000.ckpt``
  files VFM-UDA++ starts from): the same encoder keys, no ``upscale.*`` / ``out.*``; the classifier ``head.*`` is
  dropped (the original loads only the encoder from these files). Backbone weights only.

The converted keys are checked against the DINOv2 encoder (timm name from the weights, built on the meta device)
and, for the adapter layouts, against ``VFMViTAdapter`` (``MODEL.VFM.ADAPTER`` defaults, ``CONV_INPLANE`` read from
the weights) and ``VFMPyramidHead``.
"""
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Tuple

import torch
from detectron2.layers import ShapeSpec

from ..modeling.backbone.dinov2_vit import DINOv2ViT, flatten_block_chunks
from ..modeling.backbone.vit_adapter import VFMViTAdapter
from ..modeling.heads.vfm_heads import VFMLightweightHead, VFMPyramidHead
from .conversion_types import (
    CheckpointConversionError,
    ConversionRequest,
    ConvertedCheckpoint,
    OriginalLayout,
    first_items,
    shape_mismatches,
    split_prefix,
)
from .dinov2_conversion import Dinov2ConversionError, dinov2_timm_name

__all__ = [
    "LAYOUTS",
    "LAYOUT_VFM_UDA",
    "NETWORK_LAYOUTS",
    "STUDENT_PREFIX",
    "TEACHER_PREFIX",
    "VFMConvertedCheckpoint",
    "VFMNetworkLayout",
    "convert_vfm_checkpoint",
    "is_vfm_lightning_state_dict",
    "vfm_usage",
]

logger = logging.getLogger(__name__)

LAYOUT_VFM_UDA = "VFM-UDA Lightning training checkpoint"
STUDENT_PREFIX = "network."
TEACHER_PREFIX = "network_ema."
# top-level groups of the Lightning state dict that are known not to be the segmentor (frozen feature-distance copy,
# its projection head); other groups are dropped as well, but logged as unknown
DROPPED_GROUPS = ("network_pretrained_frozen.", "network_feature_extractor.", "network_feature_head.")


@dataclass(frozen=True)
class VFMNetworkLayout:
    """How one original network class maps to this project's model.

    name: the original class (``VITLightweightHead``).
    signature: child prefixes that must all occur in the network (detection).
    parts: ``(source prefix, target prefix)`` pairs; every network key must start with one source prefix or one
        ``dropped`` prefix.
    backbone / head: ``MODEL.BACKBONE.NAME`` / ``MODEL.SEM_SEG_HEAD.NAME`` of the converted model (head None:
        backbone weights only).
    in_features: ``MODEL.SEM_SEG_HEAD.IN_FEATURES`` of the head.
    check: ``(converted state dict, source) -> (timm name, num_classes)``; raises on wrong keys or shapes
        (num_classes 0 without a head).
    excludes: child prefixes that must NOT occur (detection; keeps the layouts mutually exclusive).
    dropped: child prefixes that are not converted (listed in ``dropped_keys``).
    """

    name: str
    signature: Tuple[str, ...]
    parts: Tuple[Tuple[str, str], ...]
    backbone: str
    head: Optional[str]
    in_features: Tuple[str, ...]
    check: Callable[[Mapping[str, torch.Tensor], str], Tuple[str, int]]
    excludes: Tuple[str, ...] = ()
    dropped: Tuple[str, ...] = ()

    def matches(self, network: Mapping[str, torch.Tensor]) -> bool:
        """Whether the keys of ``network`` (one network, its prefix removed) have this layout."""
        return (all(any(k.startswith(p) for k in network) for p in self.signature)
                and not any(k.startswith(self.excludes) for k in network))


@dataclass
class VFMConvertedCheckpoint(ConvertedCheckpoint):
    """:class:`ConvertedCheckpoint` of a VFM-UDA file (``backbone`` holds the timm name of the DINOv2 ViT) with
    the network layout and the config keys of the converted model."""

    network: Optional[VFMNetworkLayout] = None
    num_classes: int = 0


def _dinov2_encoder_name(state: Mapping[str, torch.Tensor], prefix: str, source: str) -> str:
    """timm name of the DINOv2 ViT whose official keys are below ``prefix`` of ``state``."""
    encoder = split_prefix(state, prefix)
    try:
        return dinov2_timm_name(encoder)
    except (Dinov2ConversionError, KeyError) as e:
        raise CheckpointConversionError(f"{source}: the encoder is not an official DINOv2 ViT ({e})") from e


def _expected_dinov2(name: str, prefix: str) -> "OrderedDict[str, Tuple[int, ...]]":
    with torch.device("meta"):
        vit = DINOv2ViT(name)
    return OrderedDict((prefix + k, tuple(v.shape)) for k, v in vit.state_dict().items())


def _check_lightweight_head(state: Mapping[str, torch.Tensor], source: str) -> Tuple[str, int]:
    """Keys/shapes of ``VFMViT`` + ``VFMLightweightHead`` (built on the meta device)."""
    name = _dinov2_encoder_name(state, "backbone.vit.", source)
    if "sem_seg_head.head.out.weight" not in state:
        raise CheckpointConversionError(f"{source}: the network has no classifier out.weight")
    num_classes = int(state["sem_seg_head.head.out.weight"].shape[0])
    expected = _expected_dinov2(name, "backbone.vit.")
    with torch.device("meta"):
        head = VFMLightweightHead({"vit_tokens": ShapeSpec(channels=int(state["backbone.vit.norm.weight"].shape[0]))},
                                  in_features=["vit_tokens"], num_classes=num_classes)
    expected.update(("sem_seg_head.head." + k, tuple(v.shape)) for k, v in head.state_dict().items())
    missing, unexpected, wrong = shape_mismatches(state, expected)
    if missing or unexpected or wrong:
        raise CheckpointConversionError(
            f"{source}: the VITLightweightHead weights do not match VFMViT ({name}) + VFMLightweightHead: missing "
            f"[{first_items(missing, 6)}], unexpected [{first_items(unexpected, 6)}], wrong shapes "
            f"[{first_items(wrong, 6)}]")
    return name, num_classes


# VFM-UDA++'s encoder (DinoV2ViTAdapter): the DINOv2 trunk it holds and the adapter's own children
_ADAPTER_TRUNK = ("cls_token", "pos_embed", "patch_embed.", "blocks.")
_ADAPTER_OWN = ("level_embed", "spm.", "interactions.", "up.", "norm1.", "norm2.", "norm3.", "norm4.")
# the trunk keys of DINOv2ViT that VFMViTAdapter removes (the adapter has no final norm and no mask token)
_ADAPTER_REMOVED_TRUNK = ("backbone.vit.mask_token", "backbone.vit.norm.")


def _check_adapter(state: Mapping[str, torch.Tensor], source: str, with_head: bool) -> Tuple[str, int]:
    """Keys/shapes of ``VFMViTAdapter`` (+ ``VFMPyramidHead`` if ``with_head``), built on the meta device with the
    ``MODEL.VFM.ADAPTER`` defaults (the original's fixed adapter arguments) and the SPM width of the weights."""
    name = _dinov2_encoder_name(state, "backbone.vit.", source)
    stem = state.get("backbone.spm.stem.0.weight")
    if stem is None:
        raise CheckpointConversionError(f"{source}: the ViT-Adapter weights have no encoder.spm.stem.0.weight")
    if with_head and "sem_seg_head.head.out.weight" not in state:
        raise CheckpointConversionError(f"{source}: the network has no classifier out.weight")
    num_classes = int(state["sem_seg_head.head.out.weight"].shape[0]) if with_head else 0
    with torch.device("meta"):
        backbone = VFMViTAdapter(vit=DINOv2ViT(name), conv_inplane=int(stem.shape[0]))
        expected = OrderedDict(("backbone." + k, tuple(v.shape)) for k, v in backbone.state_dict().items())
        if with_head:
            head = VFMPyramidHead(backbone.output_shape(), in_features=list(backbone.output_shape()),
                                  num_classes=num_classes)
            expected.update(("sem_seg_head.head." + k, tuple(v.shape)) for k, v in head.state_dict().items())
    missing, unexpected, wrong = shape_mismatches(state, expected)
    if missing or unexpected or wrong:
        target = "VFMViTAdapter" + (" + VFMPyramidHead" if with_head else "")
        raise CheckpointConversionError(
            f"{source}: the ViT-Adapter weights do not match {target} ({name}, MODEL.VFM.ADAPTER defaults, "
            f"CONV_INPLANE {int(stem.shape[0])}): missing [{first_items(missing, 6)}], unexpected "
            f"[{first_items(unexpected, 6)}], wrong shapes [{first_items(wrong, 6)}]")
    return name, num_classes


def _check_adapter_pyramid_head(state: Mapping[str, torch.Tensor], source: str) -> Tuple[str, int]:
    return _check_adapter(state, source, with_head=True)


def _check_adapter_backbone(state: Mapping[str, torch.Tensor], source: str) -> Tuple[str, int]:
    return _check_adapter(state, source, with_head=False)


_ADAPTER_ENCODER_PARTS = (tuple(("encoder." + k, "backbone.vit." + k) for k in _ADAPTER_TRUNK)
                          + tuple(("encoder." + k, "backbone." + k) for k in _ADAPTER_OWN))
_ADAPTER_SIGNATURE = ("encoder.spm.", "encoder.interactions.")

NETWORK_LAYOUTS: Tuple[VFMNetworkLayout, ...] = (
    VFMNetworkLayout(
        name="VITLightweightHead",
        signature=("encoder.", "upscale.", "out."),
        parts=(("encoder.", "backbone.vit."), ("upscale.", "sem_seg_head.head.upscale."),
               ("out.", "sem_seg_head.head.out.")),
        backbone="VFMViT",
        head="VFMLightweightHead",
        in_features=("vit_tokens",),
        check=_check_lightweight_head,
        excludes=_ADAPTER_SIGNATURE,
    ),
    VFMNetworkLayout(
        name="VITAdapterLightweightPyramidHead",
        signature=_ADAPTER_SIGNATURE + ("upscale.", "out."),
        parts=_ADAPTER_ENCODER_PARTS + (("upscale.", "sem_seg_head.head.upscale."),
                                        ("out.", "sem_seg_head.head.out.")),
        backbone="VFMViTAdapter",
        head="VFMPyramidHead",
        in_features=("res2", "res3", "res4", "res5"),
        check=_check_adapter_pyramid_head,
    ),
    VFMNetworkLayout(
        name="DinoV2ViTAdapter ImageNet-1k pretraining",
        signature=_ADAPTER_SIGNATURE,
        parts=_ADAPTER_ENCODER_PARTS,
        backbone="VFMViTAdapter",
        head=None,
        in_features=(),
        check=_check_adapter_backbone,
        excludes=("upscale.", "out."),
        dropped=("head.",),
    ),
)


def _network_layout(network: Mapping[str, torch.Tensor]) -> Optional[VFMNetworkLayout]:
    """The one layout of :data:`NETWORK_LAYOUTS` that matches ``network`` (None if none does)."""
    found = [layout for layout in NETWORK_LAYOUTS if layout.matches(network)]
    if len(found) > 1:  # the table's signatures/excludes must keep the layouts apart
        raise AssertionError(f"NETWORK_LAYOUTS overlap: {[layout.name for layout in found]} all match")
    return found[0] if found else None


def is_vfm_lightning_state_dict(sd: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``sd`` is a VFM-UDA Lightning ``state_dict``: ``network.*`` keys of a known network layout."""
    return any(k.startswith(STUDENT_PREFIX) for k in sd) and _network_layout(split_prefix(sd, STUDENT_PREFIX)) \
        is not None


def convert_vfm_checkpoint(sd: Mapping[str, torch.Tensor], meta: Optional[Mapping[str, Any]] = None,
                           teacher: bool = False, source: str = "checkpoint") -> VFMConvertedCheckpoint:
    """Convert a VFM-UDA Lightning ``state_dict`` (module docstring) to this project's keys.

    Args:
        sd: the unwrapped ``state_dict``.
        meta: the file's ``meta`` (Lightning files have none), kept in the result.
        teacher: take ``network_ema.*`` instead of ``network.*``.
        source: file name for messages.
    Raises:
        CheckpointConversionError: no teacher in the file, unknown network layout, keys outside the layout's
            parts, or keys/shapes that do not match the model.
    """
    prefix = TEACHER_PREFIX if teacher else STUDENT_PREFIX
    network = flatten_block_chunks(split_prefix(sd, prefix))
    if not network:
        raise CheckpointConversionError(f"{source}: no {prefix}* weights in the file (top-level groups: "
                                        f"{sorted({k.split('.')[0] for k in sd})})")
    layout = _network_layout(network)
    if layout is None:
        known = "; ".join(f"{n.name} ({', '.join(p + '*' for p in n.signature)})" for n in NETWORK_LAYOUTS)
        raise CheckpointConversionError(f"{source}: {prefix}* is not a known VFM network layout (known: {known}); "
                                        f"found children {sorted({k.split('.')[0] for k in network})}")
    state: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    outside, dropped_children = [], []
    for key, value in network.items():
        target = next((dst + key[len(src):] for src, dst in layout.parts if key.startswith(src)), None)
        if target is not None:
            state[target] = value
        elif layout.dropped and key.startswith(layout.dropped):
            dropped_children.append(prefix + key)
        else:
            outside.append(key)
    if outside:
        raise CheckpointConversionError(f"{source}: {prefix}* keys outside the {layout.name} layout "
                                        f"({', '.join(s + '*' for s, _ in layout.parts)}): "
                                        f"[{first_items(outside, 6)}]")
    name, num_classes = layout.check(state, source)
    dropped = dropped_children + [k for k in sd if not k.startswith(prefix)]
    unknown = sorted({k.split(".")[0] for k in dropped if not k.startswith((STUDENT_PREFIX, TEACHER_PREFIX)
                                                                           + DROPPED_GROUPS)})
    if unknown:
        logger.warning("%s: top-level groups %s are not part of a VFM-UDA segmentor; dropped", source, unknown)
    result = VFMConvertedCheckpoint(state, LAYOUT_VFM_UDA, name, prefix, None, None, meta, dropped,
                                    network=layout, num_classes=num_classes)
    logger.info("%s: %s%s (%s, %d classes), %d tensors; dropped groups %s", source, prefix, layout.name, name,
                num_classes, len(state), sorted({k.split('.')[0] for k in dropped}))
    return result


def vfm_usage(result: VFMConvertedCheckpoint) -> str:
    """The config keys a converted VFM-UDA checkpoint is used with (printed by the CLI)."""
    layout = result.network
    if layout.head is None:
        return (f"backbone weights only: use with MODEL.BACKBONE.NAME {layout.backbone} MODEL.TIMM.NAME "
                f"{result.backbone} MODEL.WEIGHTS <this file> (the segmentation head keeps its initialisation)")
    return (f"use with MODEL.BACKBONE.NAME {layout.backbone} MODEL.TIMM.NAME {result.backbone} "
            f"MODEL.SEM_SEG_HEAD.NAME {layout.head} MODEL.SEM_SEG_HEAD.IN_FEATURES {list(layout.in_features)} "
            f"MODEL.SEM_SEG_HEAD.NUM_CLASSES {result.num_classes} MODEL.HRDA.SCALES [1.0] MODEL.WEIGHTS <this file>")


def _convert_layout(sd: Mapping[str, torch.Tensor], meta: Optional[Mapping[str, Any]],
                    request: ConversionRequest) -> VFMConvertedCheckpoint:
    return convert_vfm_checkpoint(sd, meta, request.teacher, request.source)


LAYOUTS = (
    OriginalLayout(
        name=LAYOUT_VFM_UDA,
        expected="a VFM-UDA Lightning training checkpoint (VFM-UDA, VFM-UDA++): {'state_dict': network.* (student),\n"
                 "     network_ema.* (EMA teacher, --teacher), network_pretrained_frozen.* / network_feature_*.*\n"
                 "     (dropped)}; "
                 "networks: " + ", ".join(n.name for n in NETWORK_LAYOUTS) +
                 " (hrda_d2/checkpoint/vfm_conversion.py)",
        description="a VFM-UDA / VFM-UDA++ Lightning checkpoint (network.* / network_ema.* keys)",
        detect=is_vfm_lightning_state_dict,
        convert=_convert_layout,
        has_teacher=True,
    ),
)
