"""Learning-rate schedule of HRDA/DAFormer: mmcv's poly decay with linear warm-up, on Detectron2's LRMultiplier.

Source: docs/method.md §11.2. For 0-based iteration ``t`` and a param group with initial
lr ``lr0``::

    lr_reg(t) = (lr0 - min_lr) * (1 - t / max_iter) ** power + min_lr
    lr(t)     = lr_reg(t) * (1 - k),  k = (1 - t / warmup_iters) * (1 - warmup_ratio)   for t < warmup_iters
    lr(t)     = lr_reg(t)                                                              otherwise

Detectron2's ``WarmupParamScheduler`` interpolates linearly between ``warmup_factor * f(0)`` and
``f(warmup_length)`` instead (a different curve), so it is not used here.

Stepping convention: the scheduler sets the lr of iteration 0 when it is built; Detectron2's
``hooks.LRScheduler`` steps it after every iteration, so iteration ``t`` runs with ``lr(t)``.

``SOLVER.LR_SCHEDULER_NAME "WarmupLinearLR"`` is VFM-UDA's warm-up and linear decay instead (docs/method.md §21.2,
:class:`WarmupLinearParamScheduler`), stepped the same way (the originals step it after every optimizer step).
"""
from typing import List, Sequence

import numpy as np
import torch
from detectron2.solver.lr_scheduler import LRMultiplier
from fvcore.common.param_scheduler import ParamScheduler

from ..config import check_choice

__all__ = ["WarmupPolyParamScheduler", "WarmupLinearParamScheduler", "PerGroupLRMultiplier",
           "build_lr_scheduler"]



class WarmupPolyParamScheduler(ParamScheduler):
    """``lr(t) / lr0`` of the schedule above as an fvcore ``ParamScheduler`` of ``where = t / max_iter``.

    ``min_lr_ratio`` is ``min_lr / lr0`` of the group the multiplier is applied to (0 for the paper).
    """

    def __init__(
        self,
        *,
        max_iter: int,
        warmup_iters: int,
        warmup_ratio: float,
        power: float,
        min_lr_ratio: float = 0.0,
    ):
        if max_iter <= 0:
            raise ValueError(f"SOLVER.MAX_ITER must be > 0, got {max_iter}")
        if warmup_iters < 0:
            raise ValueError(f"SOLVER.WARMUP_ITERS must be >= 0, got {warmup_iters}")
        self.max_iter = int(max_iter)
        self.warmup_iters = int(warmup_iters)
        self.warmup_ratio = float(warmup_ratio)
        self.power = float(power)
        self.min_lr_ratio = float(min_lr_ratio)

    def _iteration(self, where: float) -> float:
        """``t = where * max_iter``, snapped to the integer it comes from (``where`` is ``t / max_iter``)."""
        iteration = where * self.max_iter
        nearest = round(iteration)
        return float(nearest) if abs(iteration - nearest) < 1e-6 else iteration

    def __call__(self, where: float) -> float:
        coeff = (1 - where) ** self.power
        multiplier = (1 - self.min_lr_ratio) * coeff + self.min_lr_ratio
        iteration = self._iteration(where)
        if iteration < self.warmup_iters:
            k = (1 - iteration / self.warmup_iters) * (1 - self.warmup_ratio)
            multiplier = multiplier * (1 - k)
        return multiplier


class WarmupLinearParamScheduler(ParamScheduler):
    """VFM-UDA's ``lr(t) / lr0`` (docs/method.md §21.2) as an fvcore ``ParamScheduler`` of ``where = t / max_iter``.

    A table of ``max_iter + 1`` factors: ``warmup_iters`` values evenly spaced from ``warmup_factor`` to 1 (both
    included, NumPy ``linspace``), then entries ``warmup_iters .. max_iter`` of ``linspace(1, 0, max_iter + 1)``.
    So ``lr(warmup_iters - 1) = lr0``, ``lr(warmup_iters) = lr0 * (1 - warmup_iters / max_iter)`` and
    ``lr(max_iter) = 0``; beyond ``max_iter`` the factor stays 0. A warm-up longer than ``max_iter`` (short runs of a
    full-size config) stays in the warm-up ramp, as the original's table does. Stateless: the iteration comes from
    ``where``.
    """

    def __init__(self, *, max_iter: int, warmup_iters: int, warmup_factor: float):
        if max_iter <= 0:
            raise ValueError(f"SOLVER.MAX_ITER must be > 0, got {max_iter}")
        if warmup_iters < 0:
            raise ValueError(f"SOLVER.WARMUP_ITERS must be >= 0 for WarmupLinearLR, got {warmup_iters}")
        self.max_iter = int(max_iter)
        warmup = np.linspace(float(warmup_factor), 1.0, int(warmup_iters))
        decay = np.linspace(1.0, 0.0, self.max_iter + 1)[int(warmup_iters):]
        self._factors = tuple(float(f) for f in np.concatenate((warmup, decay)))

    def __call__(self, where: float) -> float:
        iteration = int(round(where * self.max_iter))
        return self._factors[min(max(iteration, 0), self.max_iter)]


class PerGroupLRMultiplier(LRMultiplier):
    """Detectron2 ``LRMultiplier`` with one ``ParamScheduler`` per optimizer param group.

    Needed for an absolute ``min_lr > 0``: ``lr(t) / lr0`` then depends on the group's ``lr0``. With one
    multiplier for all groups it is exactly Detectron2's ``LRMultiplier``. ``state_dict`` is the parent's
    (``base_lrs``, ``last_epoch``); the schedulers are stateless.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        multipliers: Sequence[ParamScheduler],
        max_iter: int,
        last_iter: int = -1,
    ):
        if len(multipliers) != len(optimizer.param_groups):
            raise ValueError(
                f"PerGroupLRMultiplier: {len(multipliers)} schedulers for {len(optimizer.param_groups)} "
                "param groups"
            )
        self._multipliers = list(multipliers)
        super().__init__(optimizer, multiplier=self._multipliers[0], max_iter=max_iter, last_iter=last_iter)

    def get_lr(self) -> List[float]:
        where = self.last_epoch / self._max_iter
        return [base_lr * multiplier(where) for base_lr, multiplier in zip(self.base_lrs, self._multipliers)]


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> PerGroupLRMultiplier:
    """Build the poly + linear warm-up schedule (or VFM-UDA's ``"WarmupLinearLR"``) from ``cfg.SOLVER``.

    Keys: ``LR_SCHEDULER_NAME`` ("WarmupPolyLR" | "WarmupLinearLR"), ``MAX_ITER`` (40000), ``WARMUP_ITERS`` (1500),
    ``WARMUP_FACTOR`` (1e-6, mmcv's ``warmup_ratio``), ``WARMUP_METHOD`` ("linear"), ``POLY_LR_POWER`` (1.0),
    ``POLY_LR_MIN_LR`` (0.0, absolute lr, as mmcv's ``min_lr``). Each group's ``lr0`` is its ``initial_lr``
    (set from its ``lr`` when the scheduler is first built). ``"WarmupLinearLR"`` reads ``MAX_ITER``,
    ``WARMUP_ITERS`` and ``WARMUP_FACTOR`` (its start factor; the originals' 1e-3) only.
    """
    solver = cfg.SOLVER
    name = check_choice("SOLVER.LR_SCHEDULER_NAME", solver.LR_SCHEDULER_NAME)
    check_choice("SOLVER.WARMUP_METHOD", solver.WARMUP_METHOD)
    if name == "WarmupLinearLR":
        if float(solver.POLY_LR_MIN_LR) != 0.0:
            raise ValueError(f"SOLVER.POLY_LR_MIN_LR={solver.POLY_LR_MIN_LR} is read by WarmupPolyLR only; "
                             "WarmupLinearLR decays to 0 (use 0.0)")
        schedule = WarmupLinearParamScheduler(max_iter=solver.MAX_ITER, warmup_iters=solver.WARMUP_ITERS,
                                              warmup_factor=solver.WARMUP_FACTOR)
        return PerGroupLRMultiplier(optimizer, [schedule] * len(optimizer.param_groups), max_iter=solver.MAX_ITER)
    min_lr = float(solver.POLY_LR_MIN_LR)
    multipliers = []
    for index, group in enumerate(optimizer.param_groups):
        lr0 = float(group.get("initial_lr", group["lr"]))
        if min_lr > 0 and lr0 <= 0:
            raise ValueError(f"SOLVER.POLY_LR_MIN_LR={min_lr} needs a positive lr in param group {index}, got {lr0}")
        multipliers.append(
            WarmupPolyParamScheduler(
                max_iter=solver.MAX_ITER,
                warmup_iters=solver.WARMUP_ITERS,
                warmup_ratio=solver.WARMUP_FACTOR,
                power=solver.POLY_LR_POWER,
                min_lr_ratio=min_lr / lr0 if min_lr > 0 else 0.0,
            )
        )
    return PerGroupLRMultiplier(optimizer, multipliers, max_iter=solver.MAX_ITER)
