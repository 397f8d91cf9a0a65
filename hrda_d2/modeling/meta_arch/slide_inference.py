"""Windowed (slide) inference and its exact HR-tile reuse (docs/method.md §4.5, §5.2).

Test-time slide inference runs the whole-image inference (``encode_decode``, §4.4) on every TEST.SLIDE window
and averages the windows' logits with a count matrix. Every window of a two-scale HRDA model cuts its HR image
into overlapping tiles; neighbouring windows share many of them. :func:`shared_tile_window_logits` computes each
distinct tile once (plan: :func:`hrda_d2_deploy.geometry.shared_tile_plan`) and hands every window its tiles' logits.

The functions here know nothing of the model: they take the image, the window boxes and callables (one window's
inference, the decoding of a batch of tiles, the merging of a window's tile logits), so the meta-architecture
stays the one place that knows its branches.

Tensors: ``images`` normalised ``N x 3 x H x W``; per-window logits ``N x K x h x w`` (window size); boxes
``(y1, y2, x1, x2)`` half-open in image pixels.
"""
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
from torch import Tensor

from hrda_d2_deploy.geometry import shared_tile_plan

from .crop_utils import CropBox, crop, stack_windows

__all__ = ["shared_tile_window_logits", "window_logits"]

WindowFn = Callable[[Tensor, Optional[Tensor]], Tensor]  # (window images, its HR logits or None) -> logits


def window_logits(images: Tensor, boxes: Sequence[CropBox], window_fn: Callable[[Tensor], Tensor],
                  batched: bool) -> Iterator[Tensor]:
    """``window_fn`` on every window, in window order: all windows in one batch (``batched``, TEST.SLIDE.BATCHED)
    or one window at a time. Yields ``N x K x h x w`` per window."""
    if batched:
        yield from window_fn(stack_windows(images, boxes)).split(images.shape[0])
        return
    for box in boxes:
        yield window_fn(crop(images, box))


def shared_tile_window_logits(
    images: Tensor,
    boxes: Sequence[CropBox],
    *,
    tile_size: Sequence[int],
    tile_stride: Sequence[int],
    batched: bool,
    decode_tiles: Callable[[Tensor], Tensor],
    merge_tiles: Callable[[Sequence[Tensor], Sequence[CropBox]], Tensor],
    window_fn: WindowFn,
) -> Iterator[Tensor]:
    """Per-window logits (window order) of slide inference with shared HR tiles.

    Args:
        images: normalised ``N x 3 x H x W``.
        boxes: the test windows.
        tile_size, tile_stride: the HR tiles of one window (``MODEL.HRDA.HR_CROP_SIZE`` and its stride).
        batched: all distinct tiles in one batch (TEST.SLIDE.BATCHED), else window by window (only the tiles not
            computed yet; a tile's logits are dropped after the last window that uses it).
        decode_tiles: ``T*N x 3 x h_t x w_t`` tiles (tile-major) -> their HR logits ``T*N x K x h'_t x w'_t``.
        merge_tiles: one window's tile logits and their boxes (relative to the window) -> its HR logits.
        window_fn: ``(window images, window HR logits)`` -> the window's fused logits (the context branch,
            attention and fusion as in whole-image inference).

    Each window's HR logits are its tiles' logits merged in its own tile order and boxes, exactly as the window's
    own pass would; so the result equals the per-window computation up to the float rounding of another batch
    composition.
    """
    plan = shared_tile_plan(boxes, tile_size, tile_stride)
    n = images.shape[0]

    def decode(indices: Sequence[int]) -> List[Tensor]:
        return list(decode_tiles(stack_windows(images, [plan.tiles[i] for i in indices])).split(n))

    def window_hr(tile_logits: Dict[int, Tensor], entries) -> Tensor:
        return merge_tiles([tile_logits[i] for i, _ in entries], [rel for _, rel in entries])

    if batched:
        tile_logits = dict(enumerate(decode(range(len(plan.tiles)))))
        hr_logits = torch.cat([window_hr(tile_logits, entries) for entries in plan.window_tiles])
        del tile_logits
        yield from window_fn(stack_windows(images, boxes), hr_logits).split(n)
        return
    last_use = {i: w for w, entries in enumerate(plan.window_tiles) for i, _ in entries}
    cache: Dict[int, Tensor] = {}
    for w, (box, entries) in enumerate(zip(boxes, plan.window_tiles)):
        missing = list(dict.fromkeys(i for i, _ in entries if i not in cache))
        if missing:
            cache.update(zip(missing, decode(missing)))
        hr_logits = window_hr(cache, entries)
        for i in {i for i, _ in entries if last_use[i] == w}:
            del cache[i]
        yield window_fn(crop(images, box), hr_logits)
