"""MinEnt: entropy minimisation on the target prediction, one iteration per ``run_step`` (docs/method.md §18.5).

1. source: the student's training forward on the labelled source batch -> ``loss_src_*``, backward;
2. target: the student's label-free training forward on the target batch, its adapted prediction
   (``HRDATrainOutputs.logits``), ``loss_ent_trg = LAMBDA * normalized_entropy(softmax(prediction))``,
   backward;
3. one optimizer step.

With MIC (``UDA.MIC.ENABLED``, docs/method.md §17.6) MIC's own EMA teacher is updated first (stage ``ema``) and the
masked pass follows step 2 (stage ``masked``, ``loss_masked_*``, :mod:`.masked_consistency`).

Random draws: the source detail crop, then the target one (NumPy), then MIC's, as in the original. Under DDP every
pass but the last runs under ``no_sync``: one gradient all-reduce per iteration.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from detectron2.config import configurable
from torch import nn

from .masked_consistency import MaskedImageConsistency, with_own_teacher
from .output_space import normalized_entropy
from .step_base import TargetLosses, UDAStepTrainer, step_config

__all__ = ["MinEntStepTrainer"]


class MinEntStepTrainer(UDAStepTrainer):
    """One MinEnt iteration (module docstring); ``lambda_ent`` = ``UDA.MINENT.LAMBDA``; ``mic``: MIC with its own EMA
    teacher (``UDA.MIC.ENABLED``) or None; the other arguments as :class:`UDAStepTrainer` (``data_loader`` yields
    ``(source_batch, target_batch)``)."""

    stage_prefix = "minent"

    @configurable
    def __init__(self, model: nn.Module, data_loader, optimizer: torch.optim.Optimizer, *, lambda_ent: float = 0.001,
                 mic: Optional[MaskedImageConsistency] = None, **step_options: Any) -> None:
        super().__init__(model, data_loader, optimizer, **step_options)
        self.mic = with_own_teacher(mic, "MinEnt")
        self.lambda_ent = float(lambda_ent)

    @classmethod
    def from_config(cls, cfg, model: nn.Module, data_loader, optimizer: torch.optim.Optimizer, *,
                    teacher: Optional[nn.Module] = None) -> Dict[str, Any]:
        return {"model": model, "data_loader": data_loader, "optimizer": optimizer, "lambda_ent": cfg.UDA.MINENT.LAMBDA,
                "mic": MaskedImageConsistency(cfg, teacher=teacher) if cfg.UDA.MIC.ENABLED else None,
                **step_config(cfg, model)}

    def pass_plan(self):
        """The student's source and target (and MIC's masked) passes."""
        return [(name, self.model) for name in ("source", "target", "masked")[:3 if self.mic is not None else 2]]

    def run_step(self) -> None:
        it = self.start_step()
        source_batch, target_batch = it.data
        if self.mic is not None:
            self.update_teacher(it, self.mic.teacher)  # MIC's teacher first (docs/method.md §17.6)
        source = self.run_pass(it, "source", lambda: self.labelled_forward(source_batch, "src_"))  # step 1
        target = self.run_pass(it, "target", lambda: self.entropy_pass(target_batch))  # step 2
        if self.mic is not None:  # MIC after the entropy pass (docs/method.md §17.6)
            self.run_pass(it, "masked", lambda: self.mic.forward(self.model, source, target.forward, self.autocast))
        self.finish_step(it)  # step 3

    def entropy_pass(self, target_batch) -> TargetLosses:
        """Step 2: the student's label-free forward on the target batch (its prediction ``outputs.logits`` at the
        model's output scale), ``loss_ent_trg = LAMBDA * normalized_entropy(softmax)``."""
        target = self.unlabelled_forward(target_batch)
        prediction = target.outputs.logits
        loss = self.lambda_ent * normalized_entropy(torch.softmax(prediction.float(), dim=1))
        return TargetLosses({"loss_ent_trg": loss}, {}, target, prediction)
