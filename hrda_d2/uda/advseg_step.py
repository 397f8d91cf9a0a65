"""AdvSeg: output-space adversarial adaptation, one iteration per ``run_step`` (docs/method.md §18.4).

The iteration, in the original's order (``AdvSeg.train_step`` / ``forward_train``):

1. zero the gradients (the main optimizer's, which cover the discriminator too, and the discriminator
   optimizer's); the discriminator's Adam gets ``lr = (LR - LR_MIN) * (1 - t / MAX_ITER)^LR_POWER + LR_MIN``;
2. source: the student's training forward on the labelled source batch -> ``loss_src_*``, backward;
3. target: the student's label-free training forward on the target batch; the adapted predictions of both batches
   (``HRDATrainOutputs.logits``: the prediction at the model's output scale); generator loss
   ``loss_adv_trg = LAMBDA_ADV * GAN(D(softmax(target prediction)), source label 0)`` with the discriminator's
   parameters frozen, backward (into the student only);
4. discriminator: ``loss_disc_src = GAN(D(softmax(source prediction).detach()), 0) / 2``, backward;
   ``loss_disc_trg = GAN(D(softmax(target prediction).detach()), 1) / 2``, backward;
   both terms form one pass with one backward (the gradients add up as with two backwards);
5. the main optimizer's step (student AND discriminator: the original builds its optimizer over the whole AdvSeg
   module, so SGD with its schedule, momentum and weight decay also moves the discriminator, §18.4), then the
   discriminator's Adam step; with float16 both go through one grad-scaler decision (all or none).

With MIC (``UDA.MIC.ENABLED``, docs/method.md §17.6): MIC's own EMA teacher is updated after step 1 (stage
``ema``), and the masked pass (stage ``masked``, ``loss_masked_*``, :mod:`.masked_consistency`) follows the
generator's target pass, before the discriminator, as in the original.

Random draws: the source detail crop, then the target detail crop (NumPy), then MIC's, as in the original.

DDP: the student and the discriminator are each ``DistributedDataParallel``; the student's passes before its last
(source, and target when MIC follows) run under ``no_sync`` (:meth:`~.step_base.UDAStepTrainer.run_pass`). The
generator loss uses the discriminator module itself (its parameters frozen, no DDP bookkeeping); in the
discriminator pass the source term goes through the module and the target term through the DDP wrapper, whose one
backward all-reduces the sum of both terms' gradients: one gradient all-reduce per model and iteration.

Checkpoints: the discriminator is the trainer's ``discriminator`` checkpointable (like the teacher); its Adam state
is part of this step's state (``discriminator_optimizer``), so ``--resume`` continues exactly.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from detectron2.config import configurable
from torch import nn

from .masked_consistency import MaskedImageConsistency, with_own_teacher
from .output_space import SOURCE_DOMAIN_LABEL, TARGET_DOMAIN_LABEL, gan_loss
from .step_base import StudentLosses, TargetLosses, UDAStepTrainer, step_config, unwrap_model

__all__ = ["AdvSegStepTrainer", "build_discriminator_optimizer", "discriminator_lr"]


def discriminator_lr(iteration: int, max_iter: int, base_lr: float, power: float, min_lr: float) -> float:
    """The discriminator's poly learning rate at 0-based ``iteration`` (no warm-up)."""
    return (base_lr - min_lr) * (1 - iteration / max_iter) ** power + min_lr


class AdvSegStepTrainer(UDAStepTrainer):
    """One AdvSeg iteration (module docstring) on :class:`UDAStepTrainer`.

    Args:
        model, data_loader, optimizer, max_iter, step_options: as :class:`UDAStepTrainer`; ``data_loader`` yields
            ``(source_batch, target_batch)``; ``optimizer`` covers the student and the discriminator; ``max_iter``
            also ends the discriminator's poly schedule.
        mic: MIC with its own EMA teacher (``UDA.MIC.ENABLED``), or None.
        discriminator: the :class:`~.discriminator.FCDiscriminator`, possibly wrapped in DDP.
        discriminator_optimizer: its Adam (one param group).
        lambda_adv: ``UDA.ADVSEG.LAMBDA_ADV``. gan_loss_kind: ``UDA.ADVSEG.GAN_LOSS``.
        discriminator_lr, discriminator_lr_power, discriminator_lr_min: ``UDA.ADVSEG.LR / LR_POWER / LR_MIN``.
    """

    stage_prefix = "advseg"

    @configurable
    def __init__(
        self,
        model: nn.Module,
        data_loader,
        optimizer: torch.optim.Optimizer,
        *,
        discriminator: nn.Module,
        discriminator_optimizer: torch.optim.Optimizer,
        lambda_adv: float = 0.001,
        gan_loss_kind: str = "LS",
        discriminator_lr: float = 1e-4,
        discriminator_lr_power: float = 0.9,
        discriminator_lr_min: float = 0.0,
        max_iter: int = 40000,
        mic: Optional[MaskedImageConsistency] = None,
        **step_options: Any,
    ) -> None:
        super().__init__(model, data_loader, optimizer, max_iter=max_iter, **step_options)
        if len(discriminator_optimizer.param_groups) != 1:
            raise ValueError("AdvSegStepTrainer: the discriminator optimizer must have one param group")
        self.mic = with_own_teacher(mic, "AdvSeg")
        self.discriminator = discriminator
        self.discriminator_optimizer = discriminator_optimizer
        self.lambda_adv = float(lambda_adv)
        self.gan_loss_kind = str(gan_loss_kind).upper()
        self.discriminator_lr = float(discriminator_lr)
        self.discriminator_lr_power = float(discriminator_lr_power)
        self.discriminator_lr_min = float(discriminator_lr_min)

    @classmethod
    def from_config(cls, cfg, model: nn.Module, data_loader, optimizer: torch.optim.Optimizer, *,
                    discriminator: nn.Module, discriminator_optimizer: torch.optim.Optimizer,
                    teacher: Optional[nn.Module] = None) -> Dict[str, Any]:
        adv = cfg.UDA.ADVSEG
        return {
            "model": model, "data_loader": data_loader, "optimizer": optimizer, "discriminator": discriminator,
            "discriminator_optimizer": discriminator_optimizer, "lambda_adv": adv.LAMBDA_ADV,
            "gan_loss_kind": adv.GAN_LOSS, "discriminator_lr": adv.LR, "discriminator_lr_power": adv.LR_POWER,
            "discriminator_lr_min": adv.LR_MIN,
            "mic": MaskedImageConsistency(cfg, teacher=teacher) if cfg.UDA.MIC.ENABLED else None,
            **step_config(cfg, model),
        }

    # ------------------------------------------------------------------------------------------------------
    @property
    def discriminator_module(self) -> nn.Module:
        """The discriminator without its DDP wrapper."""
        return unwrap_model(self.discriminator)

    def pass_plan(self):
        """The student's source and target (and MIC's masked) passes, then the discriminator's one pass."""
        student = ("source", "target", "masked")[:3 if self.mic is not None else 2]
        return [(name, self.model) for name in student] + [("discriminator", self.discriminator)]

    def run_step(self) -> None:
        it = self.start_step()  # step 1: every optimizer's gradients zeroed
        source_batch, target_batch = it.data
        self.discriminator_optimizer.param_groups[0]["lr"] = discriminator_lr(  # step 1
            self.iter, self.max_iter, self.discriminator_lr, self.discriminator_lr_power, self.discriminator_lr_min)
        if self.mic is not None:
            self.update_teacher(it, self.mic.teacher)  # MIC's teacher first (docs/method.md §17.6)
        source = self.run_pass(it, "source", lambda: self.labelled_forward(source_batch, "src_"))  # step 2
        source_prediction = source.outputs.logits
        target = self.run_pass(it, "target", lambda: self.generator_pass(target_batch))  # step 3
        if self.mic is not None:  # MIC after the generator's target pass (docs/method.md §17.6)
            self.run_pass(it, "masked", lambda: self.mic.forward(self.model, source, target.forward, self.autocast))
        self.run_pass(it, "discriminator", lambda: self.discriminator_pass(source_prediction, target.prediction))
        self.finish_step(it)  # step 5

    @property
    def optimizers(self):
        return (self.optimizer, self.discriminator_optimizer)

    def named_trainable_parameters(self):
        yield from super().named_trainable_parameters()
        yield from (("discriminator." + n, p) for n, p in self.discriminator_module.named_parameters())

    # ------------------------------------------------------------------------------------------------------
    def generator_pass(self, target_batch) -> TargetLosses:
        """Step 3: the student's label-free forward on the target batch (its prediction ``outputs.logits`` at the
        model's output scale), ``loss_adv_trg = LAMBDA_ADV * GAN(D(softmax(prediction)),
        source label)`` through the discriminator module with its parameters frozen."""
        target = self.unlabelled_forward(target_batch)
        prediction = target.outputs.logits
        module = self.discriminator_module
        module.requires_grad_(False)
        try:
            d_out = module(torch.softmax(prediction.float(), dim=1))
        finally:
            module.requires_grad_(True)
        loss = self.lambda_adv * gan_loss(d_out.float(), SOURCE_DOMAIN_LABEL, self.gan_loss_kind)
        return TargetLosses({"loss_adv_trg": loss}, {}, target, prediction)

    def discriminator_pass(self, source_prediction: torch.Tensor, target_prediction: torch.Tensor) -> StudentLosses:
        """Step 4: ``loss_disc_<domain> = GAN(D(softmax(prediction).detach()), domain label) / 2`` for the source
        (through the discriminator module) and the target (through its possibly DDP-wrapped ``__call__``, so that
        the pass's backward all-reduces the gradients of both)."""
        losses = {}
        for name, discriminator, prediction, label in (
                ("loss_disc_src", self.discriminator_module, source_prediction, SOURCE_DOMAIN_LABEL),
                ("loss_disc_trg", self.discriminator, target_prediction, TARGET_DOMAIN_LABEL)):
            d_out = discriminator(torch.softmax(prediction.detach().float(), dim=1))
            losses[name] = gan_loss(d_out.float(), label, self.gan_loss_kind) / 2
        return StudentLosses(losses, {})

    # ------------------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        ret = super().state_dict()
        ret["discriminator_optimizer"] = self.discriminator_optimizer.state_dict()
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "discriminator_optimizer" in state_dict:
            self.discriminator_optimizer.load_state_dict(state_dict["discriminator_optimizer"])


def build_discriminator_optimizer(cfg, discriminator: nn.Module) -> torch.optim.Optimizer:
    """The discriminator's Adam (``UDA.ADVSEG.LR``, ``BETAS``; eps 1e-8, no weight decay), one param group."""
    return torch.optim.Adam(discriminator.parameters(), lr=cfg.UDA.ADVSEG.LR, betas=tuple(cfg.UDA.ADVSEG.BETAS))


