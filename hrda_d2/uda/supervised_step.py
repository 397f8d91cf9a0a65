"""Supervised training on one labelled stream, one iteration per ``run_step``: the target-only oracle
(``UDA.METHOD target_only``: the target split's labels, docs/method.md §18.8).

The training forward on the labelled batch (random detail crop with HRDA) -> ``loss_trg_*``, backward, one
optimizer step. (Source-only training, ``UDA.METHOD source_only``, is the DACS step without a teacher, whose loss
terms are the source's ``loss_src_*``.)
"""
from __future__ import annotations

from typing import Any, Dict

import torch
from detectron2.config import configurable
from torch import nn

from .step_base import UDAStepTrainer, step_config

__all__ = ["SupervisedStepTrainer"]


class SupervisedStepTrainer(UDAStepTrainer):
    """Supervised step; ``data_loader`` yields ``(labelled_batch, None)``; ``prefix`` names the stream in the loss
    terms (``"trg_"`` for target-only); the other arguments as :class:`UDAStepTrainer`."""

    stage_prefix = "supervised"

    @configurable
    def __init__(self, model: nn.Module, data_loader, optimizer: torch.optim.Optimizer, *, prefix: str = "trg_",
                 **step_options: Any) -> None:
        super().__init__(model, data_loader, optimizer, **step_options)
        self.prefix = prefix

    @classmethod
    def from_config(cls, cfg, model: nn.Module, data_loader, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
        return {"model": model, "data_loader": data_loader, "optimizer": optimizer, "prefix": "trg_",
                **step_config(cfg, model)}

    def run_step(self) -> None:
        step = self.start_step()
        batch, _ = step.data
        with self.stage("supervised"), self.gradient_sync(last=True):
            forward = self.labelled_forward(batch, self.prefix)
            self.check_finite(forward.losses)
            self.backward(sum(forward.losses.values()))
        self.after_backward()
        self.write_step_metrics(forward.losses, forward.metrics, step.data_time)
        with self.stage("optimizer"):
            if self.gradients_are_finite(forward.losses):
                self.optimizer_step()
