"""MIC with an EMA teacher of its own, for the UDA methods that have none (AdvSeg, MinEnt; docs/method.md §17.6).

DACS shares its teacher and pseudo-labels with MIC (:class:`.masked_consistency.MaskedImageConsistency` inside
:class:`.dacs_step.DACSStepTrainer`). AdvSeg and MinEnt have no teacher, so MIC brings one, as the original's
``MaskingConsistencyModule(require_teacher=True)`` does for them:

* at the START of the iteration the teacher is EMA-updated from the student (iteration 0: a copy), with
  ``UDA.ALPHA`` (the original's ``mask_alpha='same'`` -> ``alpha`` 0.999 of the AdvSeg / MinEnt configs);
* after the method's own passes (AdvSeg: after the generator's target pass, before the discriminator; MinEnt:
  after the entropy pass) the teacher predicts pseudo-labels on the target batch (pseudo-label mode,
  ``UDA.PSEUDO_THRESHOLD``, ``UDA.PSEUDO_WEIGHT_IGNORE_TOP/BOTTOM``, the target mapper's margin mask), the
  masked batch of ``UDA.MIC.MODE`` is formed, colour-augmented and block-masked, and the student's training
  forward on it gives ``loss_masked_*``, backpropagated before the optimizer step.

Random draws are those of the DACS step's MIC (Python ``random`` for the augmentation decisions, torch for the
jitter factors and the block mask, NumPy for the blur sigma and the detail crop); the teacher draws nothing.
The teacher is the trainer's ``teacher`` checkpointable, so ``--resume`` continues it exactly.
"""
from __future__ import annotations

from typing import Any, Callable, ContextManager, Dict, Optional

import torch
from detectron2.config import configurable
from torch import nn

from .ema import ema_update_
from .masked_consistency import MaskedBatch, MaskedImageConsistency
from .pseudo_labels import PseudoLabels, predict_pseudo_labels
from .step_base import LabelledForward, StudentLosses, UDAStepTrainer, UnlabelledForward

__all__ = ["MaskedConsistencyStepTrainer", "MaskedConsistencyWithTeacher", "masked_consistency_with_teacher"]


class MaskedConsistencyWithTeacher:
    """MIC's loss with its own EMA teacher (module docstring): :meth:`update_teacher` first in the iteration,
    :meth:`losses` after the method's passes.

    Args:
        teacher: the EMA teacher, the student's architecture; its parameters get ``requires_grad=False``.
        consistency: the masked image consistency (mode, mask ratio, block size, lambda, augmentation).
        alpha: ``UDA.ALPHA``. pseudo_threshold: ``UDA.PSEUDO_THRESHOLD``.
        pseudo_ignore_top, pseudo_ignore_bottom: ``UDA.PSEUDO_WEIGHT_IGNORE_TOP/BOTTOM``.
    """

    @configurable
    def __init__(self, *, teacher: nn.Module, consistency: MaskedImageConsistency, alpha: float = 0.999,
                 pseudo_threshold: float = 0.968, pseudo_ignore_top: int = 0, pseudo_ignore_bottom: int = 0) -> None:
        self.teacher = teacher.requires_grad_(False)
        self.consistency = consistency
        self.alpha = float(alpha)
        self.pseudo_threshold = float(pseudo_threshold)
        self.pseudo_ignore_top = int(pseudo_ignore_top)
        self.pseudo_ignore_bottom = int(pseudo_ignore_bottom)

    @classmethod
    def from_config(cls, cfg, teacher: nn.Module) -> Dict[str, Any]:
        return {"teacher": teacher, "consistency": MaskedImageConsistency(cfg), "alpha": cfg.UDA.ALPHA,
                "pseudo_threshold": cfg.UDA.PSEUDO_THRESHOLD,
                "pseudo_ignore_top": cfg.UDA.PSEUDO_WEIGHT_IGNORE_TOP,
                "pseudo_ignore_bottom": cfg.UDA.PSEUDO_WEIGHT_IGNORE_BOTTOM}

    def update_teacher(self, student: nn.Module, iteration: int) -> float:
        """The EMA update of the teacher at the start of 0-based ``iteration``; returns ``alpha_t``."""
        return ema_update_(self.teacher, student, iteration, self.alpha)

    def pseudo_labels(self, target: UnlabelledForward, autocast: Callable[[], ContextManager]) -> PseudoLabels:
        """The teacher's pseudo-labels on the images of the step's target forward, under ``autocast()``."""
        return predict_pseudo_labels(self.teacher, target.images, self.pseudo_threshold, self.pseudo_ignore_top,
                                     self.pseudo_ignore_bottom, target.valid_mask, autocast())

    def masked_batch(self, source: LabelledForward, pseudo: PseudoLabels) -> MaskedBatch:
        """The augmented, block-masked batch of ``UDA.MIC.MODE`` from the step's source forward and ``pseudo``."""
        return self.consistency.masked_batch(source.images, source.labels, pseudo.target_images, pseudo.label,
                                             pseudo.weight)

    def losses(self, model: nn.Module, source: LabelledForward, target: UnlabelledForward,
               autocast: Callable[[], ContextManager]) -> StudentLosses:
        """Pseudo-labels on the target forward's images, masked batch, then the student's training forward on it
        (through ``model``, the possibly DDP-wrapped student, so the wrapper sees it) under ``autocast()`` ->
        ``loss_masked_*`` with their graph, ``masked_*`` accuracies and ``masked_pseudo_confident_fraction``. The
        caller runs the backward."""
        pseudo = self.pseudo_labels(target, autocast)
        batch = self.masked_batch(source, pseudo)
        with autocast():
            losses, metrics = self.consistency.losses(model, batch)
        metrics["masked_pseudo_confident_fraction"] = pseudo.confident_fraction
        return StudentLosses(losses, metrics)



def masked_consistency_with_teacher(cfg, teacher: Optional[nn.Module]) -> Optional[MaskedConsistencyWithTeacher]:
    """MIC with ``teacher`` for the AdvSeg / MinEnt step of ``cfg`` when ``UDA.MIC.ENABLED``, else None."""
    if not cfg.UDA.MIC.ENABLED:
        return None
    if teacher is None:
        raise ValueError(f"UDA.MIC.ENABLED with UDA.METHOD {cfg.UDA.METHOD!r} needs MIC's EMA teacher: build the "
                         f"step with teacher=... (HRDATrainer does when hrda_d2.uda.uses_teacher(cfg))")
    return MaskedConsistencyWithTeacher(cfg, teacher=teacher)


class MaskedConsistencyStepTrainer(UDAStepTrainer):
    """A UDA step without a teacher of its own that MIC may extend with one (the base of AdvSeg and MinEnt).

    Args:
        mic: MIC with its teacher (``UDA.MIC.ENABLED``), or None; the other arguments as :class:`UDAStepTrainer`.
    """

    def __init__(self, model: nn.Module, data_loader, optimizer: torch.optim.Optimizer, *,
                 mic: Optional[MaskedConsistencyWithTeacher] = None, **step_options: Any) -> None:
        super().__init__(model, data_loader, optimizer, **step_options)
        self.mic = mic

    def update_mic_teacher(self, scalars: Dict[str, Any]) -> None:
        """With MIC: stage ``ema``, the teacher's EMA update (first in the iteration); ``ema_alpha`` into
        ``scalars``. Without MIC: nothing."""
        if self.mic is not None:
            with self.stage("ema"):
                scalars["ema_alpha"] = self.mic.update_teacher(self.student, self.iter)

    def masked_consistency_pass(self, source: LabelledForward, target: UnlabelledForward) -> StudentLosses:
        """Stage ``masked``: MIC's forward AND backward, the last pass of the student in the iteration (its backward
        all-reduces under DDP); returns the terms (``loss_masked_*``) and metrics."""
        with self.stage("masked"), self.gradient_sync(last=True):
            masked = self.mic.losses(self.model, source, target, self.autocast)
            self.check_finite(masked.losses)
            self.backward(sum(masked.losses.values()))
        return masked
