"""The VFM-UDA / VFM-UDA++ iteration (``UDA.METHOD: "vfm_uda"``, docs/method.md §22).

One iteration, in the originals' order (vfm-uda ``UDAVITGeneric.training_step``, VFM-UDA++ ``UDA.training_step``):

1. the loader's 0..255 RGB crops to 0..1; horizontal flips of the source batch, then of the target batch
   (``UDA.VFM.FLIP``: per image or one draw per batch; labels flipped with their images; the target's pseudo-label
   margin mask is NOT flipped, as the original's ignore mask);
2. the source batch's colour augmentation (weak, or VFM-UDA++'s strong with ``UDA.VFM.STRONG_SOURCE_AUG``);
3. the EMA teacher's pseudo-labels on the (unaugmented) target batch with flip test-time augmentation
   (:func:`flip_averaged_pseudo_labels`);
4. ClassMix: class masks from the source labels (NumPy RNG), the target batch weakly jittered, mixed with the
   UNAUGMENTED source batch; the mixed images get the "uda" augmentation (jitter 0.2, blur);
5. passes (each one backward, :meth:`UDAStepTrainer.run_pass`): ``source`` (augmented source, mean CE over the
   labelled pixels), ``mixed`` (weighted CE averaged over all pixels), ``masked`` (the target batch with fresh
   "uda" augmentation, token- or block-masked, pseudo-labels and weights; ``UDA.VFM.TOKEN_MASK_RATIO > 0``),
   ``fd_source`` / ``fd_target`` (VFM-UDA++: frozen-DINOv2 feature distance of the flipped, unaugmented batch,
   the student seeing it weakly jittered);
6. one optimizer step, then the teacher's EMA update (:func:`ema_update_after_step_`).

Random decisions are drawn by the pure functions of :mod:`.vfm_augmentation` / :mod:`.masking` in the originals'
order, all at once by :meth:`VFMUDAStepTrainer.draw_decisions` (one :class:`VFMDecisions` per iteration, which the
rest of the step only applies; a test replays decisions recorded from the original by overriding that method); the
step keeps nothing between iterations but the models, the optimizer and the RNG streams.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from ..config import check_choice
from .class_mix import class_mix_masks, mix_with_mask
from .ema import ema_alpha, set_pseudo_label_mode
from .feature_distance import DistillFeatureHead, FrozenDINOv2Features, distill_feature_loss
from .masking import block_mask, token_mask
from .step_base import StudentLosses, UDAStepTrainer, prefixed_losses, stack_field, stack_images, step_config, \
    unwrap_model
from .vfm_augmentation import (STRONG, UDA, WEAK, AugmentationDecision, apply_batch_augmentation, apply_flips,
                               blur_kernel_size, draw_batch_augmentation, draw_flips)

__all__ = ["VFMBatch", "VFMDecisions", "VFMPseudoLabels",
           "VFMUDAStepTrainer", "ema_update_after_step_",
           "flip_averaged_pseudo_labels", "vfm_mix"]


# ---------------------------------------------------------------------------------------------- pure pieces
@torch.no_grad()
def ema_update_after_step_(teacher: nn.Module, student: nn.Module, alpha: float, buffers: bool) -> None:
    """``t <- t * alpha + (1 - alpha) * s`` in place for every parameter pair (``parameters()`` order), and with
    ``buffers`` for every floating-point buffer pair (vfm-uda averages buffers too, VFM-UDA++ does not)."""
    pairs = list(zip(teacher.parameters(), student.parameters()))
    if buffers:
        pairs += [(t, s) for t, s in zip(teacher.buffers(), student.buffers()) if t.is_floating_point()]
    for t, s in pairs:
        t.mul_(alpha).add_((1 - alpha) * s.detach())


@torch.no_grad()
def copy_into_teacher_(teacher: nn.Module, student: nn.Module) -> None:
    """The originals' starting teacher (a deep copy of the student): every parameter and buffer copied."""
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)


@dataclass
class VFMPseudoLabels:
    """The teacher's pseudo-labels on a target batch (step 3): ``label`` ``N x H x W`` int64, ``weight``
    ``N x H x W`` float32 (one scalar, the share of confident pixels, zero outside the margin mask),
    ``confident_fraction`` that scalar (0-dim tensor)."""

    label: torch.Tensor
    weight: torch.Tensor
    confident_fraction: torch.Tensor


def flip_averaged_pseudo_labels(logits: torch.Tensor, flipped_logits: torch.Tensor, threshold: float,
                                valid_mask: Optional[torch.Tensor] = None) -> VFMPseudoLabels:
    """Step 3 from the teacher's ``N x C x H x W`` logits of the batch and of the flipped batch (already flipped
    back): ``p = (softmax(logits) + softmax(flipped_logits)) / 2``, label ``argmax p``, weight the share over the
    whole batch of pixels with ``max p >= threshold`` (float32 mean), set to 0 where ``valid_mask`` (``N x H x W``
    0/1, the original's ignore mask != 255) is 0."""
    probs = (torch.softmax(logits.float(), dim=1) + torch.softmax(flipped_logits.float(), dim=1)) / 2
    max_prob, _ = torch.max(probs, dim=1)
    label = torch.argmax(probs, dim=1)
    fraction = torch.mean(max_prob.ge(threshold).float())
    weight = fraction * torch.ones_like(max_prob)
    if valid_mask is not None:
        weight = torch.where(valid_mask.to(weight.device).bool(), weight, torch.zeros_like(weight))
    return VFMPseudoLabels(label, weight, fraction)


def vfm_mix(masks: torch.Tensor, source_images: torch.Tensor, target_images: torch.Tensor,
            source_labels: torch.Tensor, pseudo: VFMPseudoLabels,
            ignore_value: int = 255) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ClassMix of step 4 (before the "uda" augmentation): ``masks`` ``N x 1 x H x W`` (1 = source pixel) choose
    the source image / label / weight ``label != ignore_value`` or the target image / pseudo-label / pseudo weight.
    Returns images ``N x 3 x H x W``, labels ``N x H x W`` int64, weights ``N x H x W`` float32."""
    images = mix_with_mask(masks, source_images, target_images)
    labels = mix_with_mask(masks, source_labels.long(), pseudo.label.long())
    gt_weight = (source_labels != ignore_value).to(pseudo.weight)
    weight = mix_with_mask(masks, gt_weight, pseudo.weight).to(pseudo.weight.dtype)
    return images, labels, weight


@dataclass
class VFMDecisions:
    """Every random decision of one iteration (docs/method.md §22.1), drawn by
    :meth:`VFMUDAStepTrainer.draw_decisions` in the originals' order (the fields' order):

    source_flips, target_flips: one bool per image (:func:`~.vfm_augmentation.draw_flips`);
    source_aug: the source batch's colour augmentation (weak or strong), one decision per image;
    class_masks: ``N x 1 x H x W`` int64 ClassMix masks of the FLIPPED source labels (1 = source pixel; NumPy RNG);
    target_weak: the weak jitter of the target batch before mixing; mixed_aug: the "uda" augmentation of the mixed
        images; masked_aug: the "uda" augmentation of the masked pass's target batch (None without masked pass);
    mask: the masked pass's mask: ``N x h x w`` bool token mask (True = masked, the backbone's token grid) or
        ``N x 1 x H x W`` float 0/1 block mask (1 = kept), on the student's device; None without masked pass;
    fd_source_weak, fd_target_weak: the weak jitter of the feature-distance batches (None without that pass).
    """

    source_flips: List[bool]
    target_flips: List[bool]
    source_aug: List[AugmentationDecision]
    class_masks: torch.Tensor
    target_weak: List[AugmentationDecision]
    mixed_aug: List[AugmentationDecision]
    masked_aug: Optional[List[AugmentationDecision]] = None
    mask: Optional[torch.Tensor] = None
    fd_source_weak: Optional[List[AugmentationDecision]] = None
    fd_target_weak: Optional[List[AugmentationDecision]] = None


@dataclass
class VFMBatch:
    """Step 1: source / target images ``N x 3 x H x W`` float 0..1 after the flips, source labels ``N x H x W``
    int64 (flipped), the target's margin mask ``N x H x W`` (unflipped; None without one), the flip decisions."""

    source_images: torch.Tensor
    source_labels: torch.Tensor
    target_images: torch.Tensor
    target_valid: Optional[torch.Tensor]
    source_flips: List[bool]
    target_flips: List[bool]


# --------------------------------------------------------------------------------------------------- the step
class VFMUDAStepTrainer(UDAStepTrainer):
    """The VFM-UDA / VFM-UDA++ iteration (module docstring) on :class:`UDAStepTrainer`.

    Built from a config, ``VFMUDAStepTrainer(cfg, model=..., data_loader=..., optimizer=..., teacher=...,
    fd_model=..., fd_head=...)``, or from explicit arguments:

    Args:
        model, data_loader, optimizer, step_options: as :class:`UDAStepTrainer`; ``data_loader`` yields
            ``(source_batch, target_batch)`` pairs of mapper dicts (``image`` 0..255 RGB, source ``sem_seg``, target
            ``valid_pseudo_mask`` when INPUT.TARGET.PSEUDO_MARGINS is set); ``optimizer`` holds the student's and
            the distill head's parameters.
        teacher: the EMA teacher (the student's architecture); a copy of the student at iteration 0.
        fd_model: the frozen DINOv2 (:class:`~.feature_distance.FrozenDINOv2Features`), or None (no distance).
        fd_head: the trained :class:`~.feature_distance.DistillFeatureHead`, with ``fd_model``.
        pixel_mean, pixel_std: RGB 0..255 (``MODEL.PIXEL_MEAN/STD``); the 0..1 images are normalised with them / 255.
        ema_alpha, ema_buffers, pseudo_threshold, mask_ratio, strong_source_aug, flip, fd_weight_source,
            fd_weight_target, fd_feature: ``UDA.VFM.*``.
        mask_type, block_size: ``UDA.MIC.MASK_TYPE`` / ``UDA.MIC.BLOCK_SIZE`` of the masked pass.
        aug_img_size: the image size of the blur kernel (:func:`~.vfm_augmentation.blur_kernel_size`).
        ignore_value: ``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``.
    """

    stage_prefix = "vfm_uda"

    @configurable
    def __init__(
        self,
        model: nn.Module,
        data_loader,
        optimizer: torch.optim.Optimizer,
        *,
        teacher: nn.Module,
        fd_model: Optional[FrozenDINOv2Features] = None,
        fd_head: Optional[DistillFeatureHead] = None,
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
        ema_alpha: float = 0.999,
        ema_buffers: bool = True,
        pseudo_threshold: float = 0.968,
        mask_ratio: float = 0.7,
        mask_type: str = "tokens",
        block_size: int = 64,
        strong_source_aug: bool = False,
        flip: str = "per_image",
        fd_weight_source: float = 0.0,
        fd_weight_target: float = 0.0,
        fd_feature: str = "vit_tokens",
        aug_img_size: int = 1024,
        ignore_value: int = 255,
        **step_options: Any,
    ) -> None:
        super().__init__(model, data_loader, optimizer, **step_options)
        self.teacher = teacher.requires_grad_(False)
        use_fd = fd_weight_source > 0 or fd_weight_target > 0
        if use_fd and (fd_model is None or fd_head is None):
            raise ValueError("UDA.VFM.FD_WEIGHT_SOURCE/TARGET > 0 needs the frozen DINOv2 and the distill head "
                             "(fd_model=, fd_head=; HRDATrainer builds them)")
        self.fd_model = fd_model.requires_grad_(False) if use_fd else None
        self.fd_head = fd_head if use_fd else None
        self.pixel_mean01 = [float(m) / 255.0 for m in pixel_mean]
        self.pixel_std01 = [float(s) / 255.0 for s in pixel_std]
        self.ema_alpha = float(ema_alpha)
        self.ema_buffers = bool(ema_buffers)
        self.pseudo_threshold = float(pseudo_threshold)
        self.mask_ratio = float(mask_ratio)
        self.mask_type = check_choice("UDA.MIC.MASK_TYPE", mask_type)
        self.block_size = int(block_size)
        self.source_aug = STRONG if strong_source_aug else WEAK
        self.per_image_flip = check_choice("UDA.VFM.FLIP", flip) == "per_image"
        self.fd_weight_source = float(fd_weight_source)
        self.fd_weight_target = float(fd_weight_target)
        self.fd_feature = check_choice("UDA.VFM.FD_FEATURE", fd_feature)
        self.kernel_size = blur_kernel_size(int(aug_img_size))
        self.ignore_value = int(ignore_value)

    @classmethod
    def from_config(cls, cfg, model: nn.Module, data_loader, optimizer: torch.optim.Optimizer, *,
                    teacher: nn.Module, fd_model: Optional[nn.Module] = None,
                    fd_head: Optional[nn.Module] = None) -> Dict[str, Any]:
        vfm = cfg.UDA.VFM
        return {
            "model": model, "data_loader": data_loader, "optimizer": optimizer, "teacher": teacher,
            "fd_model": fd_model, "fd_head": fd_head,
            "pixel_mean": list(cfg.MODEL.PIXEL_MEAN), "pixel_std": list(cfg.MODEL.PIXEL_STD),
            "ema_alpha": vfm.EMA_ALPHA, "ema_buffers": vfm.EMA_BUFFERS, "pseudo_threshold": vfm.PSEUDO_THRESHOLD,
            "mask_ratio": vfm.TOKEN_MASK_RATIO, "mask_type": cfg.UDA.MIC.MASK_TYPE,
            "block_size": cfg.UDA.MIC.BLOCK_SIZE, "strong_source_aug": vfm.STRONG_SOURCE_AUG, "flip": vfm.FLIP,
            "fd_weight_source": vfm.FD_WEIGHT_SOURCE, "fd_weight_target": vfm.FD_WEIGHT_TARGET,
            "fd_feature": vfm.FD_FEATURE,
            "aug_img_size": vfm.AUG_IMG_SIZE or int(cfg.INPUT.SOURCE.CROP_SIZE[-1]),
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            **step_config(cfg, model),
        }

    # ------------------------------------------------------------------------------------------------------
    def pass_plan(self):
        """source, mixed, masked (mask ratio > 0), fd_source, fd_target (weights > 0), all into the student."""
        names = ["source", "mixed"]
        if self.mask_ratio > 0:
            names.append("masked")
        if self.fd_weight_source > 0:
            names.append("fd_source")
        if self.fd_weight_target > 0:
            names.append("fd_target")
        return [(name, self.model) for name in names]

    def normalize(self, images01: torch.Tensor) -> torch.Tensor:
        """``(x - mean / 255) / (std / 255)`` of ``N x 3 x H x W`` 0..1 images (torchvision's ``Normalize``)."""
        mean = torch.as_tensor(self.pixel_mean01, dtype=images01.dtype, device=images01.device).view(-1, 1, 1)
        std = torch.as_tensor(self.pixel_std01, dtype=images01.dtype, device=images01.device).view(-1, 1, 1)
        return (images01 - mean) / std

    def run_step(self) -> None:
        it = self.start_step()
        source_batch, target_batch = it.data
        if self.iter == 0:  # the originals' teacher starts as a copy of the student
            copy_into_teacher_(self.teacher, self.student)
        with self.stage("prepare"):
            device = self.student.device
            labels = stack_field(source_batch, "sem_seg", device).long()
            target_hw = tuple(target_batch[0]["image"].shape[-2:])
            decisions = self.draw_decisions(labels, len(target_batch), target_hw)
            batch = self.prepare(source_batch, target_batch, decisions)  # step 1
            source_aug = self.augment(batch.source_images, decisions.source_aug)
        with self.stage("pseudo_labels"):
            pseudo = self.pseudo_labels(batch.target_images, batch.target_valid)  # step 3
        with self.stage("mix"):
            mixed_images, mixed_labels, mixed_weight = self.mix(batch, pseudo, decisions)  # step 4
        self.run_pass(it, "source", lambda: self.supervised(source_aug, batch.source_labels, None, "src_"))
        self.run_pass(it, "mixed", lambda: self.supervised(mixed_images, mixed_labels, mixed_weight, "mix_"))
        if self.mask_ratio > 0:
            self.run_pass(it, "masked", lambda: self.masked(batch.target_images, pseudo, decisions))
        if self.fd_weight_source > 0:
            self.run_pass(it, "fd_source", lambda: self.feature_distance(
                batch.source_images, self.fd_weight_source, "fd_src", decisions.fd_source_weak))
        if self.fd_weight_target > 0:
            self.run_pass(it, "fd_target", lambda: self.feature_distance(
                batch.target_images, self.fd_weight_target, "fd_trg", decisions.fd_target_weak))
        it.scalars["pseudo_confident_fraction"] = pseudo.confident_fraction
        # the originals compute it AFTER the step from Lightning's global_step, which in manual optimisation counts
        # the optimizer steps done, this one included: the first iteration gives 0.5
        alpha = ema_alpha(self.iter + 1, self.ema_alpha)
        it.scalars["ema_alpha"] = alpha
        self.sync_head_gradients()
        self.finish_step(it)
        with self.stage("ema"):  # step 6, after the optimizer step
            ema_update_after_step_(self.teacher, self.student, alpha, self.ema_buffers)

    @torch.no_grad()
    def draw_decisions(self, source_labels: torch.Tensor, target_size: int,
                       target_hw: Tuple[int, int]) -> VFMDecisions:
        """Every random decision of the iteration, in the originals' order (docs/method.md §22.1): flips (source,
        target; CPU torch RNG), source augmentation, class masks (NumPy RNG, of the flipped ``source_labels``
        ``N x H x W``), target weak jitter, mixed "uda" augmentation, masked-pass "uda" augmentation and mask (the
        student's device RNG), the feature-distance jitters. Nothing else draws between them in the originals, so
        drawing them up front draws the same values. Override to replay given decisions."""
        n = source_labels.shape[0]
        source_flips = draw_flips(n, self.per_image_flip)
        target_flips = draw_flips(target_size, self.per_image_flip)
        source_aug = draw_batch_augmentation(self.source_aug, n)
        (flipped_labels,) = apply_flips(source_flips, source_labels)
        class_masks = class_mix_masks(flipped_labels)
        target_weak = draw_batch_augmentation(WEAK, target_size)
        mixed_aug = draw_batch_augmentation(UDA, n)
        masked_aug = mask = None
        if self.mask_ratio > 0:
            masked_aug = draw_batch_augmentation(UDA, target_size)
            mask = self.draw_mask(target_size, target_hw)
        fd_source_weak = draw_batch_augmentation(WEAK, n) if self.fd_weight_source > 0 else None
        fd_target_weak = draw_batch_augmentation(WEAK, target_size) if self.fd_weight_target > 0 else None
        return VFMDecisions(source_flips, target_flips, source_aug, class_masks, target_weak, mixed_aug, masked_aug,
                            mask, fd_source_weak, fd_target_weak)

    def draw_mask(self, batch_size: int, image_hw: Tuple[int, int]) -> torch.Tensor:
        """The masked pass's mask on the student's device: the token mask over the backbone's token grid
        (:func:`~.masking.token_mask`) or the block mask at the input size (:func:`~.masking.block_mask`)."""
        device = self.student.device
        if self.mask_type == "tokens":
            grid = unwrap_model(self.model).backbone.token_grid(tuple(image_hw))
            return token_mask(batch_size, grid, self.mask_ratio, device)
        return block_mask(batch_size, image_hw[0], image_hw[1], self.mask_ratio, self.block_size, device)

    # ------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def prepare(self, source_batch: List[Dict[str, Any]], target_batch: List[Dict[str, Any]],
                decisions: VFMDecisions) -> VFMBatch:
        """Step 1: the batches as 0..1 float images on the student's device, flipped by ``decisions``."""
        device = self.student.device
        source = stack_images(source_batch, device) / 255
        labels = stack_field(source_batch, "sem_seg", device).long()
        target = stack_images(target_batch, device) / 255
        valid = stack_field(target_batch, "valid_pseudo_mask", device) if "valid_pseudo_mask" in target_batch[0] \
            else None
        source_flips, target_flips = decisions.source_flips, decisions.target_flips
        source, labels = apply_flips(source_flips, source, labels)
        (target,) = apply_flips(target_flips, target)
        return VFMBatch(source, labels, target, valid, source_flips, target_flips)

    @torch.no_grad()
    def augment(self, images01: torch.Tensor, decisions: Sequence[AugmentationDecision]) -> torch.Tensor:
        """Per-image colour augmentation of 0..1 images with the given decisions."""
        return apply_batch_augmentation(images01, decisions, self.kernel_size)

    @torch.no_grad()
    def pseudo_labels(self, target01: torch.Tensor, valid: Optional[torch.Tensor]) -> VFMPseudoLabels:
        """Step 3: the teacher (pseudo-label mode) on the normalised target batch and on its mirror image."""
        teacher = self.teacher
        set_pseudo_label_mode(teacher)
        images = self.normalize(target01)
        with self.autocast():
            logits = teacher.generate_pseudo_label(images)
            flipped = teacher.generate_pseudo_label(images.flip(-1)).flip(-1)
        return flip_averaged_pseudo_labels(logits, flipped, self.pseudo_threshold, valid)

    @torch.no_grad()
    def mix(self, batch: VFMBatch, pseudo: VFMPseudoLabels,
            decisions: VFMDecisions) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step 4: the class masks, weak jitter of the target batch, mix with the unaugmented source batch,
        "uda" augmentation of the mixed images (all decisions given); returns 0..1 images, labels, weights."""
        masks = decisions.class_masks.to(batch.source_labels.device)
        target_weak = self.augment(batch.target_images, decisions.target_weak)
        images, labels, weight = vfm_mix(masks, batch.source_images, target_weak, batch.source_labels, pseudo,
                                         self.ignore_value)
        return self.augment(images, decisions.mixed_aug), labels, weight

    def supervised(self, images01: torch.Tensor, labels: torch.Tensor, weight: Optional[torch.Tensor],
                   prefix: str, **model_kwargs: Any) -> StudentLosses:
        """The student's training forward on normalised ``images01`` with ``labels`` (and pixel ``weight``)."""
        images = self.normalize(images01)
        with self.autocast():
            outputs = self.model(images=images, sem_seg=labels, weight=weight, **model_kwargs)
        return StudentLosses(prefixed_losses(outputs.losses, prefix),
                             {f"{prefix}{k}": v for k, v in outputs.metrics.items()})

    def masked(self, target01: torch.Tensor, pseudo: VFMPseudoLabels, decisions: VFMDecisions) -> StudentLosses:
        """The masked pass: fresh "uda" augmentation of the target batch, then the token mask (passed to the
        backbone) or the block mask (multiplied into the normalised images), both from ``decisions``."""
        images = self.augment(target01, decisions.masked_aug)
        if self.mask_type == "tokens":
            return self.supervised(images, pseudo.label, pseudo.weight, "masked_", token_mask=decisions.mask)
        normalized = self.normalize(images)
        with self.autocast():
            outputs = self.model(images=normalized * decisions.mask.to(normalized), sem_seg=pseudo.label,
                                 weight=pseudo.weight)
        return StudentLosses(prefixed_losses(outputs.losses, "masked_"),
                             {f"masked_{k}": v for k, v in outputs.metrics.items()})

    def feature_distance(self, images01: torch.Tensor, loss_weight: float, name: str,
                         weak_decisions: Sequence[AugmentationDecision]) -> StudentLosses:
        """VFM-UDA++'s frozen-DINOv2 distance of a 0..1 batch: the frozen map of the normalised batch, the student's
        ``fd_feature`` map of the batch weakly jittered by ``weak_decisions`` through the distill head,
        ``loss_weight`` x :func:`~.feature_distance.distill_feature_loss` as ``loss_<name>``."""
        frozen = self.fd_model(self.normalize(images01))
        weak = self.augment(images01, weak_decisions)
        with self.autocast():
            outputs = self.model(images=self.normalize(weak))
            projected = self.fd_head(outputs.features[self.fd_feature], tuple(frozen.shape[-2:]))
        loss = distill_feature_loss(projected.float(), frozen.float()) * loss_weight
        return StudentLosses({f"loss_{name}": loss}, {})

    def sync_head_gradients(self) -> None:
        """Under DDP, the distill head (not wrapped) gets its gradients averaged over the ranks here."""
        if self.fd_head is None or not torch.distributed.is_available() or not torch.distributed.is_initialized():
            return
        world = torch.distributed.get_world_size()
        if world == 1:
            return
        for p in self.fd_head.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(world)

    def named_trainable_parameters(self):
        yield from self.student.named_parameters()
        if self.fd_head is not None:
            yield from (("fd_head." + n, p) for n, p in self.fd_head.named_parameters())
