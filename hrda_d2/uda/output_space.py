"""What the output-space methods (AdvSeg, MinEnt; docs/method.md §18.4, §18.5) share: the prediction they adapt,
the entropy, the GAN losses.

The adapted prediction (``adaptation_logits``) is the training forward's ``logits`` as the original passes them on:
for a single-scale model the head logits resized to the input size (``forward_with_aux``'s 'main'), for HRDA the
fused logits (detail crop inserted, attention masked to it) bilinearly resized to ``(int(H * s), int(W * s))`` with
``s = MODEL.HRDA.FEATURE_SCALE`` (0.5; the original asserts it). Tensors are ``N x C x h x w`` logits.
"""
import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..config import check_choice

__all__ = ["SOURCE_DOMAIN_LABEL", "TARGET_DOMAIN_LABEL", "adaptation_logits", "gan_loss", "normalized_entropy"]

SOURCE_DOMAIN_LABEL, TARGET_DOMAIN_LABEL = 0.0, 1.0  # the discriminator's targets (the original's labels)


def adaptation_logits(student: nn.Module, logits: Tensor, image_hw) -> Tensor:
    """The prediction AdvSeg / MinEnt adapt (module docstring); ``logits`` from ``HRDATrainOutputs.logits``."""
    if not student.is_multi_scale:
        return logits
    size = [int(e * student.feature_scale) for e in image_hw]
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def normalized_entropy(probabilities: Tensor) -> Tensor:
    """``-sum(p * log2(p + 1e-30)) / (N * H * W * log2(C))`` of ``N x C x H x W`` probabilities: the per-pixel
    entropy normalised to [0, 1] by ``log2(C)``, averaged over batch and pixels (0-dim)."""
    n, c, h, w = probabilities.shape
    return -torch.sum(probabilities * torch.log2(probabilities + 1e-30)) / (n * h * w * math.log2(c))


def gan_loss(discriminator_logits: Tensor, domain_label: float, kind: str) -> Tensor:
    """``"LS"``: mean squared error to ``domain_label``; ``"VANILLA"``: BCE with logits (both averaged over every
    output cell), against a constant map of ``domain_label`` (0 = source, 1 = target)."""
    target = torch.full_like(discriminator_logits, domain_label)
    if check_choice("UDA.ADVSEG.GAN_LOSS", kind) == "LS":
        return F.mse_loss(discriminator_logits, target)
    return F.binary_cross_entropy_with_logits(discriminator_logits, target)  # "VANILLA"
