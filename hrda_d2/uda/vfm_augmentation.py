"""The random decisions of the VFM-UDA / VFM-UDA++ iteration and their application (docs/method.md §22.1).

Every decision is drawn by a small pure function from the global CPU torch RNG in the order torchvision's
transforms draw it (so a run of the original and a run of hrda_d2 with the same seed draw the same values), and
every application takes the decisions explicitly (so a test can replay decisions recorded from the original):

* flips: :func:`draw_flips` (``per_image``: one ``torch.rand(1) < 0.5`` per image, vfm-uda's
  ``batched_rand_hflip``; ``per_batch``: one draw for the whole batch, VFM-UDA++) and :func:`apply_flips`;
* colour augmentation of one image (:class:`ImageAugmentation`, a torchvision ``RandomApply(ColorJitter)``,
  optional ``RandomGrayscale``, optional ``RandomApply(GaussianBlur)`` pipeline):
  :func:`draw_image_augmentation` -> :class:`AugmentationDecision`; :func:`apply_image_augmentation` applies it
  with torchvision's tensor ops (``adjust_brightness`` / ``_contrast`` / ``_saturation`` / ``_hue`` in the drawn
  order, ``rgb_to_grayscale``, ``gaussian_blur``); :func:`draw_batch_augmentation` draws image 0's decisions, then
  image 1's, ... (the original stacks the per-image pipeline over the batch);
* the three pipelines of the originals: :data:`WEAK` (jitter 32/255, 0.5, 0.5, 18/360 with p 0.9), :data:`STRONG`
  (VFM-UDA++'s strong source augmentation: jitter 0.8, 0.8, 0.8, 0.4 with p 0.8, grayscale p 0.1, blur sigma
  0.15..3.0 with p 0.5) and :data:`UDA` (jitter 0.2 with p 0.8, blur sigma 0.15..1.15 with p 0.5), the blur kernel
  side :func:`blur_kernel_size` of the configured image size;
* the token mask of VFM-UDA's masked pass: :func:`hrda_d2.uda.masking.token_mask`.

Images are ``N x 3 x H x W`` (or ``3 x H x W``) float RGB in 0..1 (torchvision's float image convention; the ops
clamp to [0, 1]).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torchvision.transforms import functional as TF

__all__ = ["AugmentationDecision", "ImageAugmentation", "JitterDecision", "STRONG", "UDA", "WEAK", "apply_flips",
           "apply_batch_augmentation", "apply_image_augmentation", "blur_kernel_size", "draw_batch_augmentation",
           "draw_flips", "draw_image_augmentation"]


def blur_kernel_size(img_size: int) -> int:
    """The originals' Gaussian blur kernel side for the image size ``img_size``: ``floor(ceil(0.1 s) - 0.5 +
    ceil(0.1 s) % 2)``, i.e. ``ceil(0.1 s)`` when odd, one less when even (1024 -> 103, 512 -> 51, 56 -> 5)."""
    tenth = math.ceil(0.1 * img_size)
    return int(math.floor(tenth - 0.5 + tenth % 2))


# ---------------------------------------------------------------------------------------------------- flips
def draw_flips(batch_size: int, per_image: bool) -> List[bool]:
    """Horizontal flip decisions, one per image: ``per_image`` draws ``torch.rand(1) < 0.5`` for each image in order
    (vfm-uda), else one draw decides for the whole batch (VFM-UDA++)."""
    if per_image:
        return [bool(torch.rand(1) < 0.5) for _ in range(batch_size)]
    return [bool(torch.rand(1) < 0.5)] * batch_size


def apply_flips(flips: Sequence[bool], *tensors: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Flip image ``i`` of every tensor (``N x ... x W``, e.g. images ``N x 3 x H x W`` and labels ``N x H x W``)
    along its last axis where ``flips[i]``; new tensors, the inputs are not modified."""
    out = []
    for tensor in tensors:
        if len(flips) != tensor.shape[0]:
            raise ValueError(f"apply_flips: {len(flips)} decisions for a batch of {tensor.shape[0]}")
        out.append(torch.stack([t.flip(-1) if f else t for f, t in zip(flips, tensor)]))
    return tuple(out)


# ------------------------------------------------------------------------------------------- colour augmentation
@dataclass(frozen=True)
class ImageAugmentation:
    """One per-image pipeline: colour jitter (strengths ``brightness``, ``contrast``, ``saturation`` as torchvision's
    ranges ``[max(0, 1 - v), 1 + v]``, ``hue`` as ``[-v, v]``) applied with probability ``jitter_p``, grayscale with
    probability ``grayscale_p`` (0 = no grayscale step, nothing drawn), Gaussian blur with ``sigma`` drawn
    uniformly in ``blur_sigma`` applied with probability ``blur_p`` (0 = no blur step, nothing drawn)."""

    brightness: float
    contrast: float
    saturation: float
    hue: float
    jitter_p: float
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: Tuple[float, float] = (0.15, 1.15)

    def ranges(self) -> List[Optional[Tuple[float, float]]]:
        """torchvision's factor ranges (brightness, contrast, saturation, hue); None where the strength is 0."""
        out: List[Optional[Tuple[float, float]]] = []
        for value in (self.brightness, self.contrast, self.saturation):
            out.append(None if value == 0 else (max(0.0, 1.0 - value), 1.0 + value))
        out.append(None if self.hue == 0 else (-self.hue, self.hue))
        return out


WEAK = ImageAugmentation(brightness=32 / 255.0, contrast=0.5, saturation=0.5, hue=18 / 360.0, jitter_p=0.9)
STRONG = ImageAugmentation(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.4, jitter_p=0.8, grayscale_p=0.1,
                           blur_p=0.5, blur_sigma=(0.15, 3.0))
UDA = ImageAugmentation(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.2, jitter_p=0.8, blur_p=0.5,
                        blur_sigma=(0.15, 1.15))


@dataclass(frozen=True)
class JitterDecision:
    """A drawn colour jitter: ``order`` (a permutation of 0..3: brightness, contrast, saturation, hue) and the
    factors (None for a strength of 0)."""

    order: Tuple[int, ...]
    brightness: Optional[float]
    contrast: Optional[float]
    saturation: Optional[float]
    hue: Optional[float]


@dataclass(frozen=True)
class AugmentationDecision:
    """The decisions for one image: ``jitter`` (None = not applied), ``grayscale``, ``blur_sigma`` (None = no blur)."""

    jitter: Optional[JitterDecision] = None
    grayscale: bool = False
    blur_sigma: Optional[float] = None


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(1).uniform_(low, high))


def draw_image_augmentation(spec: ImageAugmentation) -> AugmentationDecision:
    """The decisions for one image, drawn from the CPU torch RNG in torchvision's order: ``RandomApply``'s
    ``torch.rand(1)`` (applied when ``p >= draw``), then ``ColorJitter.get_params`` (``torch.randperm(4)``, one
    uniform per non-None range); ``RandomGrayscale``'s ``torch.rand(1) < p``; the blur's ``RandomApply`` draw, then
    ``GaussianBlur.get_params`` (one uniform)."""
    jitter = None
    if not spec.jitter_p < torch.rand(1):
        order = tuple(int(i) for i in torch.randperm(4))
        factors = [None if r is None else _uniform(*r) for r in spec.ranges()]
        jitter = JitterDecision(order, *factors)
    grayscale = bool(torch.rand(1) < spec.grayscale_p) if spec.grayscale_p > 0 else False
    blur_sigma = None
    if spec.blur_p > 0 and not spec.blur_p < torch.rand(1):
        blur_sigma = float(torch.empty(1).uniform_(*spec.blur_sigma).item())
    return AugmentationDecision(jitter, grayscale, blur_sigma)


def draw_batch_augmentation(spec: ImageAugmentation, batch_size: int) -> List[AugmentationDecision]:
    """:func:`draw_image_augmentation` for image 0, then image 1, ... (the original's per-image loop)."""
    return [draw_image_augmentation(spec) for _ in range(batch_size)]


def apply_image_augmentation(image: torch.Tensor, decision: AugmentationDecision, kernel_size: int) -> torch.Tensor:
    """Apply ``decision`` to one ``3 x H x W`` (or batched) 0..1 float image with torchvision's tensor ops; the blur
    kernel is ``kernel_size x kernel_size`` (:func:`blur_kernel_size`)."""
    jitter = decision.jitter
    if jitter is not None:
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        factors = (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
        for index in jitter.order:
            if factors[index] is not None:
                image = ops[index](image, factors[index])
    if decision.grayscale:
        image = TF.rgb_to_grayscale(image, num_output_channels=image.shape[-3])
    if decision.blur_sigma is not None:
        image = TF.gaussian_blur(image, [kernel_size, kernel_size], [decision.blur_sigma, decision.blur_sigma])
    return image


def apply_batch_augmentation(images: torch.Tensor, decisions: Sequence[AugmentationDecision],
                             kernel_size: int) -> torch.Tensor:
    """``N x 3 x H x W``: image ``i`` augmented with ``decisions[i]`` (:func:`apply_image_augmentation`)."""
    if len(decisions) != images.shape[0]:
        raise ValueError(f"apply_batch_augmentation: {len(decisions)} decisions for a batch of {images.shape[0]}")
    return torch.stack([apply_image_augmentation(x, d, kernel_size) for x, d in zip(images, decisions)])
