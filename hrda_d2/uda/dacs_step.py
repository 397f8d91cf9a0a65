"""One DACS self-training iteration per ``run_step`` (docs/method.md §7.2), on the shared UDA step machinery.

``run_step`` is the list of docs/method.md §7.2, one call per step, each returning a small dataclass; the three
student passes run through :meth:`UDAStepTrainer.run_pass` (the step numbers below and in every module of
``hrda_d2/uda`` are that list's):

1. EMA update of the teacher at the START of the step (:mod:`.ema`);
3. strong-augmentation decisions with Python's ``random``: jitter draw, then blur draw (:mod:`.strong_augmentation`);
4. source forward (random detail crop from NumPy) -> ``loss_src_*`` (:class:`SourceOutputs`);
5. ImageNet feature distance on the source's LR features against the frozen ImageNet model
   (``loss_imnet_feat_dist``, :mod:`.feature_distance`), backpropagated together with the source loss (the
   original calls ``backward`` twice on the same graph; the accumulated gradients are the same);
6. teacher pseudo-labels on the target batch with HR slide inference (:mod:`.pseudo_labels`, :class:`PseudoLabels`);
7. ClassMix masks (NumPy, :mod:`.class_mix`);
8. mixing of image / label / weight, strong augmentation per sample (:class:`MixedBatch`);
9. mixed forward/backward (new detail crop) -> ``loss_mix_*``;
   with MIC (``UDA.MIC.ENABLED``, docs/method.md §17.1): forward/backward on the block-masked batch with the
   same pseudo-labels and weights -> ``loss_masked_*`` (:mod:`.masked_consistency`);

then one optimizer step. Step 2 (the original's debug flag) and step 10 (debug figures) have no numeric effect:
here the step keeps its tensors (:class:`DACSVisuals`) in :attr:`UDAStepTrainer.visuals` on every
``UDA.DEBUG_IMG_INTERVAL``-th iteration for :class:`hrda_d2.engine.hooks.DebugImageHook`.

Source-only training (``UDA.METHOD source_only``) is :class:`.supervised_step.SupervisedStepTrainer` on the
source stream.

Named stages (:meth:`UDAStepTrainer.stage`, profiler ranges ``dacs/<name>``): ``ema`` (step 1), ``source``
(steps 4-5, forward and backward), ``pseudo_labels`` (step 6), ``mix`` (steps 7-8), ``mixed`` (step 9, forward
and backward), ``masked`` (MIC, forward and backward), ``optimizer``.

Gradients: the student is called through its (possibly DDP-wrapped) ``__call__`` with keyword arguments
(``model(images=..., sem_seg=..., weight=...)``). The passes before the last one of the
iteration (source; mixed when MIC follows) run under DDP's ``no_sync``, so one all-reduce per iteration
synchronises the summed gradients (:meth:`UDAStepTrainer.run_pass`, from :meth:`DACSStepTrainer.pass_plan`). The teacher and the ImageNet model
are separate module instances outside the optimizer; their parameters have ``requires_grad=False``.

Metrics: the loss terms go through Detectron2's ``write_metrics`` (``total_loss`` = their sum); accuracies,
the pseudo-label confidence fraction, the EMA coefficient and the number of feature-distance cells are
written to the event storage as non-loss scalars. A non-finite loss term stops training with a
``FloatingPointError`` naming the term and the iteration. Reading a value on the host waits for the device,
so both happen only every ``metrics_period`` iterations (SOLVER.METRICS_PERIOD) and at the last one; in
between the step queues its work without a single host synchronisation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from torch import nn

from ..modeling.meta_arch.crop_utils import crop
from .class_mix import class_mix_batch, class_mix_masks
from .feature_distance import imnet_feature_distance_loss
from .masked_consistency import MaskedImageConsistency, MaskedLosses
from .pseudo_labels import EMATeacher, PseudoLabels
from .step_base import StudentLosses, UDAStepTrainer, amp_dtype_from_config, prefixed_losses, step_config
from .strong_augmentation import StrongAugmentation, StrongAugmentationDraws

__all__ = [
    "DACSStepTrainer",
    "DACSVisuals",
    "FeatureDistance",
    "MixedBatch",
    "PseudoLabels",
    "SourceOutputs",
    "StudentLosses",
    "amp_dtype_from_config",
]


@dataclass
class SourceOutputs(StudentLosses):
    """The source forward (docs/method.md §7.2 step 4): ``loss_src_*`` / ``src_*`` and its inputs and features.

    images: ``N x 3 x H x W`` normalised source images. labels: ``N x H x W`` int64 source labels.
    features: the backbone maps at ``MODEL.HRDA.FEATURE_SCALE``, with their graph (for step 5).
    scale_features: HRDA: the maps of every scale (context, detail crop), for ``UDA.FD.ALL_SCALES``.
    crop_box: HRDA: the detail crop of this forward ``(y1, y2, x1, x2)``, else None.
    """

    images: torch.Tensor
    labels: torch.Tensor
    features: Dict[str, torch.Tensor]
    scale_features: List[Dict[str, torch.Tensor]] = field(default_factory=list)
    crop_box: Optional[Sequence[int]] = None


@dataclass
class FeatureDistance:
    """The ImageNet feature distance (step 5): ``loss`` (0-dim, ``UDA.FD.LAMBDA`` applied) and the number of
    selected feature cells ``num_cells``."""

    loss: torch.Tensor
    num_cells: int


@dataclass
class MixedBatch:
    """ClassMix of source and target (steps 7-8): ``images`` ``N x 3 x H x W`` (strongly augmented), ``labels``
    ``N x H x W`` int64, ``weight`` ``N x H x W`` float32, ``masks`` ``N x 1 x H x W`` int64 (1 = source pixel)."""

    images: torch.Tensor
    labels: torch.Tensor
    weight: torch.Tensor
    masks: torch.Tensor


@dataclass
class DACSVisuals:
    """The detached tensors of a DACS debug iteration (docs/method.md §7.2 step 10), for the debug-image hook.

    source_image, target_image, mixed_image: ``N x 3 x H x W`` normalised; source_label, pseudo_label,
    mixed_label: ``N x H x W`` int64; pseudo_weight: ``N x H x W`` float32; mix_mask: ``N x 1 x H x W`` (1 = source
    pixel); with MIC: masked_image ``M x 3 x H x W`` and masked_label ``M x H x W`` (else None).
    """

    source_image: torch.Tensor
    source_label: torch.Tensor
    target_image: torch.Tensor
    pseudo_label: torch.Tensor
    pseudo_weight: torch.Tensor
    mix_mask: torch.Tensor
    mixed_image: torch.Tensor
    mixed_label: torch.Tensor
    masked_image: Optional[torch.Tensor] = None
    masked_label: Optional[torch.Tensor] = None

    @classmethod
    def of(cls, source: "SourceOutputs", pseudo: PseudoLabels, mixed: MixedBatch,
           masked: Optional[MaskedLosses]) -> "DACSVisuals":
        return cls(source.images.detach(), source.labels.detach(), pseudo.target_images.detach(),
                   pseudo.label.detach(), pseudo.weight.detach(), mixed.masks.detach(), mixed.images.detach(),
                   mixed.labels.detach(), None if masked is None else masked.batch.images,
                   None if masked is None else masked.batch.labels)


class DACSStepTrainer(UDAStepTrainer):
    """The DACS iteration (``run_step``) on :class:`UDAStepTrainer` (the workflow around it: ``HRDATrainer``).

    Built from a config, ``DACSStepTrainer(cfg, model=..., data_loader=..., optimizer=..., teacher=...,
    imnet_model=...)``, or from explicit arguments:

    Args:
        model, data_loader, optimizer, step_options (amp_dtype, grad_scaler, metrics_period, max_iter,
            checkpoint_period, stage_listener, check_gradients, skip_nonfinite_steps): as :class:`UDAStepTrainer`;
            ``data_loader`` yields ``(source_batch, target_batch)`` pairs of mapper dicts.
        teacher: the EMA teacher's module (same architecture as the student).
        imnet_model: frozen ImageNet-initialised model for the feature distance, or None when ``fd_lambda == 0``.
        strong_augmentation: DACS colour jitter / blur.
        alpha: ``UDA.ALPHA``. pseudo_threshold: ``UDA.PSEUDO_THRESHOLD``.
        pseudo_ignore_top, pseudo_ignore_bottom: ``UDA.PSEUDO_WEIGHT_IGNORE_TOP/BOTTOM``.
        fd_lambda, fd_classes, fd_min_ratio: ``UDA.FD.*``.
        fd_feature: ``UDA.FD.FEATURE``, the backbone map of the feature distance ("" = the deepest, i.e. the
            smallest map; res5 of MiT).
        fd_all_scales: ``UDA.FD.ALL_SCALES``: the distance on every HRDA scale (summed), not only FEATURE_SCALE.
        num_classes, ignore_value: label space.
        debug_interval: every this many iterations the step keeps its tensors (:class:`DACSVisuals`) in
            :attr:`visuals` for the debug-image hook (0 = never).
        mic: MIC (``UDA.MIC.ENABLED``) on the DACS pseudo-labels, or None.
    """

    stage_prefix = "dacs"

    @configurable
    def __init__(
        self,
        model: nn.Module,
        data_loader,
        optimizer: torch.optim.Optimizer,
        *,
        teacher: nn.Module,
        imnet_model: Optional[nn.Module],
        strong_augmentation: StrongAugmentation,
        alpha: float = 0.999,
        pseudo_threshold: float = 0.968,
        pseudo_ignore_top: int = 0,
        pseudo_ignore_bottom: int = 0,
        fd_lambda: float = 0.005,
        fd_classes: Sequence[int] = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18),
        fd_min_ratio: float = 0.75,
        fd_feature: str = "",
        fd_all_scales: bool = False,
        num_classes: int = 19,
        ignore_value: int = 255,
        debug_interval: int = 0,
        mic: Optional[MaskedImageConsistency] = None,
        **step_options: Any,
    ) -> None:
        super().__init__(model, data_loader, optimizer, **step_options)
        self.ema_teacher = EMATeacher(teacher, alpha=alpha, pseudo_threshold=pseudo_threshold,
                                      pseudo_ignore_top=pseudo_ignore_top, pseudo_ignore_bottom=pseudo_ignore_bottom)
        self.mic = mic
        self.imnet_model = imnet_model.requires_grad_(False) if imnet_model is not None and fd_lambda > 0 else None
        self.strong_augmentation = strong_augmentation
        self.fd_lambda = fd_lambda
        self.fd_classes = list(fd_classes)
        self.fd_min_ratio = fd_min_ratio
        self.fd_feature = fd_feature
        self.fd_all_scales = bool(fd_all_scales)
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.debug_interval = debug_interval

    @classmethod
    def from_config(cls, cfg, model: nn.Module, data_loader, optimizer: torch.optim.Optimizer, *,
                    teacher: nn.Module, imnet_model: Optional[nn.Module]) -> Dict[str, Any]:
        """Constructor arguments of the step of ``cfg`` (``UDA.*``, ``SOLVER.AMP.*``, ``SOLVER.METRICS_PERIOD``)
        for the given student, loader, optimizer and models."""
        return {
            "model": model,
            "data_loader": data_loader,
            "optimizer": optimizer,
            "teacher": teacher,
            "imnet_model": imnet_model,
            "strong_augmentation": StrongAugmentation(cfg),
            "alpha": cfg.UDA.ALPHA,
            "pseudo_threshold": cfg.UDA.PSEUDO_THRESHOLD,
            "pseudo_ignore_top": cfg.UDA.PSEUDO_WEIGHT_IGNORE_TOP,
            "pseudo_ignore_bottom": cfg.UDA.PSEUDO_WEIGHT_IGNORE_BOTTOM,
            "fd_lambda": cfg.UDA.FD.LAMBDA,
            "fd_classes": cfg.UDA.FD.CLASSES,
            "fd_min_ratio": cfg.UDA.FD.SCALE_MIN_RATIO,
            "fd_feature": cfg.UDA.FD.FEATURE,
            "fd_all_scales": cfg.UDA.FD.ALL_SCALES,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "debug_interval": cfg.UDA.DEBUG_IMG_INTERVAL,
            "mic": MaskedImageConsistency(cfg) if cfg.UDA.MIC.ENABLED else None,
            **step_config(cfg, model),
        }

    # ------------------------------------------------------------------------------------------------------
    @property
    def teacher(self) -> nn.Module:
        """The EMA teacher's module."""
        return self.ema_teacher.model

    def pass_plan(self):
        """The student's passes: source, mixed, and with MIC masked (the last one all-reduces)."""
        return [(name, self.model) for name in ("source", "mixed", "masked")[:3 if self.mic is not None else 2]]

    def run_step(self) -> None:
        it = self.start_step()
        source_batch, target_batch = it.data
        self.update_teacher(it, self.ema_teacher)  # step 1
        draws = self.strong_augmentation.draw()  # step 3
        source = self.run_pass(it, "source", lambda: self.source_pass(source_batch))  # steps 4-5
        with self.stage("pseudo_labels"):
            pseudo = self.pseudo_labels(target_batch)  # step 6
        with self.stage("mix"):
            masks = class_mix_masks(source.labels)  # step 7
            mixed_batch = self.mix(masks, source, pseudo, draws)  # step 8
        self.run_pass(it, "mixed", lambda: self.mixed_forward(mixed_batch))  # step 9
        it.scalars["pseudo_confident_fraction"] = pseudo.confident_fraction
        masked = None
        if self.mic is not None:  # MIC, after step 9 (docs/method.md §17.1)
            masked = self.run_pass(it, "masked", lambda: self.mic.forward(self.model, source, None, self.autocast,
                                                                          pseudo))
        if self.debug_interval > 0 and self.iter % self.debug_interval == 0:
            it.visuals = DACSVisuals.of(source, pseudo, mixed_batch, masked)
        self.finish_step(it)

    # ------------------------------------------------------------------------------------------ the steps
    def source_pass(self, source_batch: List[Dict[str, Any]]) -> SourceOutputs:
        """Steps 4-5: :meth:`source_forward`, with the feature distance (:meth:`feature_distance`) added as
        ``loss_imnet_feat_dist`` (and its ``imnet_fd_cells``) when there is an ImageNet model."""
        source = self.source_forward(source_batch)
        if self.imnet_model is not None:
            distance = self.feature_distance(source)
            source.losses["loss_imnet_feat_dist"] = distance.loss
            source.metrics["imnet_fd_cells"] = distance.num_cells
        return source

    def source_forward(self, source_batch: List[Dict[str, Any]]) -> SourceOutputs:
        """Step 4: the student's training forward on the source batch (a random detail crop, NumPy)."""
        forward = self.labelled_forward(source_batch, "src_")
        return SourceOutputs(forward.losses, forward.metrics, images=forward.images, labels=forward.labels,
                             features=forward.outputs.features, scale_features=forward.outputs.scale_features,
                             crop_box=forward.outputs.crop_box)

    def feature_distance(self, source: SourceOutputs) -> FeatureDistance:
        """Step 5: ImageNet feature distance on the map ``fd_feature`` (default: the deepest) of the source
        forward against the frozen ImageNet model's (eval mode, no gradient). With ``fd_all_scales`` (HRDA, the
        original's ``feature_scale='all'``): the SUM over the scales of the distances of the context features (whole
        image) and the detail crop's (labels cut with the same box), as the original adds them."""
        self.imnet_model.eval()
        if not self.fd_all_scales:
            with torch.no_grad(), self.autocast():
                imnet_features = self.imnet_model.extract_features(source.images)
            return self._distance([(source.features, imnet_features, source.labels)])
        with torch.no_grad(), self.autocast():
            imnet_scales = self.imnet_model.extract_scale_features(source.images, source.crop_box)
        detail_labels = source.labels if source.crop_box is None else crop(source.labels, source.crop_box)
        return self._distance(list(zip(source.scale_features, imnet_scales, (source.labels, detail_labels))))

    def _distance(self, scales) -> FeatureDistance:
        """``sum_s FD(student_s, imnet_s, labels_s)`` over ``(features, ImageNet features, labels)`` triples."""
        losses, cells = [], 0
        for features, imnet_features, labels in scales:
            name = self.fd_feature
            if not name:  # the smallest map, the last of equal size (res5 of MiT: the original's last level)
                name = min(reversed(list(features)), key=lambda k: features[k].shape[-2] * features[k].shape[-1])
            elif name not in features:
                raise KeyError(f"UDA.FD.FEATURE={name!r} is not a backbone output; the backbone returns "
                               f"{list(features)}")
            loss, num_cells = imnet_feature_distance_loss(
                features[name].float(), imnet_features[name].float(), labels, self.fd_classes, self.num_classes,
                self.fd_min_ratio, self.fd_lambda, self.ignore_value)
            losses.append(loss)
            cells += num_cells
        return FeatureDistance(losses[0] if len(losses) == 1 else sum(losses), cells)

    def pseudo_labels(self, target_batch: List[Dict[str, Any]]) -> PseudoLabels:
        """Step 6: the teacher (pseudo-label mode: no dropout / drop-path, train-mode BN) on the target batch,
        HR slide inference, thresholded confidence weight times the margin mask (``valid_pseudo_mask``)."""
        target_images, valid_mask = self.target_images(target_batch)
        return self.ema_teacher.pseudo_labels(target_images, valid_mask, self.autocast)

    def mix(self, masks: torch.Tensor, source: SourceOutputs, pseudo: PseudoLabels,
            draws: StrongAugmentationDraws) -> MixedBatch:
        """Step 8: ClassMix of images / labels / weights with the step-7 ``masks`` (``N x 1 x H x W``), then the
        strong augmentation of the mixed images with the step-3 ``draws``."""
        images, labels, weight = class_mix_batch(
            masks, source.images, pseudo.target_images, source.labels, pseudo.label, pseudo.weight)
        return MixedBatch(self.strong_augmentation(images, draws), labels, weight, masks)

    def mixed_forward(self, mixed: MixedBatch) -> StudentLosses:
        """Step 9: the student's training forward on the mixed batch (a new detail crop) -> ``loss_mix_*``."""
        with self.autocast():
            outputs = self.model(images=mixed.images, sem_seg=mixed.labels, weight=mixed.weight)
        return StudentLosses(prefixed_losses(outputs.losses, "mix_"),
                             {f"mix_{k}": v for k, v in outputs.metrics.items()})
