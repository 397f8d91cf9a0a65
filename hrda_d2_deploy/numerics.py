"""The NumPy arithmetic of the deploy runtime: what the eager model does with tensors between its network passes.

* :func:`resize_bilinear`: PyTorch's ``F.interpolate(x, size, mode="bilinear", align_corners=False)`` (no
  antialiasing): the logits back to the camera's size, tile logits fitted to their box;
* :func:`merge_windows`: the count-matrix average of window (or tile) predictions, optionally of their softmax
  (``hrda_d2.modeling.meta_arch.crop_utils.merge_windows`` with NumPy arrays);
* :func:`merge_tiles`: one window's HR tile logits on its HR-logit canvas (``HRDAHead.merge_tiles``).

Arrays are float32 ``N x C x H x W``; boxes ``(y1, y2, x1, x2)`` half-open in pixels of the map they refer to.
Only NumPy is imported.
"""
from typing import Iterable, List, Sequence

import numpy as np

from .geometry import CropBox, scale_box

__all__ = ["merge_tiles", "merge_windows", "resize_bilinear", "softmax"]


def _source_index(out_size: int, in_size: int):
    """Per output pixel: the two source pixels and the weight of the second, by PyTorch's align_corners=False rule
    ``src = max(scale * (dst + 0.5) - 0.5, 0)`` with its rounding: the float32 ``scale = in / out`` applied in double,
    ``src`` rounded to float32 (the source positions then equal PyTorch's bit for bit)."""
    scale = np.float64(np.float32(in_size) / np.float32(out_size))  # the float32 scale, applied in double
    src = (scale * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    low = np.minimum(src.astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    return low, high, src - low.astype(np.float32)


def resize_bilinear(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``N x C x h x w`` -> ``N x C x H x W`` bilinear, as ``F.interpolate(..., align_corners=False)`` with a
    size (float32; equal to PyTorch up to float rounding). The same size returns ``x`` itself."""
    height, width = int(size[0]), int(size[1])
    if tuple(x.shape[-2:]) == (height, width):
        return x
    y0, y1, wy = _source_index(height, x.shape[-2])
    x0, x1, wx = _source_index(width, x.shape[-1])
    rows = x[..., y0, :] * (1 - wy)[:, None] + x[..., y1, :] * wy[:, None]
    return (rows[..., x0] * (1 - wx) + rows[..., x1] * wx).astype(np.float32, copy=False)


def softmax(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """Softmax over ``axis`` (the classes), computed in float32."""
    shifted = x - x.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def merge_windows(window_logits: Iterable[np.ndarray], boxes: Sequence[Sequence[int]], canvas_hw: Sequence[int],
                  use_softmax: bool = False) -> np.ndarray:
    """Average ``B x C x h x w`` window predictions (one per box, in box order; a generator works) on a
    ``B x C x H x W`` canvas with a count matrix; ``use_softmax`` averages each window's softmax over C instead
    (TEST.SLIDE.MERGE "probabilities"). Every canvas pixel must be covered."""
    height, width = int(canvas_hw[0]), int(canvas_hw[1])
    preds = count = None
    n = 0
    for logits, (y1, y2, x1, x2) in zip(window_logits, boxes):
        if preds is None:
            preds = np.zeros((logits.shape[0], logits.shape[1], height, width), dtype=np.float32)
            count = np.zeros((logits.shape[0], 1, height, width), dtype=np.float32)
        preds[:, :, y1:y2, x1:x2] += softmax(logits) if use_softmax else logits
        count[:, :, y1:y2, x1:x2] += 1
        n += 1
    if preds is None or n != len(boxes):
        raise ValueError(f"got {n} window predictions for {len(boxes)} boxes")
    if not (count > 0).all():
        raise RuntimeError(f"windows {list(boxes)} leave pixels of the {height}x{width} canvas uncovered")
    return preds / count


def merge_tiles(tile_logits: Sequence[np.ndarray], boxes: Sequence[CropBox], output_stride: int) -> np.ndarray:
    """One window's tile logits (each ``N x K x h_t x w_t``, boxes window-relative in image pixels) averaged on
    its HR-logit canvas: boxes mapped with ``int(c / output_stride)``, canvas ``(max y2, max x2)``; tile logits one
    pixel larger than a truncated box are resized to it (``HRDAHead.merge_tiles``)."""
    scaled: List[CropBox] = [scale_box(box, output_stride) for box in boxes]
    canvas = (max(b[1] for b in scaled), max(b[3] for b in scaled))
    fitted = (resize_bilinear(t, (b[1] - b[0], b[3] - b[2])) for t, b in zip(tile_logits, scaled))
    return merge_windows(fitted, scaled, canvas)
