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

Layer-wise lr decay (VFM-UDA / VFM-UDA++, docs/method.md §21.1). A backbone may describe its parameters by role
with a method ``layer_decay_groups() -> Mapping[str, Sequence[str]]`` returning parameter-name prefixes relative
to the backbone (a prefix matches a name equal to it or followed by ``.``):

* ``"decoder"``: modules trained like the decode heads (lr ``BASE_LR * HEAD_LR_MULTIPLIER``), e.g. the
  ViT-Adapter's ``spm``, ``interactions``, ``up``, ``level_embed``, ``norm1..4``;
* ``"blocks"``: one prefix per transformer block, block 0 first (``["vit.blocks.0", ..., "vit.blocks.11"]``);
  block ``i`` of ``n`` gets ``BASE_LR * LAYER_DECAY ** (n - 1 - i)``;
* ``"stems"``: everything below block 0 (patch embedding, position embedding, cls / register / mask tokens,
  the final norm): ``BASE_LR * LAYER_DECAY ** n``.

Every trainable backbone parameter must have exactly one role. Without the method the backbone keeps the rules
above, and ``SOLVER.LAYER_DECAY`` other than 1.0 is refused. ``SOLVER.LR_SQRT_BATCH_SCALING`` multiplies every lr
by ``sqrt(SOLVER.IMS_PER_BATCH)`` (the total batch over all GPUs). The weight-decay rules stay those above (the
originals decay every parameter: ``BACKBONE_NORM_DECAY_MULTIPLIER 1.0``).
"""
import logging
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups
from torch import nn

from ..config import check_choice

__all__ = ["DECODE_HEAD_PREFIXES", "LAYER_DECAY_ROLES", "layer_decay_lrs", "get_hrda_param_groups",
           "build_optimizer"]

logger = logging.getLogger(__name__)

# name prefixes (relative to the HRDA meta-architecture) of the decode heads' parameters
DECODE_HEAD_PREFIXES = ("sem_seg_head.",)
# the keys of a backbone's ``layer_decay_groups()``
LAYER_DECAY_ROLES = ("decoder", "blocks", "stems")
_MAX_LISTED = 5


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_decay_lrs(backbone: nn.Module, base_lr: float, layer_decay: float) -> Dict[str, Optional[float]]:
    """The lr of every trainable parameter of ``backbone`` by the roles of its ``layer_decay_groups()``.

    The original's order of operations (docs/method.md §21.1): the last block gets ``base_lr``, each block below
    it the lr of the block above times ``layer_decay``, the stems that of block 0 times ``layer_decay``.

    Returns:
        parameter name (relative to the backbone) -> lr, or None for the "decoder" role (trained like the
        decode heads).

    Raises:
        ValueError: the roles are not the three keys, or a trainable parameter has no role or two roles.
    """
    roles = backbone.layer_decay_groups()
    owner = f"{type(backbone).__name__}.layer_decay_groups()"
    if set(roles) != set(LAYER_DECAY_ROLES):
        raise ValueError(f"{owner} must return the keys {list(LAYER_DECAY_ROLES)}, got {sorted(roles)}")
    prefix_lrs: List[Tuple[str, Optional[float]]] = [(prefix, None) for prefix in roles["decoder"]]
    blocks = list(roles["blocks"])
    block_lrs = [0.0] * len(blocks)
    lr = base_lr
    for index in reversed(range(len(blocks))):
        block_lrs[index] = lr
        lr = lr * layer_decay
    prefix_lrs += list(zip(blocks, block_lrs)) + [(prefix, lr) for prefix in roles["stems"]]
    lrs: Dict[str, Optional[float]] = {}
    unassigned, doubled = [], []
    for name, param in backbone.named_parameters():
        if not param.requires_grad:
            continue
        found = [value for prefix, value in prefix_lrs if _matches(name, prefix)]
        if not found:
            unassigned.append(name)
        elif len(found) > 1:
            doubled.append(name)
        else:
            lrs[name] = found[0]
    if unassigned:
        raise ValueError(f"{owner} gives {len(unassigned)} trainable parameter(s) no role, e.g. "
                         f"{unassigned[:_MAX_LISTED]}; add their prefixes to 'decoder', 'blocks' or 'stems'")
    if doubled:
        raise ValueError(f"{owner} gives {len(doubled)} parameter(s) two roles, e.g. {doubled[:_MAX_LISTED]}; "
                         "make the prefixes disjoint")
    return lrs


def get_hrda_param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    head_lr_multiplier: float,
    norm_decay_multiplier: float,
    head_prefixes: Sequence[str] = (),
    extra_modules: Optional[Mapping[str, nn.Module]] = None,
    layer_decay: float = 1.0,
    lr_scale: float = 1.0,
) -> List[Dict[str, Any]]:
    """Param groups of the rules in the module docstring.

    Args:
        model: the student (an ``HRDA`` meta-architecture, possibly wrapped in DistributedDataParallel).
        head_prefixes: name prefixes trained like the decode heads, besides ``DECODE_HEAD_PREFIXES``.
        extra_modules: further modules the optimizer also updates, by name (their parameters are named
            ``<name>.<parameter>``), e.g. AdvSeg's ``{"discriminator": D}`` (docs/method.md §18.4).
        layer_decay: ``SOLVER.LAYER_DECAY``; used (and required to be 1.0 otherwise) when ``model.backbone``
            has ``layer_decay_groups()``.
        lr_scale: every lr is multiplied by it first (``sqrt(IMS_PER_BATCH)`` with ``LR_SQRT_BATCH_SCALING``).

    Returns:
        A list of ``{"params", "param_names", "lr", "weight_decay"}`` dicts, one per distinct
        ``(lr, weight_decay)``, every trainable parameter exactly once.
    """
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    per_parameter = []
    heads = DECODE_HEAD_PREFIXES + tuple(head_prefixes)
    if lr_scale != 1.0:
        base_lr = base_lr * lr_scale
    backbone = getattr(model, "backbone", None)
    backbone_lrs: Dict[str, Optional[float]] = {}
    if backbone is not None and hasattr(backbone, "layer_decay_groups"):
        roles = layer_decay_lrs(backbone, base_lr, layer_decay)
        backbone_lrs = {f"backbone.{name}": lr for name, lr in roles.items()}
    elif layer_decay != 1.0:
        raise ValueError(f"SOLVER.LAYER_DECAY={layer_decay} needs a backbone with layer_decay_groups() (a ViT), "
                         f"{type(backbone).__name__} has none; use 1.0")
    named = list(model.named_parameters())
    for prefix, module in (extra_modules or {}).items():
        named += [(f"{prefix}.{name}", param) for name, param in module.named_parameters()]
    for name, param in named:
        if not param.requires_grad:
            continue
        layer_lr = backbone_lrs.get(name, base_lr)
        if name.startswith(heads) or (name in backbone_lrs and layer_lr is None):
            lr, decay = base_lr * head_lr_multiplier, weight_decay
        elif "norm" in name:
            lr, decay = layer_lr, weight_decay * norm_decay_multiplier
        else:
            lr, decay = layer_lr, weight_decay
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
        layer_decay=float(solver.LAYER_DECAY),
        lr_scale=math.sqrt(solver.IMS_PER_BATCH) if solver.LR_SQRT_BATCH_SCALING else 1.0,
    )
    if name == "SGD":
        optimizer_class = maybe_add_gradient_clipping(cfg, torch.optim.SGD)
        return optimizer_class(groups, lr=solver.BASE_LR, momentum=solver.MOMENTUM, weight_decay=solver.WEIGHT_DECAY,
                               nesterov=solver.NESTEROV)
    optimizer_class = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)
    return optimizer_class(groups, lr=solver.BASE_LR, betas=betas, weight_decay=solver.WEIGHT_DECAY, eps=1e-8)
