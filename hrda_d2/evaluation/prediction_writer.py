"""Write predictions as PNG files (docs/method.md §12.3).

For every image, named ``<image basename without extension>.png``:

* ``<output_dir>/color/``: 8-bit 'P' PNG of the train-id map with the dataset palette (what the original's
  ``--show-dir --opacity 1`` shows);
* ``<output_dir>/labelIds/`` (``to_label_id=True``, Cityscapes test server): train ids mapped to Cityscapes
  label ids with cityscapesscripts' ``trainId2label`` (0->7, 1->8, ..., 18->33), Cityscapes label colours as
  palette; or ``<output_dir>/labelTrainIds/`` (``to_label_id=False``, ACDC / Dark Zurich servers): the train-id
  map with the 19-colour palette.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from cityscapesscripts.helpers.labels import trainId2label
from detectron2.evaluation import DatasetEvaluator
from PIL import Image

from ..data.datasets.cityscapes_classes import CITYSCAPES_LABEL_ID_COLORS

__all__ = ["SemSegPredictionWriter", "train_ids_to_label_ids", "palette_png"]


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Map an ``H x W`` train-id array (0..18) to Cityscapes label ids (uint8); other values -> 0 (unlabeled)."""
    lut = np.zeros(256, dtype=np.uint8)
    for train_id, label in trainId2label.items():
        if 0 <= train_id < 255:
            lut[train_id] = label.id
    return lut[train_ids.astype(np.uint8)]


def palette_png(index_map: np.ndarray, colors: Sequence[Sequence[int]]) -> Image.Image:
    """An 8-bit 'P' image of ``index_map`` with ``colors[i]`` as the colour of index ``i``."""
    img = Image.fromarray(index_map.astype(np.uint8), mode="P")
    flat = [c for rgb in colors for c in rgb]
    img.putpalette(flat + [0] * (768 - len(flat)))
    return img


class SemSegPredictionWriter(DatasetEvaluator):
    """A ``DatasetEvaluator`` that only writes files (returns no metrics)."""

    def __init__(self, output_dir: str, stuff_colors: Sequence[Sequence[int]], *, to_label_id: bool = True) -> None:
        self._output_dir = output_dir
        self._colors = [tuple(c) for c in stuff_colors]
        self._to_label_id = to_label_id

    def reset(self) -> None:
        for sub in ("color", "labelIds" if self._to_label_id else "labelTrainIds"):
            os.makedirs(os.path.join(self._output_dir, sub), exist_ok=True)

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            train_ids = out["sem_seg"].argmax(dim=0).to("cpu").numpy().astype(np.uint8)
            stem = os.path.splitext(os.path.basename(inp["file_name"]))[0]
            palette_png(train_ids, self._colors).save(os.path.join(self._output_dir, "color", stem + ".png"))
            if self._to_label_id:
                palette_png(train_ids_to_label_ids(train_ids), CITYSCAPES_LABEL_ID_COLORS).save(
                    os.path.join(self._output_dir, "labelIds", stem + ".png"))
            else:
                palette_png(train_ids, self._colors).save(os.path.join(self._output_dir, "labelTrainIds", stem + ".png"))

    def evaluate(self):
        return {}
