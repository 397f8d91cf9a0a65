"""VFM-UDA++ Lightning checkpoints (ViT-Adapter + pyramid head) -> this project's layout (docs/method.md §20.7).

The original's ``UDA`` LightningModule saves ``state_dict`` with ``network.*`` (student), ``network_ema.*`` (EMA
teacher), ``network_feature_extractor.*`` (the frozen DINOv2 of the feature distance) and ``network_feature_head.*``
(its distillation head). Of the chosen network (``network.`` or, with ``teacher``, ``network_ema.``):

* ``encoder.{cls_token, pos_embed, patch_embed.*, blocks.*}`` -> ``backbone.vit.*`` (the DINOv2 trunk;
  the position embedding stays on the 37 x 37 pretraining grid, as the original keeps it);
* ``encoder.{level_embed, spm.*, interactions.*, up.*, norm1..norm4.*}`` -> ``backbone.*`` (same names);
* ``upscale.*`` / ``out.*`` -> ``sem_seg_head.head.upscale.*`` / ``sem_seg_head.head.out.*`` (VFMPyramidHead).

Every other key is dropped and listed in ``dropped_keys`` (the other network, the feature-distance models, the
classifier ``network.head.*`` of the ImageNet-1k adapter pretraining files
``dinov2_*_with_vitadapter_pretraining_in1k_step50000.ckpt``, which the original loads into its encoder and which
convert to backbone weights only). Use
with ``MODEL.BACKBONE.NAME VFMViTAdapter``, ``MODEL.TIMM.NAME`` = :attr:`ConvertedCheckpoint.backbone`'s timm name,
``MODEL.SEM_SEG_HEAD.NAME VFMPyramidHead`` and ``MODEL.HRDA.SCALES [1.0]``.
"""
from collections import OrderedDict
from typing import Any, Mapping, Optional

import torch

from .conversion_types import CheckpointConversionError, ConversionRequest, ConvertedCheckpoint, OriginalLayout

__all__ = ["LAYOUTS", "LAYOUT_VFM_UDA_PP", "convert_vfm_uda_pp_state_dict", "is_vfm_uda_pp_state_dict"]

LAYOUT_VFM_UDA_PP = "vfm_uda_pp_lightning"
STUDENT, TEACHER = "network.", "network_ema."
_TRUNK_KEYS = ("cls_token", "pos_embed", "patch_embed.", "blocks.")
_ADAPTER_KEYS = ("level_embed", "spm.", "interactions.", "up.", "norm1.", "norm2.", "norm3.", "norm4.")
_HEAD_KEYS = ("upscale.", "out.")
# DINOv2 width -> timm name of the trunk (the hub models dinov2_vit{s,b,l,g}14 the original loads)
_TIMM_NAMES = {384: "vit_small_patch14_dinov2", 768: "vit_base_patch14_dinov2", 1024: "vit_large_patch14_dinov2",
               1536: "vit_giant2_patch14_dinov2"}


def is_vfm_uda_pp_state_dict(sd: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``sd`` is a VFM-UDA++ Lightning state dict (the adapter's interactions under ``network.encoder``):
    a UDA training checkpoint, or the ImageNet-1k adapter pretraining the original starts from."""
    return any(k.startswith(STUDENT + "encoder.interactions.") for k in sd)


def _target(key: str) -> Optional[str]:
    if key.startswith("encoder."):
        rest = key[len("encoder."):]
        if rest.startswith(_TRUNK_KEYS):
            return "backbone.vit." + rest
        if rest.startswith(_ADAPTER_KEYS):
            return "backbone." + rest
        return None
    if key.startswith(_HEAD_KEYS):
        return "sem_seg_head.head." + key
    return None


def convert_vfm_uda_pp_state_dict(sd: Mapping[str, torch.Tensor], teacher: bool = False,
                                  source: str = "checkpoint") -> ConvertedCheckpoint:
    """The student (or, with ``teacher``, the EMA teacher) of a VFM-UDA++ state dict in this project's keys.

    Raises:
        CheckpointConversionError: the chosen network is absent, or one of its keys has no place here.
    """
    prefix = TEACHER if teacher else STUDENT
    state, dropped, unplaced = OrderedDict(), [], []
    for key, value in sd.items():
        if not key.startswith(prefix):
            dropped.append(key)
            continue
        target = _target(key[len(prefix):])
        if target is None and key[len(prefix):].startswith("head."):  # classifier of the IN-1k pretraining
            dropped.append(key)
        elif target is None:
            unplaced.append(key)
        else:
            state[target] = value
    if not state:
        role = "EMA teacher" if teacher else "student"
        raise CheckpointConversionError(f"{source}: no '{prefix}*' weights (the {role} of a VFM-UDA++ checkpoint); "
                                        f"found prefixes {sorted({k.split('.')[0] for k in sd})}")
    if unplaced:
        raise CheckpointConversionError(f"{source}: VFM-UDA++ keys without a place in VFMViTAdapter / "
                                        f"VFMPyramidHead: {unplaced[:8]}{' ...' if len(unplaced) > 8 else ''}")
    width = int(state["backbone.vit.cls_token"].shape[-1]) if "backbone.vit.cls_token" in state else -1
    name = _TIMM_NAMES.get(width, f"a DINOv2 ViT of width {width}")
    return ConvertedCheckpoint(state, LAYOUT_VFM_UDA_PP, name, prefix, None, None, None, dropped)


def _convert_layout(sd: Mapping[str, torch.Tensor], meta: Optional[Mapping[str, Any]],
                    request: ConversionRequest) -> ConvertedCheckpoint:
    result = convert_vfm_uda_pp_state_dict(sd, request.teacher, request.source)
    result.meta = meta
    return result


LAYOUTS = (
    OriginalLayout(
        name=LAYOUT_VFM_UDA_PP,
        expected="a VFM-UDA++ Lightning checkpoint (ViT-Adapter + pyramid head): state_dict with\n"
                 "     network.encoder.interactions.* [, network.upscale.*, network.out.weight, network_ema.*] "
                 "(hrda_d2/checkpoint/vfm_adapter_conversion.py)",
        description="a VFM-UDA++ Lightning checkpoint (network.encoder.interactions.* / network.upscale.* keys)",
        detect=is_vfm_uda_pp_state_dict,
        convert=_convert_layout,
        has_teacher=True,
    ),
)
