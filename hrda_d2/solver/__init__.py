"""Optimizer and learning-rate schedules of HRDA (AdamW with head/norm param groups, poly + linear warm-up) and of
VFM-UDA (layer-wise lr decay of a ViT, warm-up + linear decay)."""
from .build import build_optimizer, get_hrda_param_groups, layer_decay_lrs
from .lr_scheduler import (
    PerGroupLRMultiplier,
    WarmupLinearParamScheduler,
    WarmupPolyParamScheduler,
    build_lr_scheduler,
)

__all__ = [
    "build_optimizer",
    "get_hrda_param_groups",
    "layer_decay_lrs",
    "build_lr_scheduler",
    "PerGroupLRMultiplier",
    "WarmupLinearParamScheduler",
    "WarmupPolyParamScheduler",
]
