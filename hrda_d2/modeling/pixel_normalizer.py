"""The one RGB pixel normaliser of the project (model input, DACS strong augmentation, debug panels).

Images are RGB in 0..255; normalised images are ``(x - pixel_mean) / pixel_std`` per channel
(``MODEL.PIXEL_MEAN`` / ``MODEL.PIXEL_STD``, the original's ``img_norm_cfg``, docs/method.md §10.1).
"""
from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["PixelNormalizer"]


class PixelNormalizer(nn.Module):
    """Per-channel normalisation with non-persistent buffers ``pixel_mean`` / ``pixel_std`` (``3 x 1 x 1``, float32),
    so it moves with its owner's ``.to(device)`` and adds nothing to state dicts."""

    def __init__(self, pixel_mean: Sequence[float], pixel_std: Sequence[float]) -> None:
        super().__init__()
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError(f"MODEL.PIXEL_MEAN / MODEL.PIXEL_STD must have 3 (RGB) values, got "
                             f"{list(pixel_mean)} / {list(pixel_std)}")
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1), False)

    def normalize(self, images: Tensor) -> Tensor:
        """``[N x] 3 x H x W`` RGB 0..255 (any dtype) -> ``(x - pixel_mean) / pixel_std`` in float32, on the device
        of ``images``."""
        images = images.to(torch.float32)
        return (images - self.pixel_mean.to(images.device)) / self.pixel_std.to(images.device)

    def denormalize(self, images: Tensor) -> Tensor:
        """Inverse of :meth:`normalize`: ``x * pixel_std + pixel_mean`` (0..255 range, not clamped), in the dtype
        and on the device of ``images``."""
        return images * self.pixel_std.to(images) + self.pixel_mean.to(images)
