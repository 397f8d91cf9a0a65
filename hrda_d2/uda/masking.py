"""Random block masking of MIC, masked image consistency (``docs/method.md §17.3``).

A masked image keeps a random ~``1 - mask_ratio`` share of square blocks and sets the others to 0 *in the
normalised image space* (``(x - mean) / std``), i.e. to the dataset mean colour:

1. per image, a grid of ``round(H / block_size) x round(W / block_size)`` uniform draws from the torch RNG
   (one ``torch.rand(N, 1, gh, gw)`` call, on the images' device);
2. a block is kept where its draw is strictly greater than ``mask_ratio``;
3. the grid is upsampled to ``H x W`` with nearest-neighbour interpolation (``F.interpolate(mode="nearest")``:
   output pixel ``(y, x)`` takes grid cell ``(floor(y * gh / H), floor(x * gw / W))``); when ``H`` is not a
   multiple of ``block_size`` the blocks are therefore not all ``block_size`` pixels tall (1000 px with blocks
   of 64 -> 16 rows of 62 or 63 px);
4. the images are multiplied by the mask.

``round`` is Python's (ties to even: 160 / 64 = 2.5 -> 2), as in the original.

Token masking (``UDA.MIC.MASK_TYPE`` "tokens", VFM-UDA, docs/method.md §22.3) masks the backbone's patch tokens
instead: :func:`token_mask` draws which, the backbone replaces them by its mask token.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["block_mask", "block_mask_grid_shape", "mask_images", "token_mask"]


def block_mask_grid_shape(height: int, width: int, block_size: int) -> Tuple[int, int]:
    """``(round(height / block_size), round(width / block_size))``: the number of mask blocks per axis.

    Raises ValueError when ``block_size`` is not positive or an image side is shorter than half a block (the
    grid would be empty); the message names the config key to change (``UDA.MIC.BLOCK_SIZE``).
    """
    if block_size <= 0:
        raise ValueError(f"UDA.MIC.BLOCK_SIZE must be a positive number of pixels, got {block_size}")
    grid = (round(height / block_size), round(width / block_size))
    if min(grid) < 1:
        raise ValueError(
            f"UDA.MIC.BLOCK_SIZE={block_size} gives an empty mask grid {grid} for {height} x {width} images; "
            f"use a block size of at most {2 * min(height, width) - 1} pixels (about the crop size / 16)")
    return grid


@torch.no_grad()
def block_mask(batch_size: int, height: int, width: int, mask_ratio: float, block_size: int,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """A random block mask, ``batch_size x 1 x height x width`` float32 of 0 (masked) / 1 (kept).

    Draws ``torch.rand(batch_size, 1, gh, gw)`` from the global torch RNG of ``device``
    (``(gh, gw)`` = :func:`block_mask_grid_shape`), keeps the blocks whose draw is ``> mask_ratio`` and
    upsamples with nearest-neighbour interpolation. ``mask_ratio`` 0 keeps (almost surely) every block, 1 none.
    """
    grid_h, grid_w = block_mask_grid_shape(height, width, block_size)
    draws = torch.rand(batch_size, 1, grid_h, grid_w, device=device)
    kept = (draws > mask_ratio).float()
    return F.interpolate(kept, size=(height, width), mode="nearest")


@torch.no_grad()
def mask_images(images: torch.Tensor, mask_ratio: float, block_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Block-mask normalised images.

    Args:
        images: ``N x C x H x W`` normalised float images (not modified).
        mask_ratio: ``UDA.MIC.MASK_RATIO``, the expected share of masked blocks.
        block_size: ``UDA.MIC.BLOCK_SIZE`` in pixels.

    Returns:
        ``(masked_images, mask)``: ``N x C x H x W`` images with the masked blocks set to 0, and the
        ``N x 1 x H x W`` 0/1 mask (:func:`block_mask`, drawn on the images' device), in the images' dtype.
    """
    if images.dim() != 4:
        raise ValueError(f"mask_images: images must be N x C x H x W, got {tuple(images.shape)}")
    n, _, h, w = images.shape
    mask = block_mask(n, h, w, mask_ratio, block_size, images.device).to(images.dtype)
    return images * mask, mask


@torch.no_grad()
def token_mask(batch_size: int, grid: Tuple[int, int], mask_ratio: float, device: torch.device | str = "cpu",
               draws: Optional[torch.Tensor] = None) -> torch.Tensor:
    """VFM-UDA's token mask, ``batch_size x h x w`` bool (True = the patch token is replaced by the mask token).

    One ``torch.rand(batch_size, h * w)`` from the global torch RNG of ``device``, row-major over the token grid
    ``grid = (h, w)`` (the patch embedding's order); a token is masked where its draw is below ``mask_ratio``.
    ``draws`` (``batch_size x h*w``) replays given draws instead.
    """
    height, width = grid
    if draws is None:
        draws = torch.rand((batch_size, height * width), device=device)
    return (mask_ratio > draws).reshape(batch_size, height, width)
