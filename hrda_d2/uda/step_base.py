"""``UDAStepTrainer``: what every domain-adaptation step shares (a Detectron2 ``SimpleTrainer``).

A UDA method is a subclass whose ``run_step`` is one iteration of the method, written as its passes in order
(DACS: :class:`hrda_d2.uda.dacs_step.DACSStepTrainer`, docs/method.md §7.2):

* :meth:`start_step` returns the iteration's :class:`Iteration` (the batch with its data time, the metrics-step
  decision, the pass plan of :meth:`pass_plan`, the losses / scalars / visuals gathered so far): every value of
  one iteration is there, passed along, none on the step; it also restores the RNG streams of a resumed run and
  zeroes the gradients of every optimizer;
* :meth:`run_pass` runs the next pass of the plan: a named stage (:meth:`stage`), the pass's forward, the finite
  check of its loss terms, one backward of their sum (through the float16 grad scaler), and the DDP gradient
  all-reduce only in the LAST pass of the plan that backpropagates into that model (the earlier ones run under
  ``no_sync``);
* :meth:`finish_step` ends it: metrics (on metrics steps), the gradient check, and one step of EVERY optimizer of
  the method through one grad-scaler decision;
* helpers: :meth:`autocast` (``SOLVER.AMP``, entered by the forwards around their model calls),
  :meth:`update_teacher` (stage ``ema``), :meth:`labelled_forward` / :meth:`unlabelled_forward`;
* the checkpointed state: optimizer (``SimpleTrainer``), every rank's RNG streams, the grad scaler.

Gradients of all backward passes of an iteration add up and one optimizer step follows (docs/method.md §7.2,
the frame), so under DDP only the LAST backward into each model needs to all-reduce: the gradients accumulated
locally under ``no_sync`` are all-reduced together with it. The result is the mean over ranks of the summed
gradients, which equals the sum over passes of the per-pass means up to float rounding.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Protocol, Sequence, Tuple, TypeVar

import torch
from detectron2.engine import SimpleTrainer
from detectron2.utils.events import get_event_storage
from torch import nn

from ..config import check_choice
from ..utils.rng import gather_rng_states, rank_rng_states, set_rng_states
from .pseudo_labels import EMATeacher

logger = logging.getLogger(__name__)

__all__ = ["Iteration", "LabelledForward", "StageListener", "StudentLosses", "TargetLosses", "UDAStepTrainer",
           "UnlabelledForward", "all_finite", "amp_dtype_from_config", "prefixed_losses", "stack_field",
           "stack_images", "step_config", "unwrap_model"]


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
class TargetLosses(StudentLosses):
    """A method's loss on the student's target forward (AdvSeg's generator term, MinEnt's entropy): the terms and
    metrics, the forward (:class:`UnlabelledForward`) and its adapted ``N x C x H x W`` ``prediction``."""

    forward: UnlabelledForward
    prediction: torch.Tensor


#: one backward pass of an iteration: (pass name, the possibly DDP-wrapped model it backpropagates into)
PlannedPass = Tuple[str, nn.Module]
Losses = TypeVar("Losses")  # a pass's forward result: anything with ``losses`` and ``metrics`` mappings


@dataclass
class Iteration:
    """One iteration of a step, from :meth:`UDAStepTrainer.start_step` to :meth:`UDAStepTrainer.finish_step`.

    data, data_time: the loader's item and the seconds spent waiting for it.
    metrics_step: whether this iteration reads its losses / metrics on the host
        (:attr:`UDAStepTrainer.is_metrics_step`).
    plan: the iteration's backward passes in order (:meth:`UDAStepTrainer.pass_plan`); ``passes_run`` of them ran.
    losses: the loss terms of the passes run, in order (``total_loss`` sums them in this order), with their graph.
    scalars: non-loss scalars (tensors stay on the device until a metrics step reads them).
    visuals: what a debug iteration keeps for the debug-image hook (DACS: ``DACSVisuals``), else None.
    """

    data: Any
    data_time: float
    metrics_step: bool
    plan: Tuple[PlannedPass, ...]
    passes_run: int = 0
    losses: Dict[str, torch.Tensor] = field(default_factory=dict)
    scalars: Dict[str, Any] = field(default_factory=dict)
    visuals: Optional[Any] = None


def stack_images(batch: Sequence[Mapping[str, Any]], device: torch.device) -> torch.Tensor:
    """``N x 3 x H x W`` float images in 0..255 from the mapper dicts."""
    return torch.stack([d["image"] for d in batch]).to(device=device, dtype=torch.float32, non_blocking=True)


def stack_field(batch: Sequence[Mapping[str, Any]], key: str, device: torch.device) -> torch.Tensor:
    """``N x ...`` stack of the mapper dicts' field ``key`` (labels ``sem_seg``, ``valid_pseudo_mask``)."""
    return torch.stack([d[key] for d in batch]).to(device=device, non_blocking=True)


def prefixed_losses(terms: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """``{"loss_sem_seg": x}`` with prefix ``"mix_"`` -> ``{"loss_mix_sem_seg": x}``."""
    return {f"loss_{prefix}{k[len('loss_'):]}": v for k, v in terms.items()}


def all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether every element of ``tensors`` is finite: one reduction (the max-abs norms), one host read."""
    return not tensors or bool(torch.isfinite(torch.stack(torch._foreach_norm(tensors, math.inf))).all())


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (the module itself otherwise)."""
    return model.module if hasattr(model, "module") else model


class UDAStepTrainer(SimpleTrainer):
    """``SimpleTrainer`` with the shared machinery of a UDA iteration; subclasses implement :meth:`pass_plan` and
    ``run_step`` (``it = self.start_step()``, the passes with :meth:`run_pass`, ``self.finish_step(it)``).

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
        self.visuals: Optional[Any] = None  # the last iteration's Iteration.visuals (read by the debug-image hook)
        # the RNG streams of a resumed run, set by load_state_dict, applied once by the next start_step (after the
        # data loader started: its start draws from torch)
        self._resumed_rng_states: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------------------------------------------
    @property
    def student(self) -> nn.Module:
        """The student without its DDP wrapper."""
        return unwrap_model(self.model)

    @property
    def is_metrics_step(self) -> bool:
        """Whether iteration :attr:`iter` reads its losses / metrics on the host: the metrics period, the last
        iteration, and every checkpoint iteration (so no checkpoint is written from an iteration whose losses were
        not checked for finiteness)."""
        done = self.iter + 1
        last = self.max_iter is not None and done >= self.max_iter
        at_checkpoint = self.checkpoint_period > 0 and done % self.checkpoint_period == 0
        return last or at_checkpoint or done % self.metrics_period == 0

    def pass_plan(self) -> Sequence[PlannedPass]:
        """The backward passes of this iteration in order, ``(name, model)`` with ``model`` the (possibly
        DDP-wrapped) module the pass backpropagates into; :meth:`run_pass` follows it."""
        raise NotImplementedError

    def start_step(self) -> Iteration:
        """The next loader item, then (after a resume) the interrupted run's RNG streams, zeroed gradients of every
        optimizer, the metrics-step decision and the pass plan. Call it first in ``run_step``."""
        assert self.model.training, f"[{type(self).__name__}] the student was switched to eval mode"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        if self._resumed_rng_states is not None:  # resumed: continue the interrupted run's RNG streams
            set_rng_states(self._resumed_rng_states)
            self._resumed_rng_states = None
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        return Iteration(data, data_time, self.is_metrics_step, tuple(self.pass_plan()))

    def run_pass(self, it: Iteration, name: str, forward: Callable[[], Losses]) -> Losses:
        """The next pass of ``it.plan``, named ``name``: stage ``name``; ``forward()`` (its forwards enter
        :meth:`autocast` around their model calls) returning the pass's ``losses`` (0-dim terms with their graph)
        and ``metrics``, under the planned model's ``no_sync`` unless no later pass of the plan backpropagates
        into that model; the finite check of the terms; one backward of their sum. The terms and metrics are added
        to ``it``; ``forward``'s result is returned."""
        planned = [n for n, _ in it.plan]
        if it.passes_run >= len(planned) or planned[it.passes_run] != name:
            raise RuntimeError(f"[{type(self).__name__}] pass {name!r} run after {planned[:it.passes_run]}, "
                               f"but the plan of the iteration is {planned}")
        model = it.plan[it.passes_run][1]
        last = all(later is not model for _, later in it.plan[it.passes_run + 1:])
        with self.stage(name), self.gradient_sync(model, last):
            result = forward()
            self.check_finite(it, result.losses)
            self.backward(sum(result.losses.values()))
        it.passes_run += 1
        it.losses.update(result.losses)
        it.scalars.update(result.metrics)
        return result

    def finish_step(self, it: Iteration) -> None:
        """After the last pass: ``after_backward`` hooks, the metrics (on metrics steps), the debug visuals for the
        hooks (:attr:`visuals`), then stage ``optimizer``: the gradient check and one step of every optimizer
        (:meth:`step_optimizers`)."""
        if it.passes_run != len(it.plan):
            raise RuntimeError(f"[{type(self).__name__}] {it.passes_run} of the planned passes "
                               f"{[n for n, _ in it.plan]} ran")
        self.after_backward()
        self.write_step_metrics(it)
        self.visuals = it.visuals
        with self.stage("optimizer"):
            if self.gradients_are_finite(it):
                self.step_optimizers()

    def update_teacher(self, it: Iteration, teacher: EMATeacher) -> None:
        """Stage ``ema``: the EMA update of ``teacher`` from the student at the start of the iteration; its
        coefficient ``ema_alpha`` into ``it.scalars``."""
        with self.stage("ema"):
            it.scalars["ema_alpha"] = teacher.update(self.student, self.iter)

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
    def gradient_sync(self, model: nn.Module, last: bool) -> Iterator[None]:
        """Wrap one forward AND its backward into ``model`` (DDP decides at forward time whether the backward
        all-reduces): ``last=False``: the gradients stay local (``model.no_sync()``) and add up with the later
        passes'; ``last=True``: this backward all-reduces everything accumulated. A model without ``no_sync`` (no
        DDP) is left alone."""
        no_sync = getattr(model, "no_sync", None)
        if last or no_sync is None:
            yield
        else:
            with no_sync():
                yield

    def check_finite(self, it: Iteration, losses: Mapping[str, torch.Tensor]) -> None:
        """On metrics steps: a ``FloatingPointError`` naming the first non-finite term and the iteration (other
        iterations do not read the losses: that would wait for the device)."""
        if not it.metrics_step:
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

    def gradients_are_finite(self, it: Iteration) -> bool:
        """Whether the optimizer step may follow (docs/method.md §7.2, the frame; §15 Q20).

        On metrics steps, one reduction over every gradient of the optimizer (:func:`all_finite`, one host read);
        other iterations return True without touching the device. A non-finite gradient raises a
        ``FloatingPointError`` naming the first such parameter and this iteration's loss terms, unless
        ``skip_nonfinite_steps`` allows skipping: then every optimizer's gradients are zeroed, a warning counts
        the skips, and False is returned (no optimizer steps). With the float16 grad scaler the scaler's own
        inf/NaN skip applies instead (:meth:`step_optimizers`)."""
        if not (self.check_gradients and it.metrics_step) or self.grad_scaler is not None:
            return True
        if all_finite(_gradients(self.optimizer)):
            return True
        name = next((n for n, p in self.named_trainable_parameters()
                     if p.grad is not None and not torch.isfinite(p.grad).all()), "?")
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in it.losses.items())
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
        """Every optimizer of the step, in stepping order (the main one; a method with more adds them)."""
        return (self.optimizer,)

    def step_optimizers(self) -> None:
        """One step of every optimizer of :attr:`optimizers`, in order.

        With the float16 grad scaler, one decision for all of them: each gradient is unscaled once (an
        optimizer whose parameters an earlier one already covers, as AdvSeg's discriminator Adam is covered by
        the main optimizer, docs/method.md §18.4, is not unscaled again), then either every optimizer steps (all
        gradients finite) or none does (an overflow), and the scaler updates its scale once."""
        optimizers = self.optimizers
        scaler = self.grad_scaler
        if scaler is None:
            for optimizer in optimizers:
                optimizer.step()
            return
        unscaled = set()
        for optimizer in optimizers:
            params = {id(p) for group in optimizer.param_groups for p in group["params"]}
            if params <= unscaled:
                continue
            if params & unscaled:
                raise ValueError(f"[{type(self).__name__}] optimizers share some, not all, of their parameters: "
                                 f"the grad scaler cannot unscale each gradient once")
            scaler.unscale_(optimizer)
            unscaled |= params
        if all_finite([g for optimizer in optimizers for g in _gradients(optimizer)]):
            for optimizer in optimizers:
                optimizer.step()
        else:
            logger.debug("iteration %d: float16 gradients overflowed; no optimizer steps (scale %g)", self.iter,
                         scaler.get_scale())
        scaler.update()

    def write_step_metrics(self, it: Iteration) -> None:
        """On metrics steps: the loss terms through Detectron2's metrics writer (``total_loss`` = their sum, in
        the order of the passes) and the scalars (tensors or numbers) as non-loss scalars of the event storage."""
        if not it.metrics_step:
            return
        self._write_metrics(it.losses, it.data_time)
        get_event_storage().put_scalars(**{k: float(v) for k, v in it.scalars.items()})

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
            self._resumed_rng_states = rank_rng_states(state_dict["rng_states"])
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


def _gradients(optimizer: torch.optim.Optimizer) -> list:
    return [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


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
    return getattr(torch, check_choice("SOLVER.AMP.DTYPE", name)) if enabled else None
