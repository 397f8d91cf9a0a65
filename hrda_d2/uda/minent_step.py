"""MinEnt: entropy minimisation on the target prediction, one iteration per ``run_step`` (docs/method.md §18.5).

1. source: the student's training forward on the labelled source batch -> ``loss_src_*``, backward;
2. target: the student's label-free training forward on the target batch, its adapted prediction
   (``HRDATrainOutputs.logits``), ``loss_ent_trg = LAMBDA * normalized_entropy(softmax(prediction))``,
   backward;
3. one optimizer step.

With MIC (``UDA.MIC.ENABLED``, docs/method.md §17.6) MIC's own EMA teacher is updated first (stage ``ema``) and the
masked pass follows step 2 (stage ``masked``, ``loss_masked_*``, :mod:`.masked_consistency_teacher`).

Random draws: the source detail crop, then the target one (NumPy), then MIC's, as in the original. Under DDP every
pass but the last runs under ``no_sync``: one gradient all-reduce per iteration.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from detectron2.config import configurable
from torch import nn

from .masked_consistency_teacher import (
    MaskedConsistencyStepTrainer,
    MaskedConsistencyWithTeacher,
    masked_consistency_with_teacher,
)
from .output_space import normalized_entropy
from .step_base import step_config

__all__ = ["MinEntStepTrainer"]


class MinEntStepTrainer(MaskedConsistencyStepTrainer):
    """One MinEnt iteration (module docstring); ``lambda_ent`` = ``UDA.MINENT.LAMBDA``; ``mic``: MIC with its teacher
    (``UDA.MIC.ENABLED``) or None; the other arguments as :class:`UDAStepTrainer` (``data_loader`` yields
    ``(source_batch, target_batch)``)."""

    stage_prefix = "minent"

    @configurable
    def __init__(self, model: nn.Module, data_loader, optimizer: torch.optim.Optimizer, *, lambda_ent: float = 0.001,
                 mic: Optional[MaskedConsistencyWithTeacher] = None, **step_options: Any) -> None:
        super().__init__(model, data_loader, optimizer, mic=mic, **step_options)
        self.lambda_ent = float(lambda_ent)

    @classmethod
    def from_config(cls, cfg, model: nn.Module, data_loader, optimizer: torch.optim.Optimizer, *,
                    teacher: Optional[nn.Module] = None) -> Dict[str, Any]:
        return {"model": model, "data_loader": data_loader, "optimizer": optimizer, "lambda_ent": cfg.UDA.MINENT.LAMBDA,
                "mic": masked_consistency_with_teacher(cfg, teacher), **step_config(cfg, model)}

    def run_step(self) -> None:
        step = self.start_step()
        source_batch, target_batch = step.data
        scalars: Dict[str, Any] = {}
        self.update_mic_teacher(scalars)  # MIC's teacher first (docs/method.md §17.6)
        with self.stage("source"), self.gradient_sync(last=False):
            source = self.labelled_forward(source_batch, "src_")  # step 1
            self.check_finite(source.losses)
            self.backward(sum(source.losses.values()))
        losses = dict(source.losses)
        scalars.update(source.metrics)
        with self.stage("target"), self.gradient_sync(last=self.mic is None):
            target = self.unlabelled_forward(target_batch)  # step 2
            prediction = target.outputs.logits
            entropy = {"loss_ent_trg": self.lambda_ent * normalized_entropy(torch.softmax(prediction.float(), dim=1))}
            self.check_finite(entropy)
            self.backward(entropy["loss_ent_trg"])
        losses.update(entropy)
        if self.mic is not None:  # MIC after the entropy pass (docs/method.md §17.6)
            masked = self.masked_consistency_pass(source, target)  # forward + backward
            losses.update(masked.losses)
            scalars.update(masked.metrics)
        self.after_backward()
        self.write_step_metrics(losses, scalars, step.data_time)
        with self.stage("optimizer"):  # step 3
            if self.gradients_are_finite(losses):
                self.optimizer_step()
