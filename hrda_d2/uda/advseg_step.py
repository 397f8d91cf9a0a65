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
5. the main optimizer's step (student AND discriminator: the original builds its optimizer over the whole AdvSeg
   module, so SGD with its schedule, momentum and weight decay also moves the discriminator, §18.4), then the
   discriminator's Adam step.

With MIC (``UDA.MIC.ENABLED``, docs/method.md §17.6): MIC's own EMA teacher is updated after step 1 (stage
``ema``), and the masked pass (stage ``masked``, ``loss_masked_*``, :mod:`.masked_consistency_teacher`) follows the
generator's target pass, before the discriminator, as in the original.

Random draws: the source detail crop, then the target detail crop (NumPy), then MIC's, as in the original.

DDP: the student and the discriminator are each ``DistributedDataParallel``; the student's source pass runs under
``no_sync`` and its target pass all-reduces (with MIC: also under ``no_sync``, the masked pass all-reduces); the generator loss uses the discriminator module itself (its
parameters frozen, no DDP bookkeeping), the source discriminator pass runs under the discriminator's ``no_sync``,
the target one all-reduces: one gradient all-reduce per model and iteration.

Checkpoints: the discriminator is the trainer's ``discriminator`` checkpointable (like the teacher); its Adam state
is part of this step's state (``discriminator_optimizer``), so ``--resume`` continues exactly.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional

import torch
from detectron2.config import configurable
from torch import nn

from .masked_consistency_teacher import (
    MaskedConsistencyStepTrainer,
    MaskedConsistencyWithTeacher,
    masked_consistency_with_teacher,
)
from .output_space import SOURCE_DOMAIN_LABEL, TARGET_DOMAIN_LABEL, gan_loss
from .step_base import step_config, synchronised_unless, unwrap_model

__all__ = ["AdvSegStepTrainer", "build_discriminator_optimizer", "discriminator_lr"]


def discriminator_lr(iteration: int, max_iter: int, base_lr: float, power: float, min_lr: float) -> float:
    """The discriminator's poly learning rate at 0-based ``iteration`` (no warm-up)."""
    return (base_lr - min_lr) * (1 - iteration / max_iter) ** power + min_lr


class AdvSegStepTrainer(MaskedConsistencyStepTrainer):
    """One AdvSeg iteration (module docstring) on :class:`UDAStepTrainer`.

    Args:
        model, data_loader, optimizer, max_iter, step_options: as :class:`UDAStepTrainer`; ``data_loader`` yields
            ``(source_batch, target_batch)``; ``optimizer`` covers the student and the discriminator; ``max_iter``
            also ends the discriminator's poly schedule.
        mic: MIC with its own teacher (``UDA.MIC.ENABLED``), or None.
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
        mic: Optional[MaskedConsistencyWithTeacher] = None,
        **step_options: Any,
    ) -> None:
        super().__init__(model, data_loader, optimizer, mic=mic, max_iter=max_iter, **step_options)
        if len(discriminator_optimizer.param_groups) != 1:
            raise ValueError("AdvSegStepTrainer: the discriminator optimizer must have one param group")
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
            "discriminator_lr_min": adv.LR_MIN, "mic": masked_consistency_with_teacher(cfg, teacher),
            **step_config(cfg, model),
        }

    # ------------------------------------------------------------------------------------------------------
    @property
    def discriminator_module(self) -> nn.Module:
        """The discriminator without its DDP wrapper."""
        return unwrap_model(self.discriminator)

    @contextmanager
    def discriminator_sync(self, last: bool) -> Iterator[None]:
        """:meth:`gradient_sync` for the discriminator's DDP wrapper (no-op without DDP)."""
        with synchronised_unless(self.discriminator, last):
            yield

    def run_step(self) -> None:
        step = self.start_step()
        source_batch, target_batch = step.data
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        self.discriminator_optimizer.param_groups[0]["lr"] = discriminator_lr(  # step 1
            self.iter, self.max_iter, self.discriminator_lr, self.discriminator_lr_power, self.discriminator_lr_min)
        scalars: Dict[str, Any] = {}
        self.update_mic_teacher(scalars)  # MIC's teacher first (docs/method.md §17.6)

        with self.stage("source"), self.gradient_sync(last=False):
            source = self.labelled_forward(source_batch, "src_")  # step 2
            self.check_finite(source.losses)
            self.backward(sum(source.losses.values()))
        losses = dict(source.losses)
        scalars.update(source.metrics)
        source_prediction = source.outputs.logits

        with self.stage("target"), self.gradient_sync(last=self.mic is None):
            target = self.unlabelled_forward(target_batch)  # step 3
            target_prediction = target.outputs.logits
            adversarial = {"loss_adv_trg": self.generator_loss(target_prediction)}
            self.check_finite(adversarial)
            self.backward(adversarial["loss_adv_trg"])
        losses.update(adversarial)

        if self.mic is not None:  # MIC after the generator's target pass (docs/method.md §17.6)
            masked = self.masked_consistency_pass(source, target)  # forward + backward
            losses.update(masked.losses)
            scalars.update(masked.metrics)

        with self.stage("discriminator"):  # step 4
            with self.discriminator_sync(last=False):
                disc = {"loss_disc_src": self.discriminator_loss(source_prediction, SOURCE_DOMAIN_LABEL)}
                self.check_finite(disc)
                self.backward(disc["loss_disc_src"])
            with self.discriminator_sync(last=True):
                disc["loss_disc_trg"] = self.discriminator_loss(target_prediction, TARGET_DOMAIN_LABEL)
                self.check_finite({"loss_disc_trg": disc["loss_disc_trg"]})
                self.backward(disc["loss_disc_trg"])
        losses.update({k: v.detach() for k, v in disc.items()})

        self.after_backward()
        self.write_step_metrics(losses, scalars, step.data_time)
        with self.stage("optimizer"):  # step 5
            if self.gradients_are_finite(losses):
                self.optimizer_step()
                self.discriminator_optimizer.step()

    @property
    def optimizers(self):
        return (self.optimizer, self.discriminator_optimizer)

    def named_trainable_parameters(self):
        yield from super().named_trainable_parameters()
        yield from (("discriminator." + n, p) for n, p in self.discriminator_module.named_parameters())

    # ------------------------------------------------------------------------------------------------------
    def generator_loss(self, target_prediction: torch.Tensor) -> torch.Tensor:
        """``LAMBDA_ADV * GAN(D(softmax(target prediction)), source label)`` through the frozen discriminator."""
        module = self.discriminator_module
        module.requires_grad_(False)
        try:
            d_out = module(torch.softmax(target_prediction.float(), dim=1))
        finally:
            module.requires_grad_(True)
        return self.lambda_adv * gan_loss(d_out.float(), SOURCE_DOMAIN_LABEL, self.gan_loss_kind)

    def discriminator_loss(self, prediction: torch.Tensor, domain_label: float) -> torch.Tensor:
        """``GAN(D(softmax(prediction).detach()), domain label) / 2`` (the discriminator's term for one domain)."""
        d_out = self.discriminator(torch.softmax(prediction.detach().float(), dim=1))
        return gan_loss(d_out.float(), domain_label, self.gan_loss_kind) / 2

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

