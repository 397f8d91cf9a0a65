"""Supervised training on one labelled stream, one iteration per ``run_step``: source-only training
(``UDA.METHOD source_only``: the source split's labels, ``loss_src_*``) and the target-only oracle
(``UDA.METHOD target_only``: the target split's labels, ``loss_trg_*``, docs/method.md §18.8).

One pass (stage ``supervised``): the training forward on the labelled batch (random detail crop with HRDA),
backward; then one optimizer step.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
from detectron2.config import configurable
from torch import nn

from ..config import uda_method
from .step_base import UDAStepTrainer, step_config

__all__ = ["SupervisedStepTrainer"]


class SupervisedStepTrainer(UDAStepTrainer):
    """Supervised step; ``data_loader`` yields ``(labelled_batch, None)``; ``prefix`` names the stream in the loss
    terms (``"src_"`` for source-only, ``"trg_"`` for target-only); the other arguments as :class:`UDAStepTrainer`."""

    stage_prefix = "supervised"

    @configurable
    def __init__(self, model: nn.Module, data_loader, optimizer: torch.optim.Optimizer, *, prefix: str = "trg_",
                 **step_options: Any) -> None:
        super().__init__(model, data_loader, optimizer, **step_options)
        self.prefix = prefix

    @classmethod
    def from_config(cls, cfg, model: nn.Module, data_loader, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
        prefix = "src_" if uda_method(cfg) == "source_only" else "trg_"
        return {"model": model, "data_loader": data_loader, "optimizer": optimizer, "prefix": prefix,
                **step_config(cfg, model)}

    def pass_plan(self):
        return [("supervised", self.model)]

    def run_step(self) -> None:
        it = self.start_step()
        batch, _ = it.data
        self.run_pass(it, "supervised", lambda: self.labelled_forward(batch, self.prefix))
        self.finish_step(it)
