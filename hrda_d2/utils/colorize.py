"""Label maps and [0, 1] maps as pictures (``H x W x 3`` uint8 RGB); no model or Detectron2 dependency."""
from typing import Sequence, Union

import numpy as np
import torch

__all__ = ["colorize_labels", "grey_image"]

ArrayLike = Union[np.ndarray, torch.Tensor]


def _numpy(values: ArrayLike) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def colorize_labels(labels: ArrayLike, colors: Sequence[Sequence[int]]) -> np.ndarray:
    """``H x W`` class ids -> ``colors[id]``; ids beyond the palette (e.g. 255 = ignore) are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(colors)] = np.asarray(colors, dtype=np.uint8)
    return lut[_numpy(labels).astype(np.uint8)]


def grey_image(values: ArrayLike) -> np.ndarray:
    """``H x W`` values in [0, 1] (clipped) -> grey ``round(255 * value)``."""
    grey = np.clip(np.rint(_numpy(values).astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)
