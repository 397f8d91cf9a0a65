"""Segmentation loss and accuracy of the original decode heads (docs/method.md §6)."""
from typing import Optional, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["resize_logits", "resize_to_labels", "pixel_weighted_cross_entropy", "pixel_accuracy"]


def resize_logits(logits: Tensor, size: Sequence[int]) -> Tensor:
    """``N x C x h x w`` logits in float32, bilinearly resized to ``size`` ``(H, W)`` (align_corners False); the
    float32 tensor itself when it already has that size."""
    logits = logits.float()
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def resize_to_labels(logits: Tensor, labels: Tensor) -> Tensor:
    """Bilinearly resize ``N x C x h x w`` logits to the ``H x W`` of ``N x H x W`` labels (align_corners False),
    in float32 (the original computes losses in fp32, also under mixed precision).

    The logits are resized to the labels, never the labels to the logits.
    """
    return resize_logits(logits, labels.shape[-2:])


def pixel_weighted_cross_entropy(
    logits: Tensor, labels: Tensor, weight: Optional[Tensor] = None, ignore_index: int = 255,
    avg_non_ignore: bool = False,
) -> Tensor:
    """Mean pixel-wise cross-entropy over ALL ``N*H*W`` pixels (the original's denominator).

    Args:
        logits: ``N x C x H x W`` at the label size (see ``resize_to_labels``).
        labels: ``N x H x W`` int64; ``ignore_index`` pixels contribute 0 but still count in the mean.
        weight: optional ``N x H x W`` per-pixel weights, multiplied in (not re-normalised).
        avg_non_ignore: without ``weight``, average over the non-ignored pixels only (``F.cross_entropy``'s
            mean with ``ignore_index``, VFM-UDA's source loss, docs/method.md §19.3; 0 when every pixel is
            ignored); weighted losses keep the ``N*H*W`` denominator.

    Returns:
        scalar ``sum(ce * weight) / (N * H * W)`` (or ``sum(ce) / #non-ignored``).
    """
    if labels.dim() != 3 or logits.dim() != 4 or logits.shape[-2:] != labels.shape[-2:]:
        raise ValueError(
            f"cross-entropy expects logits N x C x H x W and labels N x H x W of the same size, got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    loss = F.cross_entropy(logits.float(), labels.long(), reduction="none", ignore_index=ignore_index)
    if avg_non_ignore and weight is None:
        return loss.sum() / (labels != ignore_index).sum().clamp(min=1)
    if weight is not None:
        loss = loss * weight.float()
    return loss.mean()


@torch.no_grad()
def pixel_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Top-1 accuracy in percent over ALL label pixels (ignored pixels count as wrong), for logging."""
    pred = logits.argmax(dim=1)
    return (pred == labels).float().sum() * (100.0 / labels.numel())
