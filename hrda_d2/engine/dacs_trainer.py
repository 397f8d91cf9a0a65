"""One DACS self-training iteration per ``run_step`` (reference §7.2), as a Detectron2 ``SimpleTrainer``.

Order of one iteration ``t`` (0-based), exactly the original's:

1. EMA update of the teacher at the START of the step: copy at ``t == 0``, else
   ``alpha_t = min(1 - 1/(t+1), UDA.ALPHA)`` (parameters only, buffers untouched);
2. strong-augmentation decisions with Python's ``random``: jitter draw, then blur draw;
3. source forward (random detail crop from NumPy) -> ``loss_src_*``;
4. ImageNet feature distance on the source's LR features against the frozen ImageNet model
   (``loss_imnet_feat_dist``), backpropagated together with the source loss (the original calls
   ``backward`` twice on the same graph; the accumulated gradients are the same);
5. teacher pseudo-labels on the target batch with HR slide inference, teacher in train mode with dropout
   and drop-path off (BatchNorm on batch statistics); pseudo weight = confident fraction of the batch times
   the target mapper's margin mask;
6. ClassMix masks (NumPy), mixing of image / label / weight, strong augmentation per sample;
7. mixed forward/backward (new detail crop) -> ``loss_mix_*``;
8. one optimizer step.

With ``UDA.ENABLED False`` only step 3 (and 8) runs: source-only training in the same loop.

The student is called through its (possibly DDP-wrapped) ``__call__`` with keyword arguments
(``model(images=..., sem_seg=..., weight=..., return_outputs=True)``), so DDP synchronises its gradients.
The teacher and the ImageNet model are separate module instances outside the optimizer; their parameters
have ``requires_grad=False``.

Metrics: the loss terms go through Detectron2's ``write_metrics`` (``total_loss`` = their sum); accuracies,
the pseudo-label confidence fraction, the EMA coefficient and the number of feature-distance cells are
written to the event storage as non-loss scalars. A non-finite loss term stops training with a
``FloatingPointError`` naming the term and the iteration. Reading a value on the host waits for the device,
so both happen only every ``metrics_period`` iterations (SOLVER.METRICS_PERIOD) and at the last one; in
between the step queues its work without a single host synchronisation.
"""
from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.engine import SimpleTrainer
from detectron2.utils.events import get_event_storage
from torch import nn

from .class_mix import class_mix_batch, class_mix_masks
from .ema import ema_update_, set_pseudo_label_mode
from .feature_distance import imnet_feature_distance_loss
from .pseudo_labels import pseudo_labels_from_logits
from .rng import gather_rng_states, rank_rng_states, set_rng_states
from .strong_augmentation import StrongAugmentation

__all__ = ["DACSTrainer", "DACSStepVisuals"]

logger = logging.getLogger(__name__)

DACSStepVisuals = Dict[str, torch.Tensor]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _stack_images(batch: Sequence[Dict[str, Any]], device: torch.device) -> torch.Tensor:
    """``N x 3 x H x W`` float images in 0..255 from the mapper dicts."""
    return torch.stack([d["image"] for d in batch]).to(device=device, dtype=torch.float32, non_blocking=True)


def _stack_field(batch: Sequence[Dict[str, Any]], key: str, device: torch.device) -> torch.Tensor:
    return torch.stack([d[key] for d in batch]).to(device=device, non_blocking=True)


class DACSTrainer(SimpleTrainer):
    """``SimpleTrainer`` whose step is one DACS iteration.

    Args:
        model: the student (``HRDA``), possibly wrapped in ``DistributedDataParallel``.
        data_loader: iterable of ``(source_batch, target_batch)`` pairs of mapper dicts; ``target_batch`` is
            ignored (may be None) when ``teacher`` is None (source-only).
        optimizer: optimizer over the student's parameters only.
        teacher: EMA teacher (same architecture), or None for source-only training.
        imnet_model: frozen ImageNet-initialised model for the feature distance, or None when
            ``fd_lambda == 0`` or source-only.
        strong_augmentation: DACS colour jitter / blur.
        alpha: ``UDA.ALPHA``. pseudo_threshold: ``UDA.PSEUDO_THRESHOLD``.
        pseudo_ignore_top, pseudo_ignore_bottom: ``UDA.PSEUDO_WEIGHT_IGNORE_TOP/BOTTOM``.
        fd_lambda, fd_classes, fd_min_ratio: ``UDA.FD.*``.
        num_classes, ignore_value: label space.
        amp_dtype: None (float32) or ``torch.bfloat16`` / ``torch.float16`` for autocast.
        grad_scaler: ``torch.amp.GradScaler`` for float16, else None.
        debug_interval: every this many iterations the step keeps its tensors in ``last_visuals`` for the
            debug-image hook (0 = never).
        metrics_period: losses / metrics are read, checked for finiteness and written every this many
            iterations (1 = every iteration), and at iteration ``max_iter - 1`` when ``max_iter`` is given.
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader,
        optimizer: torch.optim.Optimizer,
        *,
        teacher: Optional[nn.Module],
        imnet_model: Optional[nn.Module],
        strong_augmentation: Optional[StrongAugmentation],
        alpha: float = 0.999,
        pseudo_threshold: float = 0.968,
        pseudo_ignore_top: int = 0,
        pseudo_ignore_bottom: int = 0,
        fd_lambda: float = 0.005,
        fd_classes: Sequence[int] = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18),
        fd_min_ratio: float = 0.75,
        num_classes: int = 19,
        ignore_value: int = 255,
        amp_dtype: Optional[torch.dtype] = None,
        grad_scaler: Optional[torch.amp.GradScaler] = None,
        debug_interval: int = 0,
        metrics_period: int = 1,
        max_iter: Optional[int] = None,
    ) -> None:
        super().__init__(model, data_loader, optimizer)
        if teacher is not None and strong_augmentation is None:
            raise ValueError("DACSTrainer: self-training (a teacher) needs a StrongAugmentation")
        self.teacher = teacher
        self.imnet_model = imnet_model if fd_lambda > 0 else None
        self.strong_augmentation = strong_augmentation
        self.alpha = alpha
        self.pseudo_threshold = pseudo_threshold
        self.pseudo_ignore_top = pseudo_ignore_top
        self.pseudo_ignore_bottom = pseudo_ignore_bottom
        self.fd_lambda = fd_lambda
        self.fd_classes = list(fd_classes)
        self.fd_min_ratio = fd_min_ratio
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.amp_dtype = amp_dtype
        self.grad_scaler = grad_scaler
        self.debug_interval = debug_interval
        self.metrics_period = max(int(metrics_period), 1)
        self.max_iter = max_iter
        self._metrics_step = True
        self.last_visuals: Optional[DACSStepVisuals] = None
        self._pending_rng_states: Optional[Dict[str, Any]] = None
        for frozen in (teacher, self.imnet_model):
            if frozen is not None:
                frozen.requires_grad_(False)

    # ------------------------------------------------------------------------------------------------------
    @property
    def student(self) -> nn.Module:
        """The student without its DDP wrapper."""
        return _unwrap(self.model)

    @property
    def uda_enabled(self) -> bool:
        return self.teacher is not None

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.student.device.type, dtype=self.amp_dtype)

    def _is_metrics_step(self) -> bool:
        last = self.max_iter is not None and self.iter + 1 >= self.max_iter
        return last or (self.iter + 1) % self.metrics_period == 0

    def _check_finite(self, losses: Dict[str, torch.Tensor]) -> None:
        if not self._metrics_step:  # reading the losses would synchronise with the device
            return
        for name, value in losses.items():
            if not torch.isfinite(value).all():
                raise FloatingPointError(
                    f"Loss term '{name}' is {value.detach().float().cpu().item()} at iteration {self.iter}: "
                    f"training stopped. Check the learning rate (SOLVER.BASE_LR), the input data of this "
                    f"iteration, and SOLVER.AMP (float16 overflows); resume from the last checkpoint with --resume."
                )

    def _backward(self, loss: torch.Tensor) -> None:
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
        else:
            loss.backward()

    def _optimizer_step(self) -> None:
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    # ------------------------------------------------------------------------------------------------------
    def run_step(self) -> None:
        assert self.model.training, "[DACSTrainer] the student was switched to eval mode"
        start = time.perf_counter()
        source_batch, target_batch = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        if self._pending_rng_states is not None:  # resumed: continue the interrupted run's RNG streams
            set_rng_states(self._pending_rng_states)
            self._pending_rng_states = None

        student = self.student
        device = student.device
        self.optimizer.zero_grad(set_to_none=True)
        self._metrics_step = self._is_metrics_step()
        metrics: Dict[str, Any] = {}  # tensors stay on the device until a metrics step reads them

        # 1. EMA teacher update (start of the step), 2. augmentation decisions
        if self.uda_enabled:
            metrics["ema_alpha"] = ema_update_(self.teacher, student, self.iter, self.alpha)
            draws = self.strong_augmentation.draw()

        # 3. source forward, 4. feature distance; one backward
        src_images = student.normalize(_stack_images(source_batch, device))
        src_labels = _stack_field(source_batch, "sem_seg", device).long()
        with self._autocast():
            src_losses, src_out = self.model(images=src_images, sem_seg=src_labels, return_outputs=True)
        loss_dict = {f"loss_src_{k[len('loss_'):]}": v for k, v in src_losses.items()}
        metrics.update({f"src_{k}": v for k, v in src_out.metrics.items()})
        if self.uda_enabled and self.imnet_model is not None:
            fd_loss, num_cells = self._feature_distance(src_images, src_labels, src_out.features)
            loss_dict["loss_imnet_feat_dist"] = fd_loss
            metrics["imnet_fd_cells"] = num_cells
        self._check_finite(loss_dict)
        self._backward(sum(loss_dict.values()))

        if self.uda_enabled:
            mix_losses, mix_metrics, visuals = self._self_training(
                source_batch, target_batch, src_images, src_labels, draws)
            self._check_finite(mix_losses)
            self._backward(sum(mix_losses.values()))
            loss_dict.update(mix_losses)
            metrics.update(mix_metrics)
            if visuals is not None:
                visuals.update(source_image=src_images.detach(), source_label=src_labels.detach())
                self.last_visuals = visuals

        self.after_backward()
        if self._metrics_step:
            self._write_metrics(loss_dict, data_time)
            get_event_storage().put_scalars(**{k: float(v) for k, v in metrics.items()})
        self._optimizer_step()

    def _feature_distance(
        self, src_images: torch.Tensor, src_labels: torch.Tensor, features: Dict[str, torch.Tensor]
    ) -> Tuple[torch.Tensor, int]:
        """ImageNet feature distance on the last feature level (step 5)."""
        self.imnet_model.eval()
        with torch.no_grad(), self._autocast():
            imnet_features = self.imnet_model.extract_features(src_images)
        last = list(features.keys())[-1]
        return imnet_feature_distance_loss(
            features[last].float(), imnet_features[last].float(), src_labels, self.fd_classes, self.num_classes,
            self.fd_min_ratio, self.fd_lambda, self.ignore_value)

    def _self_training(
        self,
        source_batch: List[Dict[str, Any]],
        target_batch: List[Dict[str, Any]],
        src_images: torch.Tensor,
        src_labels: torch.Tensor,
        draws,
    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any], Optional[DACSStepVisuals]]:
        """Steps 5-7: pseudo-labels, ClassMix, strong augmentation, mixed forward."""
        device = src_images.device
        student = self.student
        trg_images = student.normalize(_stack_images(target_batch, device))
        valid_mask = (_stack_field(target_batch, "valid_pseudo_mask", device)
                      if "valid_pseudo_mask" in target_batch[0] else None)
        set_pseudo_label_mode(self.teacher)
        with torch.no_grad(), self._autocast():
            teacher_logits = self.teacher.generate_pseudo_label(trg_images)
        pseudo_label, pseudo_weight = pseudo_labels_from_logits(
            teacher_logits, self.pseudo_threshold, self.pseudo_ignore_top, self.pseudo_ignore_bottom, valid_mask)

        mix_masks = class_mix_masks(src_labels)
        mixed_images, mixed_labels, mixed_weight = class_mix_batch(
            mix_masks, src_images, trg_images, src_labels, pseudo_label, pseudo_weight)
        mixed_images = self.strong_augmentation(mixed_images, draws)

        with self._autocast():
            mix_losses, mix_out = self.model(
                images=mixed_images, sem_seg=mixed_labels, weight=mixed_weight, return_outputs=True)
        losses = {f"loss_mix_{k[len('loss_'):]}": v for k, v in mix_losses.items()}
        metrics = {f"mix_{k}": v for k, v in mix_out.metrics.items()}
        # the weight is one scalar (the confident fraction) wherever the margin mask is 1
        metrics["pseudo_confident_fraction"] = pseudo_weight.max()

        visuals = None
        if self.debug_interval > 0 and self.iter % self.debug_interval == 0:
            visuals = {
                "target_image": trg_images.detach(),
                "pseudo_label": pseudo_label.detach(),
                "pseudo_weight": pseudo_weight.detach(),
                "mix_mask": mix_masks.detach(),
                "mixed_image": mixed_images.detach(),
                "mixed_label": mixed_labels.detach(),
            }
        return losses, metrics, visuals

    # ------------------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Optimizer (from ``SimpleTrainer``), the RNG streams of every rank at the end of the step (a list
        indexed by rank; a collective under DDP, so every rank calls it), the AMP grad scaler.

        The teacher and the ImageNet model are saved as their own checkpointables (``"teacher"``,
        ``"imnet_model"``) by the checkpointer, next to ``"model"`` (the student)."""
        ret = super().state_dict()
        ret["rng_states"] = gather_rng_states()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "rng_states" in state_dict:
            # applied at the start of the next step, after the data loader started (its start draws from torch)
            self._pending_rng_states = rank_rng_states(state_dict["rng_states"])
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


def amp_dtype_from_config(enabled: bool, name: str) -> Optional[torch.dtype]:
    """``SOLVER.AMP.ENABLED``/``SOLVER.AMP.DTYPE`` -> autocast dtype (None = float32)."""
    if not enabled:
        return None
    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"SOLVER.AMP.DTYPE must be one of {sorted(dtypes)}, got '{name}'")
    return dtypes[name]
