"""What the output-space methods (AdvSeg, MinEnt; docs/method.md §18.4, §18.5) share: the entropy, the GAN losses.

The prediction they adapt is the training forward's ``HRDATrainOutputs.logits`` as the original passes them on: the
model's logits bilinearly resized to its output scale ``(int(H * s), int(W * s))``, ``s = MODEL.HRDA.FEATURE_SCALE``
(one scale: s = 1, the head logits at the input size, ``forward_with_aux``'s 'main'; HRDA: the fused logits, detail
crop inserted, attention masked to it, s = 0.5 as the original asserts). Tensors are ``N x C x h x w`` logits.
"""
import math

import torch
from torch import Tensor
from torch.nn import functional as F

from ..config import check_choice

__all__ = ["SOURCE_DOMAIN_LABEL", "TARGET_DOMAIN_LABEL", "gan_loss", "normalized_entropy"]

SOURCE_DOMAIN_LABEL, TARGET_DOMAIN_LABEL = 0.0, 1.0  # the discriminator's targets (the original's labels)


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
