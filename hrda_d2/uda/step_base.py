"""``UDAStepTrainer``: what every domain-adaptation step shares (a Detectron2 ``SimpleTrainer``).

A UDA method is a subclass whose ``run_step`` is one iteration of the method, written as a flat list of calls
(DACS: :class:`hrda_d2.uda.dacs_step.DACSStepTrainer`, docs/method.md §7.2). The base provides the machinery
around those calls, each a public method the subclass calls explicitly:

* :meth:`start_step`: the next batch with its data time, the RNG streams of a resumed run, zeroed gradients,
  the decision whether this iteration reads metrics on the host (:attr:`is_metrics_step`);
* :meth:`stage`: a named stage of the iteration, inside ``torch.profiler.record_function("<prefix>/<name>")``,
  reported to an optional :class:`StageListener` (a benchmark's stage timer, a test's recorder);
* :meth:`autocast` (``SOLVER.AMP``), :meth:`check_finite` (a named error for a non-finite loss term),
  :meth:`backward` (through the float16 grad scaler), :meth:`gradient_sync` (one DDP gradient all-reduce per
  iteration: the earlier forward/backward passes run under ``no_sync``), :meth:`optimizer_step`,
  :meth:`write_step_metrics` (losses + scalars, on metrics steps only);
* the checkpointed state: optimizer (``SimpleTrainer``), every rank's RNG streams, the grad scaler.

Gradients of all backward passes of an iteration add up and one optimizer step follows (docs/method.md §7.2,
the frame), so under DDP only the LAST backward of the iteration needs to all-reduce: the gradients accumulated
locally under ``no_sync`` are all-reduced together with it. The result is the mean over ranks of the summed
gradients, which equals the sum over passes of the per-pass means up to float rounding.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Mapping, Optional, Protocol, Sequence, Tuple

import torch
from detectron2.engine import SimpleTrainer
from detectron2.utils.events import get_event_storage
from torch import nn

from ..utils.rng import gather_rng_states, rank_rng_states, set_rng_states

logger = logging.getLogger(__name__)

__all__ = ["LabelledForward", "StageListener", "StepInput", "StudentLosses", "UDAStepTrainer",
           "UnlabelledForward", "amp_dtype_from_config",
           "prefixed_losses", "stack_field", "stack_images", "step_config", "synchronised_unless", "unwrap_model"]


class StageListener(Protocol):
    """Told about the named stages of a step (:meth:`UDAStepTrainer.stage`), in order; a stage that raises is
    started but not finished."""

    def stage_started(self, name: str) -> None: ...

    def stage_finished(self, name: str) -> None: ...


@dataclass
class StudentLosses:
    """One student training forward: ``losses`` (prefixed loss terms, 0-dim tensors with their graph) and
    ``metrics`` (prefixed pixel accuracies, detached 0-dim tensors)."""

    losses: Dict[str, torch.Tensor]
    metrics: Dict[str, torch.Tensor]


@dataclass
class LabelledForward:
    """The student's training forward on a labelled batch (:meth:`UDAStepTrainer.labelled_forward`).

    losses: prefixed loss terms (``loss_<prefix>sem_seg`` ...), 0-dim with their graph; metrics: prefixed pixel
    accuracies (``<prefix>acc_sem_seg`` ...); images: ``N x 3 x H x W`` normalised; labels: ``N x H x W`` int64;
    outputs: the model's ``HRDATrainOutputs`` (features, crop box, the prediction ``logits``).
    """

    losses: Dict[str, torch.Tensor]
    metrics: Dict[str, torch.Tensor]
    images: torch.Tensor
    labels: torch.Tensor
    outputs: Any


@dataclass
class UnlabelledForward:
    """The student's label-free training forward on a target batch (:meth:`UDAStepTrainer.unlabelled_forward`).

    images: ``N x 3 x H x W`` normalised; valid_mask: ``N x H x W`` pseudo-label margin mask of the mapper, or None;
    outputs: the model's ``HRDATrainOutputs`` (``logits`` = the prediction).
    """

    images: torch.Tensor
    valid_mask: Optional[torch.Tensor]
    outputs: Any


@dataclass
class StepInput:
    """The loader's item for this iteration and the seconds spent waiting for it."""

    data: Any
    data_time: float


def stack_images(batch: Sequence[Mapping[str, Any]], device: torch.device) -> torch.Tensor:
    """``N x 3 x H x W`` float images in 0..255 from the mapper dicts."""
    return torch.stack([d["image"] for d in batch]).to(device=device, dtype=torch.float32, non_blocking=True)


def stack_field(batch: Sequence[Mapping[str, Any]], key: str, device: torch.device) -> torch.Tensor:
    """``N x ...`` stack of the mapper dicts' field ``key`` (labels ``sem_seg``, ``valid_pseudo_mask``)."""
    return torch.stack([d[key] for d in batch]).to(device=device, non_blocking=True)


def prefixed_losses(terms: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """``{"loss_sem_seg": x}`` with prefix ``"mix_"`` -> ``{"loss_mix_sem_seg": x}``."""
    return {f"loss_{prefix}{k[len('loss_'):]}": v for k, v in terms.items()}


@contextmanager
def synchronised_unless(model: nn.Module, last: bool) -> Iterator[None]:
    """``model.no_sync()`` (a DDP wrapper's) unless ``last``; nothing for a model without ``no_sync``."""
    no_sync = getattr(model, "no_sync", None)
    if last or no_sync is None:
        yield
    else:
        with no_sync():
            yield


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (the module itself otherwise)."""
    return model.module if hasattr(model, "module") else model


class UDAStepTrainer(SimpleTrainer):
    """``SimpleTrainer`` with the shared machinery of a UDA iteration; subclasses implement ``run_step``.

    Args:
        model: the student, possibly wrapped in ``DistributedDataParallel``; called with keyword arguments.
        data_loader: iterable of the method's items (DACS: ``(source_batch, target_batch)`` pairs).
        optimizer: optimizer over the student's parameters.
        amp_dtype: None (float32) or ``torch.bfloat16`` / ``torch.float16`` for :meth:`autocast`.
        grad_scaler: ``torch.amp.GradScaler`` for float16, else None.
        metrics_period: losses / metrics are read, checked for finiteness and written every this many
            iterations (1 = every iteration), at iteration ``max_iter - 1`` when ``max_iter`` is given and at every
            ``checkpoint_period``-th iteration (``SOLVER.CHECKPOINT_PERIOD``; 0 = no checkpoints).
        stage_listener: a :class:`StageListener`, or None (nothing is called).
        check_gradients: on metrics steps (which include every checkpoint iteration and the last one), check the
            gradients before the optimizer step (:meth:`gradients_are_finite`; ``SOLVER.CHECK_FINITE_GRADIENTS``).
        skip_nonfinite_steps: how many steps with non-finite gradients may be skipped (gradients zeroed, a
            warning) instead of stopping training (``SOLVER.SKIP_NONFINITE_STEPS``; 0 = stop at the first).
    """

    stage_prefix = "uda"  # record_function names: "<stage_prefix>/<stage name>"

    def __init__(
        self,
        model: nn.Module,
        data_loader,
        optimizer: torch.optim.Optimizer,
        *,
        amp_dtype: Optional[torch.dtype] = None,
        grad_scaler: Optional[torch.amp.GradScaler] = None,
        metrics_period: int = 1,
        max_iter: Optional[int] = None,
        checkpoint_period: int = 0,
        stage_listener: Optional[StageListener] = None,
        check_gradients: bool = True,
        skip_nonfinite_steps: int = 0,
    ) -> None:
        super().__init__(model, data_loader, optimizer)
        self.check_gradients = bool(check_gradients)
        self.skip_nonfinite_steps = int(skip_nonfinite_steps)
        self.skipped_steps = 0  # non-finite steps skipped so far (SOLVER.SKIP_NONFINITE_STEPS); checkpointed
        self.amp_dtype = amp_dtype
        self.grad_scaler = grad_scaler
        self.metrics_period = max(int(metrics_period), 1)
        self.max_iter = max_iter
        self.checkpoint_period = int(checkpoint_period)
        self.stage_listener = stage_listener
        self._metrics_step = True
        self._pending_rng_states: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------------------------------------------
    @property
    def student(self) -> nn.Module:
        """The student without its DDP wrapper."""
        return unwrap_model(self.model)

    @property
    def is_metrics_step(self) -> bool:
        """Whether this iteration reads its losses / metrics on the host (decided by :meth:`start_step`)."""
        return self._metrics_step

    def _decide_metrics_step(self) -> bool:
        """Metrics period, the last iteration, and every checkpoint iteration (so no checkpoint is written from an
        iteration whose losses were not checked for finiteness)."""
        done = self.iter + 1
        last = self.max_iter is not None and done >= self.max_iter
        at_checkpoint = self.checkpoint_period > 0 and done % self.checkpoint_period == 0
        return last or at_checkpoint or done % self.metrics_period == 0

    def start_step(self) -> StepInput:
        """The next loader item, then (after a resume) the interrupted run's RNG streams, zeroed gradients and the
        metrics-step decision. Call it first in ``run_step``."""
        assert self.model.training, f"[{type(self).__name__}] the student was switched to eval mode"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        if self._pending_rng_states is not None:  # resumed: continue the interrupted run's RNG streams
            set_rng_states(self._pending_rng_states)
            self._pending_rng_states = None
        self.optimizer.zero_grad(set_to_none=True)
        self._metrics_step = self._decide_metrics_step()
        return StepInput(data, data_time)

    def labelled_forward(self, batch: Sequence[Mapping[str, Any]], prefix: str) -> LabelledForward:
        """The student's training forward (random detail crop, NumPy) on a labelled batch of mapper dicts, through
        its (possibly DDP-wrapped) ``__call__``, under :meth:`autocast`; terms and metrics get ``prefix``."""
        student = self.student
        images = student.normalize(stack_images(batch, student.device))
        labels = stack_field(batch, "sem_seg", student.device).long()
        with self.autocast():
            outputs = self.model(images=images, sem_seg=labels)
        return LabelledForward(prefixed_losses(outputs.losses, prefix),
                               {f"{prefix}{k}": v for k, v in outputs.metrics.items()},
                               images, labels, outputs)

    def target_images(self, batch: Sequence[Mapping[str, Any]]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The normalised ``N x 3 x H x W`` images of a target batch and its pseudo-label margin masks
        (``N x H x W``, ``valid_pseudo_mask`` of the mapper; None when the mapper gives none)."""
        student = self.student
        images = student.normalize(stack_images(batch, student.device))
        valid_mask = (stack_field(batch, "valid_pseudo_mask", student.device)
                      if "valid_pseudo_mask" in batch[0] else None)
        return images, valid_mask

    def unlabelled_forward(self, batch: Sequence[Mapping[str, Any]]) -> UnlabelledForward:
        """The student's label-free training forward (the same random detail crop rule) on a batch of mapper
        dicts, with the batch's normalised images and margin masks (:meth:`target_images`)."""
        images, valid_mask = self.target_images(batch)
        with self.autocast():
            outputs = self.model(images=images)
        return UnlabelledForward(images, valid_mask, outputs)

    # ------------------------------------------------------------------------------------------------------
    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Run the block as stage ``name``: a profiler range ``"<stage_prefix>/<name>"``, and
        ``stage_started(name)`` / ``stage_finished(name)`` of the listener when one is set."""
        listener = self.stage_listener
        with torch.profiler.record_function(f"{self.stage_prefix}/{name}"):
            if listener is not None:
                listener.stage_started(name)
            yield
            if listener is not None:
                listener.stage_finished(name)

    def autocast(self):
        """``torch.autocast`` with :attr:`amp_dtype` on the student's device (a no-op context for float32)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.student.device.type, dtype=self.amp_dtype)

    @contextmanager
    def gradient_sync(self, last: bool) -> Iterator[None]:
        """Wrap one forward AND its backward (DDP decides at forward time whether the backward all-reduces).

        ``last=False``: the gradients stay local (``model.no_sync()``) and add up with the next passes';
        ``last=True``: this backward all-reduces everything accumulated. A model without ``no_sync`` (no DDP)
        is left alone."""
        with synchronised_unless(self.model, last):
            yield

    def check_finite(self, losses: Mapping[str, torch.Tensor]) -> None:
        """On metrics steps: a ``FloatingPointError`` naming the first non-finite term and the iteration (other
        iterations do not read the losses: that would wait for the device)."""
        if not self._metrics_step:
            return
        for name, value in losses.items():
            if not torch.isfinite(value).all():
                raise FloatingPointError(
                    f"Loss term '{name}' is {value.detach().float().cpu().item()} at iteration {self.iter}: "
                    f"training stopped. Check the learning rate (SOLVER.BASE_LR), the input data of this "
                    f"iteration, and SOLVER.AMP (float16 overflows); resume from the last checkpoint with --resume."
                )

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, scaled by the float16 grad scaler when there is one."""
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
        else:
            loss.backward()

    def named_trainable_parameters(self) -> Iterator:
        """``(name, parameter)`` of everything the optimizer updates, for messages (the student's parameters; a
        method with more models adds theirs)."""
        return self.student.named_parameters()

    def gradients_are_finite(self, losses: Mapping[str, torch.Tensor]) -> bool:
        """Whether the optimizer step may follow (docs/method.md §7.2, the frame; §15 Q20).

        On metrics steps, one reduction over every gradient of the optimizer (``torch._foreach_norm``, one host
        read); other iterations return True without touching the device. A non-finite gradient raises a
        ``FloatingPointError`` naming the first such parameter and this iteration's loss terms, unless
        ``skip_nonfinite_steps`` allows skipping: then every optimizer's gradients are zeroed, a warning counts
        the skips, and False is returned (the caller skips its optimizer steps). With the float16 grad scaler
        the scaler's own inf/NaN skip applies instead."""
        if not (self.check_gradients and self._metrics_step) or self.grad_scaler is not None:
            return True
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads or bool(torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum())):
            return True
        name = next((n for n, p in self.named_trainable_parameters()
                     if p.grad is not None and not torch.isfinite(p.grad).all()), "?")
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
        if self.skipped_steps < self.skip_nonfinite_steps:
            self.skipped_steps += 1
            logger.warning("iteration %d: non-finite gradient of %s (losses: %s); step skipped (%d of "
                           "SOLVER.SKIP_NONFINITE_STEPS %d)", self.iter, name, terms, self.skipped_steps,
                           self.skip_nonfinite_steps)
            for optimizer in self.optimizers:
                optimizer.zero_grad(set_to_none=True)
            return False
        raise FloatingPointError(
            f"Non-finite gradient of parameter '{name}' at iteration {self.iter} (loss terms: {terms}): training "
            f"stopped before the optimizer step, so the weights and the checkpoints stay finite. Check the learning "
            f"rate (SOLVER.BASE_LR), the input data of this iteration and SOLVER.AMP; resume from the last "
            f"checkpoint with --resume, or allow skipping such steps with SOLVER.SKIP_NONFINITE_STEPS.")

    @property
    def optimizers(self) -> Sequence[torch.optim.Optimizer]:
        """Every optimizer of the step (the main one; a method with more adds them)."""
        return (self.optimizer,)

    def optimizer_step(self) -> None:
        """One optimizer step (through the grad scaler, which also updates its scale, when there is one)."""
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def write_step_metrics(self, losses: Mapping[str, torch.Tensor], scalars: Mapping[str, Any],
                           data_time: float) -> None:
        """On metrics steps: the loss terms through Detectron2's metrics writer (``total_loss`` = their sum, in
        the order given) and ``scalars`` (tensors or numbers) as non-loss scalars of the event storage."""
        if not self._metrics_step:
            return
        self._write_metrics(losses, data_time)
        get_event_storage().put_scalars(**{k: float(v) for k, v in scalars.items()})

    # ------------------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Optimizer (from ``SimpleTrainer``), the RNG streams of every rank at the end of the step (a list
        indexed by rank; a collective under DDP, so every rank calls it), the AMP grad scaler, the number of
        skipped non-finite steps."""
        ret = super().state_dict()
        ret["rng_states"] = gather_rng_states()
        ret["skipped_steps"] = self.skipped_steps
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        if "rng_states" in state_dict:
            # applied at the start of the next step, after the data loader started (its start draws from torch)
            self._pending_rng_states = rank_rng_states(state_dict["rng_states"])
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


def step_config(cfg, model: nn.Module) -> Dict[str, Any]:
    """The constructor arguments every step takes from the config: AMP dtype and (float16) grad scaler
    (``SOLVER.AMP``), ``SOLVER.METRICS_PERIOD``, ``SOLVER.MAX_ITER``, ``SOLVER.CHECKPOINT_PERIOD``."""
    amp_dtype = amp_dtype_from_config(cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.DTYPE)
    device_type = unwrap_model(model).device.type
    return {
        "amp_dtype": amp_dtype,
        "grad_scaler": torch.amp.GradScaler(device_type) if amp_dtype == torch.float16 else None,
        "metrics_period": cfg.SOLVER.METRICS_PERIOD,
        "max_iter": cfg.SOLVER.MAX_ITER,
        "checkpoint_period": cfg.SOLVER.CHECKPOINT_PERIOD,
        "check_gradients": cfg.SOLVER.CHECK_FINITE_GRADIENTS,
        "skip_nonfinite_steps": cfg.SOLVER.SKIP_NONFINITE_STEPS,
    }


def amp_dtype_from_config(enabled: bool, name: str) -> Optional[torch.dtype]:
    """``SOLVER.AMP.ENABLED``/``SOLVER.AMP.DTYPE`` -> autocast dtype (None = float32)."""
    if not enabled:
        return None
    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"SOLVER.AMP.DTYPE must be one of {sorted(dtypes)}, got '{name}'")
    return dtypes[name]
