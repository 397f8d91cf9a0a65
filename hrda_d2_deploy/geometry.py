"""The geometry of test-time inference, shared by the eager model and the deploy runtime (stdlib only).

* :func:`imrescale_size`: the keep-ratio test rescale (mmcv ``imrescale``, docs/method.md §10.1 step 2);
* :func:`sliding_window_boxes`: sliding windows (the HR tiles of HRDA, docs/method.md §4.4, and the test windows,
  §4.5);
* :func:`scale_box`: a box mapped to a map ``divisor`` times smaller (logit pixels);
* :func:`shared_tile_plan`: the distinct HR tiles of overlapping test windows (exact tile reuse, §4.4-4.5).

Test-time slide inference (§4.5) runs ``encode_decode`` (§4.4) on every window, and each window cuts its HR
image into overlapping tiles (§4.4 step 1, §5.2). Neighbouring windows overlap, so many tiles are the same
pixels of the test image: a 1024 x 2048 image with 1024 windows at stride 512 and 512 tiles at stride 256 has
3 windows x 9 tiles = 27 tile boxes but only 21 distinct ones. The detail logits of a tile depend only on its
pixels (backbone and head act per sample once BatchNorm uses running statistics), so each distinct tile can
be computed once and its logits placed into every window that contains it. A tile is shared only where two windows
hold the *identical* image box; windows off the tile grid (the last window shifted back to the image border,
windows shrunk to a small image) get tiles of their own; nothing is interpolated or approximated.

Every box is ``(y1, y2, x1, x2)``: half-open (``y1 <= y < y2``), integer pixels of the image it refers to;
"window-relative" boxes are in the pixels of the window. Sizes are ``(height, width)``.

This module imports nothing but the standard library: :mod:`hrda_d2` (the eager model) and :mod:`hrda_d2_deploy`
(the runtime without Detectron2) both use it, so both cut the same windows and tiles.
"""
from typing import Dict, List, NamedTuple, Sequence, Tuple

__all__ = ["CropBox", "SharedTilePlan", "imrescale_size", "scale_box", "shared_tile_plan", "sliding_window_boxes"]

CropBox = Tuple[int, int, int, int]


def imrescale_size(height: int, width: int, scale: Sequence[int]) -> Tuple[int, int]:
    """Output ``(height, width)`` of mmcv ``imrescale`` with a ``(long side, short side)`` scale tuple.

    ``f = min(max(scale) / max(h, w), min(scale) / min(h, w))`` and the new size is
    ``(int(h * f + 0.5), int(w * f + 0.5))`` (docs/method.md §10.1 step 2). The order of the two numbers in
    ``scale`` does not matter. E.g. 1052x1914 with (2560, 1440) -> 1407x2560.
    """
    if len(scale) != 2 or min(scale) <= 0:
        raise ValueError(f"rescale scale must be two positive numbers (long, short side), got {scale}")
    long_side, short_side = max(scale), min(scale)
    factor = min(long_side / max(height, width), short_side / min(height, width))
    return int(height * float(factor) + 0.5), int(width * float(factor) + 0.5)


def scale_box(box: Sequence[int], divisor: float) -> CropBox:
    """Map a box to a map ``divisor`` times smaller: every coordinate ``int(c / divisor)`` (truncation)."""
    return tuple(int(c / divisor) for c in box)  # type: ignore[return-value]


def sliding_window_boxes(
    image_hw: Sequence[int], window_hw: Sequence[int], stride_hw: Sequence[int]
) -> List[CropBox]:
    """Sliding windows over an image, rows outer and columns inner (docs/method.md §4.4, §4.5).

    ``grids = max(size - window + stride - 1, 0) // stride + 1`` per axis; window ``i`` starts at
    ``i * stride``, ends at ``min(start + window, size)`` and is then shifted back to start at
    ``max(end - window, 0)``. The last window therefore ends at the image border, and a window larger than
    the image shrinks to the image (no padding). Together the windows cover every pixel.
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    wh, ww = int(window_hw[0]), int(window_hw[1])
    sh, sw = int(stride_hw[0]), int(stride_hw[1])
    if min(wh, ww, sh, sw) <= 0:
        raise ValueError(f"window {tuple(window_hw)} and stride {tuple(stride_hw)} must be positive")
    h_grids = max(h - wh + sh - 1, 0) // sh + 1
    w_grids = max(w - ww + sw - 1, 0) // sw + 1
    boxes = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * sh + wh, h)
            x2 = min(w_idx * sw + ww, w)
            boxes.append((max(y2 - wh, 0), y2, max(x2 - ww, 0), x2))
    return boxes


class SharedTilePlan(NamedTuple):
    """Which distinct tiles to compute and where each window finds its tiles.

    tiles: the distinct absolute tile boxes, in order of first use (window order, then each window's
        row-major tile order).
    window_tiles: per window, in the window's own tile order (the order of ``sliding_window_boxes`` on the
        window size, as the per-window computation uses): ``(index into tiles, window-relative tile box)``.
    """

    tiles: List[CropBox]
    window_tiles: List[List[Tuple[int, CropBox]]]

    @property
    def num_tile_passes(self) -> int:
        """Tile passes of the per-window computation (the sum of tiles over all windows)."""
        return sum(len(w) for w in self.window_tiles)


def shared_tile_plan(
    window_boxes: Sequence[Sequence[int]], tile_hw: Sequence[int], stride_hw: Sequence[int]
) -> SharedTilePlan:
    """Tile boxes of every window (``sliding_window_boxes`` on the window size, §4.4) and their distinct set.

    Args:
        window_boxes: absolute test-window boxes (e.g. ``sliding_window_boxes(image, crop, stride)``).
        tile_hw, stride_hw: HR tile size and stride (``MODEL.HRDA.HR_CROP_SIZE`` and its half or itself).

    Returns:
        ``SharedTilePlan``; ``len(plan.tiles) <= plan.num_tile_passes``, equal when no two windows share a box.
    """
    index: Dict[CropBox, int] = {}
    tiles: List[CropBox] = []
    window_tiles: List[List[Tuple[int, CropBox]]] = []
    for wy1, wy2, wx1, wx2 in window_boxes:
        entries = []
        for rel in sliding_window_boxes((wy2 - wy1, wx2 - wx1), tile_hw, stride_hw):
            absolute = (wy1 + rel[0], wy1 + rel[1], wx1 + rel[2], wx1 + rel[3])
            if absolute not in index:
                index[absolute] = len(tiles)
                tiles.append(absolute)
            entries.append((index[absolute], rel))
        window_tiles.append(entries)
    return SharedTilePlan(tiles, window_tiles)
