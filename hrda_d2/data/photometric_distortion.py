"""mmseg's ``PhotoMetricDistortion`` as a Detectron2 augmentation: the source colour augmentation of the
``gtaCAug`` datasets (AdvSeg / MinEnt rows of the paper's Table 2) and of the target-only oracle
(docs/method.md §18.7).

Each of the following steps happens with probability 1/2, drawn from NumPy's global RNG in this order
(``np.random.randint(2)`` per decision, then the step's value):

1. brightness: ``+ uniform(-32, 32)``;
2. the position of the contrast step: ``mode = randint(2)``; mode 1 = contrast now, mode 0 = contrast last;
3. saturation: HSV saturation ``* uniform(0.5, 1.5)``;
4. hue: HSV hue ``+ randint(-18, 18)`` (modulo 180, OpenCV's 8-bit hue range);
5. contrast (mode 0): ``* uniform(0.5, 1.5)``.

Every arithmetic step works in float32 on the uint8 image, clips to [0, 255] and truncates back to uint8, like
the original. The original reads images as BGR; the colours, and so the HSV values, are the same for the RGB
arrays of this project (``cv2.COLOR_RGB2HSV``). Labels are untouched.
"""
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
from detectron2.data import transforms as T

__all__ = ["PhotoMetricDistortion", "PhotometricTransform"]


def _affine(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class PhotometricParams:
    """The drawn distortion; None = the step is skipped."""

    brightness: Optional[float]
    contrast: Optional[float]
    contrast_first: bool
    saturation: Optional[float]
    hue: Optional[int]


class PhotometricTransform(T.Transform):
    """Apply one drawn :class:`PhotometricParams` to an ``H x W x 3`` uint8 RGB image (labels unchanged)."""

    def __init__(self, params: PhotometricParams):
        super().__init__()
        self.params = params

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        p = self.params
        if p.brightness is not None:
            img = _affine(img, beta=p.brightness)
        if p.contrast_first and p.contrast is not None:
            img = _affine(img, alpha=p.contrast)
        if p.saturation is not None:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[:, :, 1] = _affine(hsv[:, :, 1], alpha=p.saturation)
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if p.hue is not None:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + p.hue) % 180
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if not p.contrast_first and p.contrast is not None:
            img = _affine(img, alpha=p.contrast)
        return img

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def inverse(self) -> T.Transform:
        return T.NoOpTransform()


class PhotoMetricDistortion(T.Augmentation):
    """Draws :class:`PhotometricParams` in the original's order (module docstring)."""

    def __init__(self, brightness_delta: int = 32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                 hue_delta: int = 18):
        super().__init__()
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    def get_transform(self, image: np.ndarray) -> T.Transform:
        rng = np.random
        brightness = rng.uniform(-self.brightness_delta, self.brightness_delta) if rng.randint(2) else None
        contrast_first = rng.randint(2) == 1
        contrast = None
        if contrast_first and rng.randint(2):
            contrast = rng.uniform(*self.contrast_range)
        saturation = rng.uniform(*self.saturation_range) if rng.randint(2) else None
        hue = rng.randint(-self.hue_delta, self.hue_delta) if rng.randint(2) else None
        if not contrast_first and rng.randint(2):
            contrast = rng.uniform(*self.contrast_range)
        return PhotometricTransform(PhotometricParams(brightness, contrast, contrast_first, saturation, hue))
