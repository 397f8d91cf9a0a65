"""Rare-class-sampling statistics of a prepared dataset (docs/method.md §8.1): pixels per class and file."""
import json
import os
from typing import Any, Dict, Iterable, List

import numpy as np

from ...utils.file_io import atomic_write_text
from ..datasets.cityscapes_classes import NUM_CLASSES

__all__ = ["class_pixel_counts", "write_class_statistics"]


def class_pixel_counts(train_ids: np.ndarray, num_classes: int = NUM_CLASSES) -> Dict[str, int]:
    """Pixels per train id ``0..num_classes-1``, as the statistics store them: ``{"0": n0, ...}`` ascending,
    classes with 0 pixels (and the ignore value) omitted."""
    counts = np.bincount(np.asarray(train_ids, dtype=np.uint8).ravel(), minlength=256)
    return {str(c): int(counts[c]) for c in range(num_classes) if counts[c] > 0}


def write_class_statistics(dataset_root: str, stats: Iterable[Dict[str, Any]]) -> None:
    """Write the three statistics files of docs/method.md §8.1 into ``dataset_root``.

    ``stats``: one dict per label file, in file order: ``{"<train id>": pixels, ..., "file": path}``.
    """
    stats = list(stats)
    per_file: Dict[str, Dict[str, int]] = {}
    samples_with_class: Dict[str, List[List[Any]]] = {}
    for entry in stats:
        counts = {k: v for k, v in entry.items() if k != "file"}
        per_file[entry["file"]] = counts
        for class_id, n in counts.items():
            samples_with_class.setdefault(class_id, []).append([entry["file"], n])
    for name, content in (
        ("sample_class_stats.json", stats),
        ("sample_class_stats_dict.json", per_file),
        ("samples_with_class.json", samples_with_class),
    ):
        atomic_write_text(os.path.join(dataset_root, name), json.dumps(content, indent=2))
