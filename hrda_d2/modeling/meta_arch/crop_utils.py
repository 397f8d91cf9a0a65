"""Crop boxes: random divisible detail crops, slicing, box scaling, sliding windows and their merging.

Every box is ``(y1, y2, x1, x2)``: half-open (``y1 <= y < y2``), integer pixels of the tensor it refers to.
The sliding-window generator (``sliding_window_boxes``) and ``scale_box`` live in :mod:`hrda_d2_deploy.geometry`
(standard library only, shared with the deploy runtime) and are re-exported here; the window generator serves the HR
tile inference of HRDA (docs/method.md §4.4) and the test-time slide inference (§4.5); ``merge_windows`` is the
matching count-matrix average.
"""
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from hrda_d2_deploy.geometry import CropBox, scale_box, sliding_window_boxes

__all__ = [
    "CropBox",
    "random_crop_box",
    "crop",
    "scale_box",
    "sliding_window_boxes",
    "merge_windows",
    "stack_windows",
]


def random_crop_box(image_hw: Sequence[int], crop_hw: Sequence[int], divisible: int = 1) -> CropBox:
    """Random crop box whose offsets are multiples of ``divisible`` (docs/method.md §4.2).

    Draws from NumPy's global RNG, first the row offset, then the column offset, each as
    ``np.random.randint(0, (margin + 1) // divisible) * divisible`` with ``margin = max(size - crop, 0)``.
    So the largest offset of a full margin (e.g. 512 for 1024 -> 512 with d = 8) is never drawn, exactly
    as in the original. A crop equal to the image returns ``(0, h, 0, w)`` without drawing.
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    ch, cw = int(crop_hw[0]), int(crop_hw[1])
    if ch <= 0 or cw <= 0 or divisible <= 0:
        raise ValueError(f"crop size {tuple(crop_hw)} and divisible {divisible} must be positive")
    if h == ch and w == cw:
        return 0, h, 0, w
    margin_h = max(h - ch, 0)
    margin_w = max(w - cw, 0)
    offset_h = int(np.random.randint(0, (margin_h + 1) // divisible)) * divisible
    offset_w = int(np.random.randint(0, (margin_w + 1) // divisible)) * divisible
    return offset_h, offset_h + ch, offset_w, offset_w + cw


def crop(t: Tensor, box: Sequence[int]) -> Tensor:
    """Slice the last two dims of a 2-D (H x W), 3-D (B x H x W) or 4-D (B x C x H x W) tensor to ``box``."""
    if t.dim() not in (2, 3, 4):
        raise ValueError(f"crop expects a 2-D, 3-D or 4-D tensor, got shape {tuple(t.shape)}")
    y1, y2, x1, x2 = box
    return t[..., y1:y2, x1:x2]


def merge_windows(
    window_logits: Iterable[Tensor], boxes: Sequence[Sequence[int]], canvas_hw: Sequence[int],
    softmax: bool = False,
) -> Tensor:
    """Average window predictions on a canvas with a count matrix.

    Args:
        window_logits: one ``B x C x h x w`` tensor per box, in the order of ``boxes``, each of the size of
            its box (a generator works: windows are consumed one at a time).
        boxes: window boxes in canvas pixels.
        canvas_hw: canvas size ``(H, W)``.
        softmax: average each window's softmax over ``C`` (computed in the accumulation dtype) instead of the
            window itself (``TEST.SLIDE.MERGE "probabilities"``, VFM-UDA's rule, docs/method.md §19.4).

    Returns:
        ``B x C x H x W`` (float32 or wider): the sum of the windows (or of their softmax) covering each pixel
        divided by their number.
    """
    h, w = int(canvas_hw[0]), int(canvas_hw[1])
    _check_coverage(boxes, h, w)  # on the host, from the boxes: no device synchronisation
    preds = count = None
    n_windows = 0
    for logits, (y1, y2, x1, x2) in zip(window_logits, boxes):
        if preds is None:  # accumulate in at least float32 (windows may be half precision under autocast)
            dtype = torch.promote_types(logits.dtype, torch.float32)
            preds = logits.new_zeros((logits.shape[0], logits.shape[1], h, w), dtype=dtype)
            count = logits.new_zeros((logits.shape[0], 1, h, w), dtype=dtype)
        preds[:, :, y1:y2, x1:x2] += torch.softmax(logits.to(dtype), dim=1) if softmax else logits
        count[:, :, y1:y2, x1:x2] += 1
        n_windows += 1
    if preds is None or n_windows != len(boxes):
        raise ValueError(f"got {n_windows} window predictions for {len(boxes)} boxes")
    return preds / count


def _check_coverage(boxes: Sequence[Sequence[int]], h: int, w: int) -> None:
    covered = np.zeros((h, w), dtype=bool)
    for y1, y2, x1, x2 in boxes:
        covered[max(y1, 0):y2, max(x1, 0):x2] = True
    if not covered.all():
        raise RuntimeError(f"sliding windows {list(boxes)} leave pixels of the {h}x{w} canvas uncovered")


def stack_windows(images: Tensor, boxes: Sequence[Sequence[int]]) -> Tensor:
    """Cut every box out of ``images`` (N x C x H x W) and concatenate window-major along the batch dim."""
    return torch.cat([crop(images, box) for box in boxes], dim=0)
