"""AdamW (or SGD) with HRDA's parameter groups (docs/method.md §11.1, §15 Q10, §18.6).

mmcv's ``paramwise_cfg.custom_keys = {head: lr_mult 10, pos_block: decay_mult 0, norm: decay_mult 0}`` on
the original module names amounts to:

* every parameter of the decode heads (here: names under ``sem_seg_head.``, which holds the HRDA head's
  single-scale head and scale attention as the original's ``decode_head`` does, and under
  the prefixes of ``SOLVER.HEAD_LR_PARAM_PREFIXES``, e.g. a ViT's new feature pyramid ``backbone.simfp_``),
  BatchNorm weights and biases included: ``lr = BASE_LR * HEAD_LR_MULTIPLIER``, ``weight_decay = WEIGHT_DECAY``;
* every other parameter whose name contains ``norm`` (the MiT LayerNorms ``patch_embed*.norm``,
  ``block*.*.norm1/norm2``, ``block*.*.attn.norm``, ``norm1..4``): ``lr = BASE_LR``,
  ``weight_decay = WEIGHT_DECAY * BACKBONE_NORM_DECAY_MULTIPLIER``;
* everything else (biases and depthwise convs included): ``lr = BASE_LR``, ``weight_decay = WEIGHT_DECAY``.

Parameters with equal ``(lr, weight_decay)`` share one param group (mmcv used one group per parameter; the
update is the same). Frozen parameters (``requires_grad`` False) are left out.
"""
import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups
from torch import nn

from ..config import check_choice

__all__ = ["DECODE_HEAD_PREFIXES", "get_hrda_param_groups", "build_optimizer"]

logger = logging.getLogger(__name__)

# name prefixes (relative to the HRDA meta-architecture) of the decode heads' parameters
DECODE_HEAD_PREFIXES = ("sem_seg_head.",)


def get_hrda_param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    head_lr_multiplier: float,
    norm_decay_multiplier: float,
    head_prefixes: Sequence[str] = (),
    extra_modules: Optional[Mapping[str, nn.Module]] = None,
) -> List[Dict[str, Any]]:
    """Param groups of the rules in the module docstring.

    Args:
        model: the student (an ``HRDA`` meta-architecture, possibly wrapped in DistributedDataParallel).
        head_prefixes: name prefixes trained like the decode heads, besides ``DECODE_HEAD_PREFIXES``.
        extra_modules: further modules the optimizer also updates, by name (their parameters are named
            ``<name>.<parameter>``), e.g. AdvSeg's ``{"discriminator": D}`` (docs/method.md §18.4).

    Returns:
        A list of ``{"params", "param_names", "lr", "weight_decay"}`` dicts, one per distinct
        ``(lr, weight_decay)``, every trainable parameter exactly once.
    """
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    per_parameter = []
    heads = DECODE_HEAD_PREFIXES + tuple(head_prefixes)
    named = list(model.named_parameters())
    for prefix, module in (extra_modules or {}).items():
        named += [(f"{prefix}.{name}", param) for name, param in module.named_parameters()]
    for name, param in named:
        if not param.requires_grad:
            continue
        if name.startswith(heads):
            lr, decay = base_lr * head_lr_multiplier, weight_decay
        elif "norm" in name:
            lr, decay = base_lr, weight_decay * norm_decay_multiplier
        else:
            lr, decay = base_lr, weight_decay
        per_parameter.append({"params": [param], "param_names": [name], "lr": lr, "weight_decay": decay})
    if not per_parameter:
        raise ValueError("build_optimizer: the model has no trainable parameter (requires_grad is False everywhere)")
    groups = reduce_param_groups(per_parameter)
    for group in groups:
        logger.info(
            "param group lr=%g weight_decay=%g: %d parameters", group["lr"], group["weight_decay"], len(group["params"])
        )
    return groups




def build_optimizer(cfg, model: nn.Module,
                    extra_modules: Optional[Mapping[str, nn.Module]] = None) -> torch.optim.Optimizer:
    """The optimizer of ``SOLVER.OPTIMIZER`` over the trainable parameters of ``model`` (pass the student only),
    (and of ``extra_modules``, see :func:`get_hrda_param_groups`) with the param groups of
    :func:`get_hrda_param_groups`:

    * ``"ADAMW"``: AdamW of the original (docs/method.md §11.1: ``lr = SOLVER.BASE_LR``, ``betas = SOLVER.BETAS``,
      ``weight_decay = SOLVER.WEIGHT_DECAY``, eps 1e-8, amsgrad off);
    * ``"SGD"``: SGD of the original's ``sgd`` schedule (docs/method.md §18.6: ``momentum = SOLVER.MOMENTUM``,
      ``weight_decay = SOLVER.WEIGHT_DECAY``, no dampening, ``nesterov = SOLVER.NESTEROV``), e.g. AdvSeg / MinEnt
      at lr 0.0025 with momentum 0.9 and weight decay 5e-4.

    Gradient clipping is added with Detectron2's ``maybe_add_gradient_clipping`` when
    ``SOLVER.CLIP_GRADIENTS.ENABLED``. Each group's starting lr is recorded as ``initial_lr`` by the scheduler
    (torch convention), which Detectron2's ``LRMultiplier`` scales.
    """
    solver = cfg.SOLVER
    name = check_choice("SOLVER.OPTIMIZER", solver.OPTIMIZER)
    betas = tuple(float(b) for b in solver.BETAS)
    if len(betas) != 2:
        raise ValueError(f"SOLVER.BETAS must hold two values, got {list(solver.BETAS)}")
    groups = get_hrda_param_groups(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        head_lr_multiplier=solver.HEAD_LR_MULTIPLIER,
        norm_decay_multiplier=solver.BACKBONE_NORM_DECAY_MULTIPLIER,
        head_prefixes=tuple(solver.HEAD_LR_PARAM_PREFIXES),
        extra_modules=extra_modules,
    )
    if name == "SGD":
        optimizer_class = maybe_add_gradient_clipping(cfg, torch.optim.SGD)
        return optimizer_class(groups, lr=solver.BASE_LR, momentum=solver.MOMENTUM, weight_decay=solver.WEIGHT_DECAY,
                               nesterov=solver.NESTEROV)
    optimizer_class = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)
    return optimizer_class(groups, lr=solver.BASE_LR, betas=betas, weight_decay=solver.WEIGHT_DECAY, eps=1e-8)
