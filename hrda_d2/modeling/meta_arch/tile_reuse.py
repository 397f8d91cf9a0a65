"""Sharing HR detail tiles between overlapping test windows (exact tile reuse, docs/method.md §4.4-4.5).

Test-time slide inference (§4.5) runs ``encode_decode`` (§4.4) on every window, and each window cuts its HR
image into overlapping tiles (§4.4 step 1, §5.2). Neighbouring windows overlap, so many tiles are the same
pixels of the test image: a 1024 x 2048 image with 1024 windows at stride 512 and 512 tiles at stride 256 has
3 windows x 9 tiles = 27 tile boxes but only 21 distinct ones. The detail logits of a tile depend only on its
pixels (backbone and head act per sample once BatchNorm uses running statistics), so each distinct tile can
be computed once and its logits placed into every window that contains it.

A tile is shared only where two windows hold the *identical* image box. Windows that do not sit on the tile
grid (the last window shifted back to the image border, windows shrunk to a small image) simply get tiles of
their own; nothing is interpolated or approximated.

Boxes are ``(y1, y2, x1, x2)`` half-open integer pixels; "window-relative" boxes are in the pixels of the
window, "absolute" boxes in the pixels of the test image.
"""
from typing import Dict, List, NamedTuple, Sequence, Tuple

from .crop_utils import CropBox, sliding_window_boxes

__all__ = ["SharedTilePlan", "shared_tile_plan"]


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
