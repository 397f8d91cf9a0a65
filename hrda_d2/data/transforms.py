"""Geometric augmentations of the mmseg training/test pipelines as Detectron2 ``Augmentation``s.

Detectron2's built-ins differ from mmseg/mmcv where it matters for equal numbers, so the pipeline of
docs/method.md §10 is rebuilt here:

* :class:`KeepRatioRescale` / :class:`RescaleTransform`: mmcv ``imrescale`` (size rule below; image with
  OpenCV ``INTER_LINEAR``, labels and masks with ``INTER_NEAREST``). Detectron2's ``ResizeTransform``
  uses PIL, whose bilinear filter gives different pixels.
* :class:`RandomCropWithCategoryRatio`: mmseg ``RandomCrop(cat_max_ratio=r)``; Detectron2's
  ``RandomCrop_CategoryAreaConstraint`` keeps the 10th *checked* box, mmseg keeps an 11th *unchecked* one.
* :class:`PadBottomRight`: mmseg ``Pad(size=crop_size, pad_val=0, seg_pad_val=255)``.
* Horizontal flip: Detectron2's ``T.RandomFlip`` (one ``np.random`` draw per sample) is used as is.

All randomness comes from NumPy's global RNG (as in mmseg and Detectron2), so a caller that seeds it
(see ``hrda_d2.data.samplers.position_sampling``) gets reproducible boxes and flips.

Images are ``H x W x 3`` uint8 arrays, labels ``H x W`` integer arrays; sizes are ``(height, width)``
unless a name says otherwise; crop boxes are ``(y1, y2, x1, x2)``, half-open, in pixels of the array
they are taken from.
"""
from typing import Sequence, Tuple

import cv2
import numpy as np
from detectron2.data import transforms as T

from hrda_d2_deploy.geometry import imrescale_size

__all__ = [
    "imrescale_size",
    "RescaleTransform",
    "KeepRatioRescale",
    "RandomRatioRescale",
    "draw_crop_box",
    "RandomCropWithCategoryRatio",
    "PadBottomRight",
]

# number of cat_max_ratio checks before the last drawn box is kept unchecked (mmseg RandomCrop)
_CAT_MAX_RATIO_CHECKS = 10


class RescaleTransform(T.Transform):
    """Resize from ``(h, w)`` to ``(new_h, new_w)`` with OpenCV, like mmcv ``imresize``.

    Images use ``cv2.INTER_LINEAR``, segmentation maps (labels, masks) ``cv2.INTER_NEAREST``.
    ``apply_segmentation`` maps an input of any size to ``(new_h, new_w)``.
    """

    def __init__(self, h: int, w: int, new_h: int, new_w: int):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return cv2.resize(img, (self.new_w, self.new_h), interpolation=cv2.INTER_LINEAR)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return cv2.resize(segmentation, (self.new_w, self.new_h), interpolation=cv2.INTER_NEAREST)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """``coords``: ``N x 2`` array of (x, y) in input pixels -> output pixels."""
        coords[:, 0] = coords[:, 0] * (self.new_w * 1.0 / self.w)
        coords[:, 1] = coords[:, 1] * (self.new_h * 1.0 / self.h)
        return coords

    def inverse(self) -> T.Transform:
        return RescaleTransform(self.new_h, self.new_w, self.h, self.w)


class KeepRatioRescale(T.Augmentation):
    """mmseg ``Resize(img_scale=scale, keep_ratio=True)``: rescale by :func:`imrescale_size`.

    Deterministic. Returns a ``NoOpTransform`` when the size does not change (OpenCV's bilinear
    resize to the same size is the identity, so this only saves time).
    """

    def __init__(self, scale: Sequence[int]):
        """``scale``: ``(long side, short side)`` in pixels, e.g. ``(2560, 1440)``."""
        super().__init__()
        self.scale = tuple(int(s) for s in scale)
        imrescale_size(1, 1, self.scale)  # validates the tuple

    def get_transform(self, image: np.ndarray) -> T.Transform:
        h, w = image.shape[:2]
        new_h, new_w = imrescale_size(h, w, self.scale)
        if (new_h, new_w) == (h, w):
            return T.NoOpTransform()
        return RescaleTransform(h, w, new_h, new_w)


class RandomRatioRescale(T.Augmentation):
    """Rescale by one random factor ``r ~ U(low, high)`` (NumPy global RNG): ``(h, w) -> (int(h*r + 0.5),
    int(w*r + 0.5))``, OpenCV bilinear (labels / masks nearest), after the keep-ratio rescale.

    VFM-UDA's training scale jitter (docs/method.md §10.1 step 2a): the original resizes the short side to
    ``img_size * U(0.9, 1.1)``; here the keep-ratio rescale brings the short side to ``img_size`` and this factor
    follows (equal up to one pixel of rounding).
    """

    def __init__(self, ratio_range: Sequence[float]):
        """``ratio_range``: ``(low, high)`` with ``0 < low <= high``."""
        super().__init__()
        if len(ratio_range) != 2 or not 0 < float(ratio_range[0]) <= float(ratio_range[1]):
            raise ValueError(f"RATIO_RANGE must be [low, high] with 0 < low <= high, got {list(ratio_range)}")
        self.low, self.high = float(ratio_range[0]), float(ratio_range[1])

    def get_transform(self, image: np.ndarray) -> T.Transform:
        h, w = image.shape[:2]
        ratio = self.low + np.random.random_sample() * (self.high - self.low)
        new_h, new_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
        if (new_h, new_w) == (h, w):
            return T.NoOpTransform()
        return RescaleTransform(h, w, new_h, new_w)


def draw_crop_box(height: int, width: int, crop_size: Sequence[int]) -> Tuple[int, int, int, int]:
    """One random crop box ``(y1, y2, x1, x2)`` like mmseg ``RandomCrop.get_crop_bbox``.

    ``y1 = np.random.randint(0, margin_h + 1)`` then ``x1`` likewise, with
    ``margin = max(size - crop, 0)``; the box is clipped to the image, so it is smaller than
    ``crop_size`` (h, w) when the image is.
    """
    crop_h, crop_w = crop_size
    y1 = np.random.randint(0, max(height - crop_h, 0) + 1)
    x1 = np.random.randint(0, max(width - crop_w, 0) + 1)
    return y1, min(y1 + crop_h, height), x1, min(x1 + crop_w, width)


def _box_to_transform(box: Tuple[int, int, int, int], height: int, width: int) -> T.CropTransform:
    y1, y2, x1, x2 = box
    return T.CropTransform(x1, y1, x2 - x1, y2 - y1, orig_w=width, orig_h=height)


def _passes_category_ratio(label_crop: np.ndarray, cat_max_ratio: float, ignore_value: int) -> bool:
    """mmseg's test: more than one non-ignored class and ``max count / sum count < cat_max_ratio``.

    Counts per value with ``np.bincount`` (labels are non-negative integers), ~10x faster than the
    ``np.unique`` of the original for the same counts.
    """
    counts = np.bincount(label_crop.ravel())
    if ignore_value < len(counts):
        counts[ignore_value] = 0
    counts = counts[counts > 0]
    return len(counts) > 1 and np.max(counts) / np.sum(counts) < cat_max_ratio


class RandomCropWithCategoryRatio(T.Augmentation):
    """mmseg ``RandomCrop(crop_size, cat_max_ratio)`` (docs/method.md §10.1 step 3).

    A first box is drawn with :func:`draw_crop_box`. If ``cat_max_ratio < 1``: up to 10 times, the
    label inside the current box is checked (pixel counts per value, ``ignore_value`` excluded; it
    passes if more than one class is present and ``max / sum < cat_max_ratio``); a passing box is
    used, a failing one is replaced by a newly drawn box. After 10 failed checks the 11th box is used
    unchecked. With ``cat_max_ratio >= 1`` the label is not needed (``sem_seg`` may be None).

    ``get_transform(image, sem_seg)``: ``image`` H x W (x C), ``sem_seg`` H x W or None.
    """

    def __init__(self, crop_size: Sequence[int], cat_max_ratio: float = 1.0, ignore_value: int = 255):
        """``crop_size``: (h, w) in pixels."""
        super().__init__()
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_value = int(ignore_value)

    def get_transform(self, image: np.ndarray, sem_seg: np.ndarray) -> T.Transform:
        h, w = image.shape[:2]
        box = draw_crop_box(h, w, self.crop_size)
        if self.cat_max_ratio < 1.0:
            if sem_seg is None:
                raise ValueError(
                    f"cat_max_ratio={self.cat_max_ratio} < 1 needs the label; the sample has none "
                    "(set the pipeline's CAT_MAX_RATIO to 1.0 for unlabelled data)"
                )
            for _ in range(_CAT_MAX_RATIO_CHECKS):
                y1, y2, x1, x2 = box
                if _passes_category_ratio(sem_seg[y1:y2, x1:x2], self.cat_max_ratio, self.ignore_value):
                    break
                box = draw_crop_box(h, w, self.crop_size)
        return _box_to_transform(box, h, w)


class PadBottomRight(T.Augmentation):
    """mmseg ``Pad(size=size, pad_val=0, seg_pad_val=255)``: pad bottom/right up to ``size`` (h, w).

    Images are padded with ``pad_value`` (0), segmentation maps with ``seg_pad_value`` (255). Larger
    inputs are left as they are. Never pads in the standard configs (every rescaled image is at least
    as large as the crop). The pseudo-label margin mask is padded with 0 instead, see
    ``hrda_d2.data.dataset_mappers.train_mappers.transform_valid_mask``.
    """

    def __init__(self, size: Sequence[int], pad_value: int = 0, seg_pad_value: int = 255):
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.pad_value = pad_value
        self.seg_pad_value = seg_pad_value

    def get_transform(self, image: np.ndarray) -> T.Transform:
        h, w = image.shape[:2]
        pad_h, pad_w = max(self.size[0] - h, 0), max(self.size[1] - w, 0)
        if pad_h == 0 and pad_w == 0:
            return T.NoOpTransform()
        return T.PadTransform(
            0, 0, pad_w, pad_h, orig_w=w, orig_h=h, pad_value=self.pad_value, seg_pad_value=self.seg_pad_value
        )
