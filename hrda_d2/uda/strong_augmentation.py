"""DACS strong augmentation of the mixed images: colour jitter and Gaussian blur (kornia).

Source: docs/method.md §7.2 steps 3 and 8, §15 Q6.

Decisions are drawn once per iteration with Python's ``random`` (jitter draw, then blur draw) and shared by
the batch; each sample then gets its own jitter factors (torch RNG, inside kornia) and its own blur sigma
(NumPy RNG), in the order jitter(0), sigma(0), jitter(1), sigma(1), ...

kornia 0.9 ``ColorJiggle`` versus the original's kornia-0.5 ``ColorJitter`` (checked against the
installed kornia 0.9.0 source and by ``tests/test_dacs_components.py``):

* same factor ranges and meaning: brightness, contrast, saturation ~ U[1 - s, 1 + s], hue ~ U[-s, s];
  brightness additive (``x + (b - 1)``, clamped to [0, 1]), contrast multiplicative (``x * c``, clamped),
  saturation scales S of HSV (clamped to [0, 1]), hue shifts H by ``hue * 2 pi``; the four operations in a
  random permutation drawn per call (one permutation per call, shared by the samples of that call - here
  every call holds one sample);
* differences: kornia 0.9 clamps the input to [0, 1] before the operations and the result after them (the
  de-normalised mixed image is in [0, 1] up to float rounding, so this only removes rounding excursions);
  saturation is computed with an algebraically equivalent closed form instead of an RGB->HSV->RGB round trip
  (equal to float32 rounding); an operation whose factor is exactly neutral is skipped (a measure-zero event
  for continuous draws); the torch RNG consumption differs from kornia 0.5, so the random factors for a
  given seed are not those of the original run (the distribution is the same).
* ``gaussian_blur2d`` in kornia 0.9 convolves separably (two 1-D passes) while kornia 0.5's
  ``GaussianBlur2d`` used the 2-D outer-product kernel; both normalise the kernel and pad with 'reflect',
  so the results agree to float rounding.
"""
import math
import random
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from kornia.augmentation import ColorJiggle
from kornia.filters import gaussian_blur2d

from ..modeling.pixel_normalizer import PixelNormalizer

__all__ = [
    "StrongAugmentationDraws",
    "StrongAugmentation",
    "draw_strong_augmentation",
    "gaussian_blur_kernel_size",
]


BLUR_THRESHOLD = 0.5  # blur when the per-iteration draw exceeds this (probability 0.5)
BLUR_SIGMA_RANGE = (0.15, 1.15)


@dataclass(frozen=True)
class StrongAugmentationDraws:
    """The per-iteration decisions, two draws from ``random.uniform(0, 1)``.

    ``blur`` is 0.0 (no blur, no draw) when blurring is disabled.
    """

    color_jitter: float
    blur: float


def draw_strong_augmentation(blur_enabled: bool, rng: Optional[random.Random] = None) -> StrongAugmentationDraws:
    """Draw the iteration's decisions: ``color_jitter = uniform(0, 1)``, then ``blur = uniform(0, 1)``
    (only when ``blur_enabled``), from ``rng`` or Python's global ``random`` (as the original's
    ``DACS.forward_train``)."""
    rng = random if rng is None else rng
    color_jitter = rng.uniform(0, 1)
    blur = rng.uniform(0, 1) if blur_enabled else 0.0
    return StrongAugmentationDraws(color_jitter=color_jitter, blur=blur)


def gaussian_blur_kernel_size(length: int) -> int:
    """Blur kernel size along an axis of ``length`` pixels: ``floor(ceil(0.1 L) - 0.5 + ceil(0.1 L) % 2)``,
    i.e. ``ceil(0.1 L)`` made odd by subtracting 1 from even values (1024 -> 103, 512 -> 51)."""
    tenth = math.ceil(0.1 * length)
    return int(math.floor(tenth - 0.5 + tenth % 2))


class StrongAugmentation:
    """Colour jitter + Gaussian blur of DACS, applied per sample in the normalised image space.

    Call :meth:`draw` once per iteration, then ``self(images, draws)``. Labels and weights are not touched
    by this augmentation (it is photometric only).
    """

    @configurable
    def __init__(
        self,
        *,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        color_jitter_strength: float = 0.2,
        color_jitter_skip_threshold: float = 0.2,
        blur: bool = True,
    ):
        """
        Args:
            pixel_mean, pixel_std: per-channel (RGB) normalisation of the images, in 0..255 units.
            color_jitter_strength: ``s`` of ``ColorJiggle(brightness=s, contrast=s, saturation=s, hue=s)``.
            color_jitter_skip_threshold: jitter is applied when the iteration's jitter draw is greater than
                this value (0.2 -> jitter 80 % of the iterations, as the original).
            blur: whether Gaussian blur is used at all (applied when the blur draw is > 0.5).
        """
        self.normalizer = PixelNormalizer(pixel_mean, pixel_std)
        self.color_jitter_strength = float(color_jitter_strength)
        self.color_jitter_skip_threshold = float(color_jitter_skip_threshold)
        self.blur = bool(blur)

    @classmethod
    def from_config(cls, cfg):
        return {
            "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": list(cfg.MODEL.PIXEL_STD),
            "color_jitter_strength": cfg.UDA.AUG.COLOR_JITTER_STRENGTH,
            "color_jitter_skip_threshold": cfg.UDA.AUG.COLOR_JITTER_SKIP_THRESHOLD,
            "blur": cfg.UDA.AUG.BLUR,
        }

    def draw(self, rng: Optional[random.Random] = None) -> StrongAugmentationDraws:
        """The iteration's decisions (see :func:`draw_strong_augmentation`)."""
        return draw_strong_augmentation(self.blur, rng)

    def applies_color_jitter(self, draws: StrongAugmentationDraws) -> bool:
        return draws.color_jitter > self.color_jitter_skip_threshold

    def applies_blur(self, draws: StrongAugmentationDraws) -> bool:
        return self.blur and draws.blur > BLUR_THRESHOLD

    def color_jitter(self, image: torch.Tensor) -> torch.Tensor:
        """Jitter one normalised image batch (1 x 3 x H x W): de-normalise ``(x * std + mean) / 255``, kornia
        ``ColorJiggle`` with p = 1 (fresh factors from the torch RNG), re-normalise ``(x * 255 - mean) / std``."""
        jiggle = ColorJiggle(
            brightness=self.color_jitter_strength,
            contrast=self.color_jitter_strength,
            saturation=self.color_jitter_strength,
            hue=self.color_jitter_strength,
            p=1.0,
        )
        unit_range = self.normalizer.denormalize(image) / 255
        jittered = jiggle(unit_range)
        return self.normalizer.normalize(jittered * 255)

    @staticmethod
    def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
        """Blur ``image`` (N x C x H x W) with kornia ``gaussian_blur2d``: isotropic ``sigma``, kernel size
        :func:`gaussian_blur_kernel_size` of H and of W, 'reflect' border."""
        kernel_size: Tuple[int, int] = (
            gaussian_blur_kernel_size(image.shape[-2]),
            gaussian_blur_kernel_size(image.shape[-1]),
        )
        return gaussian_blur2d(image, kernel_size, (sigma, sigma), border_type="reflect")

    def __call__(
        self,
        images: torch.Tensor,
        draws: StrongAugmentationDraws,
        numpy_rng: Optional[np.random.RandomState] = None,
    ) -> torch.Tensor:
        """Strong-augment a batch of normalised images.

        Args:
            images: N x 3 x H x W normalised (``(x - mean) / std``) float images; not modified.
            draws: this iteration's decisions from :meth:`draw`.
            numpy_rng: source of the per-sample blur sigma ``uniform(0.15, 1.15)``; ``None`` uses NumPy's
                global RNG (as the original's ``DACS.forward_train``).

        Returns:
            N x 3 x H x W augmented images (a new tensor).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"StrongAugmentation: images must be N x 3 x H x W, got {tuple(images.shape)}")
        numpy_rng = np.random if numpy_rng is None else numpy_rng
        jitter = self.applies_color_jitter(draws)
        blur = self.applies_blur(draws)
        outputs = []
        for image in images.split(1, dim=0):  # per sample: jitter (torch RNG), then sigma (NumPy RNG)
            if jitter:
                image = self.color_jitter(image)
            if blur:
                sigma = float(numpy_rng.uniform(*BLUR_SIGMA_RANGE))
                image = self.gaussian_blur(image, sigma)
            outputs.append(image)
        return torch.cat(outputs, dim=0)
