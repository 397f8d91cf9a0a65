"""One DACS self-training iteration per ``run_step``, as a Detectron2 ``SimpleTrainer`` (docs/method.md §7.2).

The iteration ``t`` (0-based) runs the steps of docs/method.md §7.2 in the original's order (the step numbers
below and in every module of ``hrda_d2/uda`` are that list's):

1. EMA update of the teacher at the START of the step (:mod:`.ema`);
3. strong-augmentation decisions with Python's ``random``: jitter draw, then blur draw (:mod:`.strong_augmentation`);
4. source forward (random detail crop from NumPy) -> ``loss_src_*``;
5. ImageNet feature distance on the source's LR features against the frozen ImageNet model
   (``loss_imnet_feat_dist``, :mod:`.feature_distance`), backpropagated together with the source loss (the
   original calls ``backward`` twice on the same graph; the accumulated gradients are the same);
6. teacher pseudo-labels on the target batch with HR slide inference (:mod:`.pseudo_labels`);
7. ClassMix masks (NumPy, :mod:`.class_mix`);
8. mixing of image / label / weight, strong augmentation per sample;
9. mixed forward/backward (new detail crop) -> ``loss_mix_*``;
   with MIC (``UDA.MIC.ENABLED``, docs/method.md §17.1): forward/backward on the block-masked batch with the
   same pseudo-labels and weights -> ``loss_masked_*`` (:mod:`.masked_consistency`);

then one optimizer step. Step 2 (the original's debug flag) and step 10 (debug figures) have no numeric effect:
here the step keeps its tensors in :attr:`DACSStepTrainer.visuals` on every ``UDA.DEBUG_IMG_INTERVAL``-th
iteration for :class:`hrda_d2.engine.hooks.DebugImageHook`.

With ``UDA.ENABLED False`` only step 4 (and the optimizer step) runs: source-only training in the same loop.

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

import time
from contextlib import nullcontext
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.engine import SimpleTrainer
from detectron2.utils.events import get_event_storage
from torch import nn

from ..utils.rng import gather_rng_states, rank_rng_states, set_rng_states
from .class_mix import class_mix_batch, class_mix_masks
from .ema import ema_update_, set_pseudo_label_mode
from .feature_distance import imnet_feature_distance_loss
from .masked_consistency import MaskedImageConsistency
from .pseudo_labels import pseudo_labels_from_logits
from .strong_augmentation import StrongAugmentation

__all__ = ["DACSStepTrainer", "DACSStepVisuals", "amp_dtype_from_config"]


DACSStepVisuals = Dict[str, torch.Tensor]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _stack_images(batch: Sequence[Dict[str, Any]], device: torch.device) -> torch.Tensor:
    """``N x 3 x H x W`` float images in 0..255 from the mapper dicts."""
    return torch.stack([d["image"] for d in batch]).to(device=device, dtype=torch.float32, non_blocking=True)


def _stack_field(batch: Sequence[Dict[str, Any]], key: str, device: torch.device) -> torch.Tensor:
    return torch.stack([d[key] for d in batch]).to(device=device, non_blocking=True)


class DACSStepTrainer(SimpleTrainer):
    """``SimpleTrainer`` whose ``run_step`` is one DACS iteration (the workflow around it: ``HRDATrainer``).

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
        fd_feature: ``UDA.FD.FEATURE``, the backbone map of the feature distance ("" = the deepest, i.e. the
            smallest map; res5 of MiT).
        num_classes, ignore_value: label space.
        amp_dtype: None (float32) or ``torch.bfloat16`` / ``torch.float16`` for autocast.
        grad_scaler: ``torch.amp.GradScaler`` for float16, else None.
        debug_interval: every this many iterations the step keeps its tensors in :attr:`visuals` for the
            debug-image hook (0 = never).
        metrics_period: losses / metrics are read, checked for finiteness and written every this many
            iterations (1 = every iteration), at iteration ``max_iter - 1`` when ``max_iter`` is given and at every
            ``checkpoint_period``-th iteration (``SOLVER.CHECKPOINT_PERIOD``; 0 = no checkpoints).
        mic: MIC's masked image consistency (MIC step), or None (``UDA.MIC.ENABLED False``); needs a teacher.
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
        fd_feature: str = "",
        num_classes: int = 19,
        ignore_value: int = 255,
        amp_dtype: Optional[torch.dtype] = None,
        grad_scaler: Optional[torch.amp.GradScaler] = None,
        debug_interval: int = 0,
        metrics_period: int = 1,
        max_iter: Optional[int] = None,
        checkpoint_period: int = 0,
        mic: Optional[MaskedImageConsistency] = None,
    ) -> None:
        super().__init__(model, data_loader, optimizer)
        if teacher is not None and strong_augmentation is None:
            raise ValueError("DACSStepTrainer: self-training (a teacher) needs a StrongAugmentation")
        if mic is not None and teacher is None:
            raise ValueError("DACSStepTrainer: MIC (UDA.MIC.ENABLED) uses the DACS pseudo-labels; set UDA.ENABLED True")
        self.mic = mic
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
        self.fd_feature = fd_feature
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.amp_dtype = amp_dtype
        self.grad_scaler = grad_scaler
        self.debug_interval = debug_interval
        self.metrics_period = max(int(metrics_period), 1)
        self.max_iter = max_iter
        self.checkpoint_period = int(checkpoint_period)
        self._metrics_step = True
        self._visuals: Optional[DACSStepVisuals] = None
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

    @property
    def visuals(self) -> Optional[DACSStepVisuals]:
        """The tensors of the last iteration (normalised ``N x 3 x H x W`` images, ``N x H x W`` labels and weights,
        ``N x 1 x H x W`` mix masks) if it was a debug iteration (``iter % debug_interval == 0``), else None."""
        return self._visuals

    @classmethod
    def from_config(cls, cfg, model: nn.Module, data_loader, optimizer: torch.optim.Optimizer, *,
                    teacher: Optional[nn.Module], imnet_model: Optional[nn.Module]) -> "DACSStepTrainer":
        """The step of ``cfg`` (``UDA.*``, ``SOLVER.AMP.*``) for the given student, loader, optimizer and models."""
        amp_dtype = amp_dtype_from_config(cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.DTYPE)
        device_type = _unwrap(model).device.type
        uda = cfg.UDA.ENABLED
        return cls(
            model, data_loader, optimizer,
            teacher=teacher,
            imnet_model=imnet_model,
            strong_augmentation=StrongAugmentation(cfg) if uda else None,
            alpha=cfg.UDA.ALPHA,
            pseudo_threshold=cfg.UDA.PSEUDO_THRESHOLD,
            pseudo_ignore_top=cfg.UDA.PSEUDO_WEIGHT_IGNORE_TOP,
            pseudo_ignore_bottom=cfg.UDA.PSEUDO_WEIGHT_IGNORE_BOTTOM,
            fd_lambda=cfg.UDA.FD.LAMBDA,
            fd_classes=cfg.UDA.FD.CLASSES,
            fd_min_ratio=cfg.UDA.FD.SCALE_MIN_RATIO,
            fd_feature=cfg.UDA.FD.FEATURE,
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            amp_dtype=amp_dtype,
            grad_scaler=torch.amp.GradScaler(device_type) if amp_dtype == torch.float16 else None,
            debug_interval=cfg.UDA.DEBUG_IMG_INTERVAL if uda else 0,
            metrics_period=cfg.SOLVER.METRICS_PERIOD,
            max_iter=cfg.SOLVER.MAX_ITER,
            checkpoint_period=cfg.SOLVER.CHECKPOINT_PERIOD,
            mic=MaskedImageConsistency(cfg) if uda and cfg.UDA.MIC.ENABLED else None,
        )

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.student.device.type, dtype=self.amp_dtype)

    def _is_metrics_step(self) -> bool:
        """Metrics period, the last iteration, and every checkpoint iteration (so no checkpoint is written from an
        iteration whose losses were not checked for finiteness)."""
        done = self.iter + 1
        last = self.max_iter is not None and done >= self.max_iter
        at_checkpoint = self.checkpoint_period > 0 and done % self.checkpoint_period == 0
        return last or at_checkpoint or done % self.metrics_period == 0

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
        assert self.model.training, "[DACSStepTrainer] the student was switched to eval mode"
        start = time.perf_counter()
        source_batch, target_batch = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        if self._pending_rng_states is not None:  # resumed: continue the interrupted run's RNG streams
            set_rng_states(self._pending_rng_states)
            self._pending_rng_states = None

        student = self.student
        device = student.device
        self.optimizer.zero_grad(set_to_none=True)
        self._visuals = None
        self._metrics_step = self._is_metrics_step()
        metrics: Dict[str, Any] = {}  # tensors stay on the device until a metrics step reads them

        # step 1: EMA teacher update (start of the step); step 3: augmentation decisions
        if self.uda_enabled:
            metrics["ema_alpha"] = ema_update_(self.teacher, student, self.iter, self.alpha)
            draws = self.strong_augmentation.draw()

        # step 4: source forward, step 5: feature distance; one backward
        source_images = student.normalize(_stack_images(source_batch, device))
        source_labels = _stack_field(source_batch, "sem_seg", device).long()
        with self._autocast():
            source_losses, source_out = self.model(images=source_images, sem_seg=source_labels, return_outputs=True)
        loss_dict = {f"loss_src_{k[len('loss_'):]}": v for k, v in source_losses.items()}
        metrics.update({f"src_{k}": v for k, v in source_out.metrics.items()})
        if self.uda_enabled and self.imnet_model is not None:
            fd_loss, num_cells = self._feature_distance(source_images, source_labels, source_out.features)
            loss_dict["loss_imnet_feat_dist"] = fd_loss
            metrics["imnet_fd_cells"] = num_cells
        self._check_finite(loss_dict)
        self._backward(sum(loss_dict.values()))

        if self.uda_enabled:
            mix_losses, mix_metrics, visuals, targets = self._self_training(
                source_batch, target_batch, source_images, source_labels, draws)
            self._check_finite(mix_losses)
            self._backward(sum(mix_losses.values()))
            loss_dict.update(mix_losses)
            metrics.update(mix_metrics)
            if self.mic is not None:  # MIC, after step 9 (docs/method.md §17.1)
                masked_losses, masked_metrics = self._masked_consistency(
                    source_images, source_labels, targets, visuals)
                loss_dict.update(masked_losses)
                metrics.update(masked_metrics)
            if visuals is not None:
                visuals.update(source_image=source_images.detach(), source_label=source_labels.detach())
                self._visuals = visuals

        self.after_backward()
        if self._metrics_step:
            self._write_metrics(loss_dict, data_time)
            get_event_storage().put_scalars(**{k: float(v) for k, v in metrics.items()})
        self._optimizer_step()

    def _feature_distance(
        self, source_images: torch.Tensor, source_labels: torch.Tensor, features: Dict[str, torch.Tensor]
    ) -> Tuple[torch.Tensor, int]:
        """ImageNet feature distance on the map ``fd_feature`` (default: the deepest) (step 5)."""
        self.imnet_model.eval()
        with torch.no_grad(), self._autocast():
            imnet_features = self.imnet_model.extract_features(source_images)
        name = self.fd_feature
        if not name:  # the smallest map, the last of equal size (res5 of MiT: the original's last level)
            name = min(reversed(list(features)), key=lambda k: features[k].shape[-2] * features[k].shape[-1])
        elif name not in features:
            raise KeyError(f"UDA.FD.FEATURE={name!r} is not a backbone output; the backbone returns {list(features)}")
        return imnet_feature_distance_loss(
            features[name].float(), imnet_features[name].float(), source_labels, self.fd_classes, self.num_classes,
            self.fd_min_ratio, self.fd_lambda, self.ignore_value)

    def _self_training(
        self,
        source_batch: List[Dict[str, Any]],
        target_batch: List[Dict[str, Any]],
        source_images: torch.Tensor,
        source_labels: torch.Tensor,
        draws,
    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any], Optional[DACSStepVisuals], Tuple[torch.Tensor, ...]]:
        """Steps 6-9: pseudo-labels, ClassMix masks, mixing + strong augmentation, mixed forward. The last item
        returned is ``(target images, pseudo_label, pseudo_weight)`` for MIC (the weight after the margin mask)."""
        device = source_images.device
        student = self.student
        target_images = student.normalize(_stack_images(target_batch, device))
        valid_mask = (_stack_field(target_batch, "valid_pseudo_mask", device)
                      if "valid_pseudo_mask" in target_batch[0] else None)
        set_pseudo_label_mode(self.teacher)
        with torch.no_grad(), self._autocast():
            teacher_logits = self.teacher.generate_pseudo_label(target_images)
        pseudo_label, pseudo_weight = pseudo_labels_from_logits(
            teacher_logits, self.pseudo_threshold, self.pseudo_ignore_top, self.pseudo_ignore_bottom, valid_mask)

        mix_masks = class_mix_masks(source_labels)
        mixed_images, mixed_labels, mixed_weight = class_mix_batch(
            mix_masks, source_images, target_images, source_labels, pseudo_label, pseudo_weight)
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
                "target_image": target_images.detach(),
                "pseudo_label": pseudo_label.detach(),
                "pseudo_weight": pseudo_weight.detach(),
                "mix_mask": mix_masks.detach(),
                "mixed_image": mixed_images.detach(),
                "mixed_label": mixed_labels.detach(),
            }
        return losses, metrics, visuals, (target_images, pseudo_label, pseudo_weight)

    # ---------------------------------------------------------------------------------- MIC (MIC step, §17)
    def _masked_consistency(
        self,
        source_images: torch.Tensor,
        source_labels: torch.Tensor,
        targets: Tuple[torch.Tensor, ...],
        visuals: Optional[DACSStepVisuals],
    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, float]]:
        """Masked batch of ``UDA.MIC.MODE`` with the DACS pseudo-labels / weights, forward, own backward (the
        graph is freed before the optimizer step). Returns the detached ``loss_masked_*`` terms and metrics."""
        target_images, pseudo_label, pseudo_weight = targets
        batch = self.mic.masked_batch(source_images, source_labels, target_images, pseudo_label, pseudo_weight)
        with self._autocast():
            losses, metrics = self.mic.losses(self.model, batch)
        self._check_finite(losses)
        self._backward(sum(losses.values()))
        if visuals is not None:
            visuals.update(masked_image=batch.images, masked_label=batch.labels)
        return {name: value.detach() for name, value in losses.items()}, metrics
    # ------------------------------------------------------------------------------------------ end of MIC

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
