"""MIC, masked image consistency (Hoyer et al., CVPR'23): one extra pass of a UDA step (``docs/method.md §17``).

After the method's own passes and before the optimizer step, the student is trained once more on a *masked*
batch (:mod:`.masking`) with pseudo-labels and pixel weights (the weights after the pseudo-label margin mask).
:class:`MaskedImageConsistency` is the one component every method uses; its pseudo-labels come from

* the method's teacher (DACS, §17.1): the DACS pseudo-labels are passed in (the original's ``mask_alpha='same'``,
  ``mask_pseudo_threshold='same'``), MIC has no teacher of its own;
* MIC's own EMA teacher (AdvSeg, MinEnt, §17.6; the original's ``MaskingConsistencyModule(require_teacher=True)``):
  an :class:`~.pseudo_labels.EMATeacher` with ``UDA.ALPHA``, EMA-updated by the step at the START of the
  iteration (iteration 0: a copy of the student), predicting on the images of the step's target forward
  (pseudo-label mode, ``UDA.PSEUDO_THRESHOLD``, ``UDA.PSEUDO_WEIGHT_IGNORE_TOP/BOTTOM``, the target mapper's margin
  mask); it is the trainer's ``teacher`` checkpointable, so ``--resume`` continues it exactly. The teacher draws
  nothing from the RNG streams.

Which images form the masked batch is ``UDA.MIC.MODE`` (§17.2):

=================  =========================================================  ==========================
mode               images / labels / pixel weights                            colour augmentation
=================  =========================================================  ==========================
``separatetrgaug`` the target batch / pseudo-labels / pseudo weights          yes (GTA, Synthia -> CS)
``separatetrg``    the target batch / pseudo-labels / pseudo weights          no
``separate``       source image 0 and target image 0 / label 0 and            no (CS -> ACDC, Dark Zurich)
                   pseudo-label 0 / weight 1 and pseudo weight 0
``separateaug``    as ``separate``                                            yes
``separatesrc``    the source batch / labels / no weights                     no
``separatesrcaug`` the source batch / labels / no weights                     yes
=================  =========================================================  ==========================

The colour augmentation uses FRESH decisions from Python's ``random`` (jitter draw, then blur draw; the blur
draw is made and honoured even when ``UDA.AUG.BLUR`` is False, as in the original), the DACS jitter
strength / threshold, and is applied to the whole masked batch at once: kornia ``ColorJiggle`` with per-sample
factors (torch RNG), then ONE blur sigma ``uniform(0.15, 1.15)`` for the batch (NumPy RNG). Then the block
mask is drawn (torch RNG) and the student's full HRDA ``forward_train`` (a new random detail crop, NumPy RNG)
gives the loss. ``UDA.MIC.LAMBDA`` multiplies the fused term ``loss_sem_seg`` only (the original scales
``decode.loss_seg``, not the detail term ``decode.hr.loss_seg``), §17.4.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, NamedTuple, Optional, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from torch import nn

from ..config import MIC_MODE_NAMES, check_choice
from .masking import mask_images, token_mask
from .pseudo_labels import EMATeacher, PseudoLabels
from .step_base import StudentLosses, UnlabelledForward, unwrap_model
from .strong_augmentation import BLUR_SIGMA_RANGE, StrongAugmentation

__all__ = ["MIC_MODES", "MaskedBatch", "MaskedImageConsistency", "MaskedLosses", "build_masked_batch", "with_own_teacher"]

logger = logging.getLogger(__name__)


class _ModeSpec(NamedTuple):
    images: str  # "target" | "source" | "pair" (source image 0 + target image 0)
    augment: bool


MIC_MODES: Dict[str, _ModeSpec] = {  # UDA.MIC.MODE (config/choices.py) -> which images, augmented or not
    mode: _ModeSpec("source" if "src" in mode else "target" if "trg" in mode else "pair", mode.endswith("aug"))
    for mode in MIC_MODE_NAMES
}


def _check_mode(mode: str) -> _ModeSpec:
    return MIC_MODES[check_choice("UDA.MIC.MODE", mode)]


@dataclass
class MaskedBatch:
    """The batch MIC trains on.

    images: ``M x 3 x H x W`` normalised, augmented (per mode) and block-masked images.
    labels: ``M x H x W`` int64 labels / pseudo-labels.
    weight: ``M x H x W`` float32 pixel weights, or None (unweighted source labels).
    mask: ``M x 1 x H x W`` 0/1 block mask that was multiplied into ``images`` (None with token masking).
    token_mask: ``M x h x w`` bool, the patch tokens the backbone masks (``UDA.MIC.MASK_TYPE`` "tokens"), else None.
    """

    images: torch.Tensor
    labels: torch.Tensor
    weight: Optional[torch.Tensor]
    mask: Optional[torch.Tensor]
    token_mask: Optional[torch.Tensor] = None


@dataclass
class MaskedLosses(StudentLosses):
    """MIC's pass: ``loss_masked_*`` terms with their graph, ``masked_*`` metrics, and the ``batch`` trained on."""

    batch: MaskedBatch


def build_masked_batch(
    mode: str,
    src_images: torch.Tensor,
    src_labels: torch.Tensor,
    trg_images: torch.Tensor,
    pseudo_label: torch.Tensor,
    pseudo_weight: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """The images, labels and pixel weights of ``mode`` before augmentation and masking (table above).

    Args:
        src_images, trg_images: ``N x 3 x H x W`` normalised source / target images.
        src_labels: ``N x H x W`` int64 source labels.
        pseudo_label, pseudo_weight: ``N x H x W`` DACS pseudo-labels (int64) and weights (float32, after the
            pseudo-label margin mask).

    Returns:
        ``(images, labels, weight)``: ``M x 3 x H x W``, ``M x H x W``, ``M x H x W`` or None, with ``M = N``
        (``target`` / ``source`` modes) or ``M = 2`` (``separate`` modes: source image 0 with weight 1 stacked
        with target image 0; the original requires a batch of 2 per GPU, here any batch gives its first two).
    """
    spec = _check_mode(mode)
    if spec.images == "target":
        return trg_images, pseudo_label, pseudo_weight
    if spec.images == "source":
        return src_images, src_labels, None
    images = torch.stack([src_images[0], trg_images[0]])
    labels = torch.stack([src_labels[0], pseudo_label[0].to(src_labels.dtype)])
    weight = torch.stack([torch.ones_like(pseudo_weight[0]), pseudo_weight[0]])
    return images, labels, weight


class MaskedImageConsistency:
    """MIC's pass of a UDA step (module docstring): :meth:`forward` -> ``loss_masked_*``.

    Args:
        mode: ``UDA.MIC.MODE`` (:data:`MIC_MODES`).
        mask_ratio: ``UDA.MIC.MASK_RATIO``, the share of masked blocks (a block is kept where its uniform draw is
            greater than this).
        block_size: ``UDA.MIC.BLOCK_SIZE`` in pixels.
        loss_lambda: ``UDA.MIC.LAMBDA``, weight of the fused masked loss term.
        augmentation: colour jitter / blur of the ``...aug`` modes (its own ``blur`` flag must be True: MIC always
            draws the blur decision); needed only by those modes.
        teacher: MIC's own EMA teacher (AdvSeg, MinEnt), or None: the method passes its pseudo-labels (DACS).
        mask_type: ``UDA.MIC.MASK_TYPE``: "blocks" (image blocks, :func:`~.masking.mask_images`) or "tokens" (the
            backbone's patch tokens, :func:`~.masking.token_mask` over ``backbone.token_grid``, passed to the model
            as ``token_mask``; VFM-UDA, docs/method.md §22.3).
    """

    @configurable
    def __init__(
        self,
        *,
        mode: str = "separatetrgaug",
        mask_ratio: float = 0.7,
        block_size: int = 64,
        loss_lambda: float = 1.0,
        augmentation: Optional[StrongAugmentation] = None,
        teacher: Optional[EMATeacher] = None,
        mask_type: str = "blocks",
    ):
        self.spec = _check_mode(mode)
        self.mode = mode
        if self.spec.augment and augmentation is None:
            raise ValueError(f"UDA.MIC.MODE={mode!r} colour-augments the masked batch: pass a StrongAugmentation")
        self.mask_ratio = float(mask_ratio)
        self.block_size = int(block_size)
        self.loss_lambda = float(loss_lambda)
        self.augmentation = augmentation
        self.teacher = teacher
        self.mask_type = check_choice("UDA.MIC.MASK_TYPE", mask_type)

    @classmethod
    def from_config(cls, cfg, teacher: Optional[nn.Module] = None) -> Dict[str, Any]:
        """``UDA.MIC.*``; ``teacher``: the module of MIC's own EMA teacher (``UDA.ALPHA``, ``UDA.PSEUDO_*``), or
        None (the method's pseudo-labels)."""
        augmentation = StrongAugmentation(
            pixel_mean=list(cfg.MODEL.PIXEL_MEAN),
            pixel_std=list(cfg.MODEL.PIXEL_STD),
            color_jitter_strength=cfg.UDA.AUG.COLOR_JITTER_STRENGTH,
            color_jitter_skip_threshold=cfg.UDA.AUG.COLOR_JITTER_SKIP_THRESHOLD,
            blur=True,  # MIC draws and applies its blur regardless of UDA.AUG.BLUR (§17.2)
        )
        return {
            "mode": cfg.UDA.MIC.MODE,
            "mask_ratio": cfg.UDA.MIC.MASK_RATIO,
            "block_size": cfg.UDA.MIC.BLOCK_SIZE,
            "loss_lambda": cfg.UDA.MIC.LAMBDA,
            "augmentation": augmentation,
            "teacher": EMATeacher(cfg, teacher) if teacher is not None else None,
            "mask_type": cfg.UDA.MIC.MASK_TYPE,
        }

    def forward(self, model: nn.Module, source, target: Optional[UnlabelledForward],
                autocast: Callable[[], ContextManager], pseudo: Optional[PseudoLabels] = None) -> MaskedLosses:
        """MIC's pass (the caller runs the backward): the pseudo-labels (:meth:`pseudo_labels` of the own teacher
        on ``target``'s images, adding ``masked_pseudo_confident_fraction``; without an own teacher the method's
        ``pseudo``), the masked batch of :attr:`mode` from ``source`` (``images``, ``labels`` of the step's source
        forward) and them (:meth:`masked_batch`), then the student's training forward on it through ``model``
        (the possibly DDP-wrapped student) under ``autocast()`` (:meth:`losses`)."""
        metrics: Dict[str, Any] = {}
        if self.teacher is not None:
            pseudo = self.pseudo_labels(target, autocast)
            metrics["masked_pseudo_confident_fraction"] = pseudo.confident_fraction
        elif pseudo is None:
            raise ValueError("MaskedImageConsistency without its own teacher needs the method's pseudo-labels")
        inputs = (source.images, source.labels, pseudo.target_images, pseudo.label, pseudo.weight)
        if self.mask_type == "tokens":  # the grid of the backbone's token mask (the block path's call is unchanged)
            grid = unwrap_model(model).backbone.token_grid(tuple(pseudo.target_images.shape[-2:]))
            batch = self.masked_batch(*inputs, token_grid=grid)
        else:
            batch = self.masked_batch(*inputs)
        with autocast():
            losses, forward_metrics = self.losses(model, batch)
        return MaskedLosses(losses, {**forward_metrics, **metrics}, batch)

    def pseudo_labels(self, target: UnlabelledForward, autocast: Callable[[], ContextManager]) -> PseudoLabels:
        """The own teacher's pseudo-labels on the images (and margin masks) of the step's target forward."""
        return self.teacher.pseudo_labels(target.images, target.valid_mask, autocast)

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """Colour-augment the whole ``M x 3 x H x W`` normalised batch with fresh draws (module docstring)."""
        aug = self.augmentation
        draws = aug.draw()  # Python random: jitter draw, then blur draw
        if aug.applies_color_jitter(draws):
            images = aug.color_jitter(images)  # per-sample factors, one call for the batch
        if aug.applies_blur(draws):
            sigma = float(np.random.uniform(*BLUR_SIGMA_RANGE))  # one sigma for the batch
            images = aug.gaussian_blur(images, sigma)
        return images

    @torch.no_grad()
    def masked_batch(
        self,
        src_images: torch.Tensor,
        src_labels: torch.Tensor,
        trg_images: torch.Tensor,
        pseudo_label: torch.Tensor,
        pseudo_weight: torch.Tensor,
        token_grid: Optional[Tuple[int, int]] = None,
    ) -> MaskedBatch:
        """The batch of :attr:`mode` (:func:`build_masked_batch`), augmented if the mode says so, block-masked (or,
        with token masking, with a token mask over the backbone's ``token_grid``). Inputs as in
        :func:`build_masked_batch`; nothing is modified in place."""
        images, labels, weight = build_masked_batch(
            self.mode, src_images, src_labels, trg_images, pseudo_label, pseudo_weight)
        if self.spec.augment:
            images = self.augment(images)
        if self.mask_type == "tokens":
            if token_grid is None:
                raise ValueError("UDA.MIC.MASK_TYPE 'tokens' needs the backbone's token grid (backbone.token_grid)")
            return MaskedBatch(images, labels, weight, None,
                               token_mask(images.shape[0], token_grid, self.mask_ratio, images.device))
        masked, mask = mask_images(images, self.mask_ratio, self.block_size)
        return MaskedBatch(masked, labels, weight, mask)

    def losses(self, model: nn.Module, batch: MaskedBatch) -> Tuple[Dict[str, torch.Tensor], Dict[str, float]]:
        """The student's HRDA ``forward_train`` on ``batch``: ``({loss_masked_*: tensor}, {masked_acc_*: float})``.

        ``model`` is called as ``model(images=, sem_seg=, weight=)`` (so a DDP wrapper sees
        the forward pass); ``loss_masked_sem_seg`` = ``LAMBDA x loss_sem_seg``, the other terms unscaled.
        """
        extra = {} if batch.token_mask is None else {"token_mask": batch.token_mask}
        outputs = model(images=batch.images, sem_seg=batch.labels, weight=batch.weight, **extra)
        losses = {}
        for name, value in outputs.losses.items():
            if name == "loss_sem_seg":
                value = self.loss_lambda * value
            losses[f"loss_masked_{name[len('loss_'):]}"] = value
        metrics = dict((f"masked_{k}", v) for k, v in outputs.metrics.items())  # read on metrics steps only
        return losses, metrics


def with_own_teacher(mic: Optional[MaskedImageConsistency], method: str) -> Optional[MaskedImageConsistency]:
    """``mic`` for a method without a teacher (AdvSeg, MinEnt), which must bring its own EMA teacher."""
    if mic is not None and mic.teacher is None:
        raise ValueError(f"UDA.MIC.ENABLED with {method} needs MIC's own EMA teacher: build MaskedImageConsistency "
                         f"with teacher=... (HRDATrainer does when hrda_d2.uda.uses_teacher(cfg))")
    return mic
