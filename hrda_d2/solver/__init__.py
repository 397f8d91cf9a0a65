"""Optimizer and learning-rate schedule of HRDA (AdamW with head/norm param groups, poly + linear warm-up)."""
from .build import build_optimizer, get_hrda_param_groups
from .lr_scheduler import PerGroupLRMultiplier, WarmupPolyParamScheduler, build_lr_scheduler

__all__ = [
    "build_optimizer",
    "get_hrda_param_groups",
    "build_lr_scheduler",
    "PerGroupLRMultiplier",
    "WarmupPolyParamScheduler",
]
