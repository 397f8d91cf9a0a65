"""Pseudo-labels and their pixel weights from an EMA teacher (DACS step 6; MIC's own teacher, §17.6).

Source: docs/method.md §7.2 step 6, §15 Q3, §15 Q4.
"""
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, Optional, Tuple

import torch
from detectron2.config import configurable
from torch import nn

from .ema import ema_update_, set_pseudo_label_mode

__all__ = ["EMATeacher", "PseudoLabels", "predict_pseudo_labels", "pseudo_labels_from_logits"]


@dataclass
class PseudoLabels:
    """A teacher's pseudo-labels on a target batch.

    target_images: ``N x 3 x H x W`` normalised. label: ``N x H x W`` int64. weight: ``N x H x W`` float32, the
    confident fraction (one scalar, docs/method.md §15 Q4) after the margin mask.
    """

    target_images: torch.Tensor
    label: torch.Tensor
    weight: torch.Tensor

    @property
    def confident_fraction(self) -> torch.Tensor:
        """The weight wherever the margin mask is 1 (0-dim, on the device)."""
        return self.weight.max()


def pseudo_labels_from_logits(
    logits: torch.Tensor,
    threshold: float,
    ignore_top: int = 0,
    ignore_bottom: int = 0,
    valid_pseudo_mask: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Hard pseudo-labels and the DACS pseudo weight.

    Args:
        logits: teacher logits, N x C x H x W (any float dtype; the softmax is taken in float32 on a
            detached copy).
        threshold: confidence threshold (``UDA.PSEUDO_THRESHOLD``, 0.968).
        ignore_top, ignore_bottom: number of rows at the top / bottom of every weight map set to 0
            (``UDA.PSEUDO_WEIGHT_IGNORE_TOP/BOTTOM``; the legacy DAFormer margins). Must be 0 when
            ``valid_pseudo_mask`` is given (the two margin mechanisms are exclusive, as in the original,
            docs/method.md §7.2 step 6).
        valid_pseudo_mask: optional 0/1 margin mask from the target mapper, N x H x W (N x 1 x H x W is
            accepted too); multiplied into the weight.

    Returns:
        ``(pseudo_label, pseudo_weight)``:

        * ``pseudo_label``: N x H x W int64, argmax over classes of ``softmax(logits)``;
        * ``pseudo_weight``: N x H x W float32. Its value is ONE scalar for the whole batch (docs/method.md §15 Q4),
          ``#(pixels with max prob >= threshold) / (N * H * W)``, broadcast to every pixel, then the
          ``ignore_top/bottom`` rows are zeroed and it is multiplied by ``valid_pseudo_mask``.
    """
    if logits.dim() != 4:
        raise ValueError(f"pseudo_labels_from_logits: logits must be N x C x H x W, got {tuple(logits.shape)}")
    if ignore_top < 0 or ignore_bottom < 0:
        raise ValueError(
            f"pseudo_labels_from_logits: UDA.PSEUDO_WEIGHT_IGNORE_TOP/BOTTOM must be >= 0, got "
            f"{ignore_top}/{ignore_bottom}"
        )
    if valid_pseudo_mask is not None and (ignore_top > 0 or ignore_bottom > 0):
        raise ValueError(
            "pseudo_labels_from_logits: UDA.PSEUDO_WEIGHT_IGNORE_TOP/BOTTOM > 0 together with a pseudo-label "
            "margin mask (INPUT.TARGET.PSEUDO_MARGINS); use one of the two (set the other to 0 / [])"
        )
    probs = torch.softmax(logits.detach().float(), dim=1)
    max_prob, pseudo_label = torch.max(probs, dim=1)
    # count / numel in float64 on the device (no host synchronisation), rounded to float32 like a Python float
    confident_fraction = torch.sum(max_prob >= threshold, dtype=torch.float64) / max_prob.numel()
    pseudo_weight = confident_fraction.to(max_prob.dtype).expand_as(max_prob).clone()
    if ignore_top > 0:
        pseudo_weight[:, :ignore_top, :] = 0
    if ignore_bottom > 0:
        pseudo_weight[:, -ignore_bottom:, :] = 0
    if valid_pseudo_mask is not None:
        if valid_pseudo_mask.dim() == 4 and valid_pseudo_mask.shape[1] == 1:
            valid_pseudo_mask = valid_pseudo_mask.squeeze(1)
        if valid_pseudo_mask.shape != pseudo_weight.shape:
            raise ValueError(
                f"pseudo_labels_from_logits: valid_pseudo_mask has shape {tuple(valid_pseudo_mask.shape)}, "
                f"expected N x H x W = {tuple(pseudo_weight.shape)} (the target image size)"
            )
        pseudo_weight = pseudo_weight * valid_pseudo_mask.to(pseudo_weight)
    return pseudo_label, pseudo_weight


def predict_pseudo_labels(
    teacher: nn.Module,
    target_images: torch.Tensor,
    threshold: float,
    ignore_top: int = 0,
    ignore_bottom: int = 0,
    valid_pseudo_mask: Optional[torch.Tensor] = None,
    autocast: Optional[ContextManager] = None,
) -> PseudoLabels:
    """The teacher's pseudo-labels on ``N x 3 x H x W`` normalised ``target_images`` (docs/method.md §7.2 step 6).

    The teacher is put in pseudo-label mode (:func:`~.ema.set_pseudo_label_mode`: no dropout / drop-path,
    train-mode BatchNorm), predicts without gradient under ``autocast`` (a context manager; None = float32) with
    its ``generate_pseudo_label`` (HRDA: HR slide inference), and :func:`pseudo_labels_from_logits` gives the
    labels and the weights (``threshold``, ``ignore_top`` / ``ignore_bottom``, ``valid_pseudo_mask`` as there).
    """
    set_pseudo_label_mode(teacher)
    with torch.no_grad(), (autocast if autocast is not None else nullcontext()):
        teacher_logits = teacher.generate_pseudo_label(target_images)
    label, weight = pseudo_labels_from_logits(teacher_logits, threshold, ignore_top, ignore_bottom, valid_pseudo_mask)
    return PseudoLabels(target_images, label, weight)


class EMATeacher:
    """An EMA teacher and its pseudo-labels: DACS's (docs/method.md §7.2 steps 1 and 6), or MIC's own on a method
    without one (AdvSeg, MinEnt, §17.6).

    Args:
        model: the teacher, the student's architecture; its parameters get ``requires_grad=False``.
        alpha: ``UDA.ALPHA``. pseudo_threshold: ``UDA.PSEUDO_THRESHOLD``.
        pseudo_ignore_top, pseudo_ignore_bottom: ``UDA.PSEUDO_WEIGHT_IGNORE_TOP/BOTTOM``.
    """

    @configurable
    def __init__(self, model: nn.Module, *, alpha: float = 0.999, pseudo_threshold: float = 0.968,
                 pseudo_ignore_top: int = 0, pseudo_ignore_bottom: int = 0) -> None:
        self.model = model.requires_grad_(False)
        self.alpha = alpha
        self.pseudo_threshold = pseudo_threshold
        self.pseudo_ignore_top = pseudo_ignore_top
        self.pseudo_ignore_bottom = pseudo_ignore_bottom

    @classmethod
    def from_config(cls, cfg, model: nn.Module) -> Dict[str, Any]:
        return {"model": model, "alpha": cfg.UDA.ALPHA, "pseudo_threshold": cfg.UDA.PSEUDO_THRESHOLD,
                "pseudo_ignore_top": cfg.UDA.PSEUDO_WEIGHT_IGNORE_TOP,
                "pseudo_ignore_bottom": cfg.UDA.PSEUDO_WEIGHT_IGNORE_BOTTOM}

    def update(self, student: nn.Module, iteration: int) -> float:
        """The EMA update from ``student`` at the start of 0-based ``iteration`` (0: a copy); returns ``alpha_t``."""
        return ema_update_(self.model, student, iteration, self.alpha)

    def pseudo_labels(self, images: torch.Tensor, valid_mask: Optional[torch.Tensor],
                      autocast: Callable[[], ContextManager]) -> PseudoLabels:
        """:func:`predict_pseudo_labels` on ``N x 3 x H x W`` normalised target ``images`` with the margin masks
        ``valid_mask`` (``N x H x W`` or None), under ``autocast()``."""
        return predict_pseudo_labels(self.model, images, self.pseudo_threshold, self.pseudo_ignore_top,
                                     self.pseudo_ignore_bottom, valid_mask, autocast())
