"""Rare Class Sampling (RCS, docs/method.md §8) as a dataset wrapper over the source split.

Statistics (docs/method.md §8.1, written by ``datasets/prepare_*.py`` into the dataset root):
``sample_class_stats.json`` (list of ``{"<train id>": pixel count, ..., "file": label path}``) and
``samples_with_class.json`` (``{"<train id>": [[label path, pixel count], ...]}``).

Class probabilities (8.2): total pixels per class summed over the files, classes sorted by total
ascending (stable, ties in order of first appearance), ``f = n / sum(n)``, ``p = softmax((1 - f) / T)``
in float32 (torch). File lists (8.3): per class, the files with more than ``min_pixels`` (strict)
pixels of it, matched to the dataset dicts by the basename of ``sem_seg_file_name``.

Sampling (8.4, :class:`RareClassSamplingDataset`, every item; the index is ignored): class ``c ~ p``,
file uniform among the class's files, load and map it; if ``min_crop_ratio > 0``, up to 10 times: if the
crop's label holds more than ``min_pixels * min_crop_ratio`` (strict) pixels of ``c`` stop, else map
the same file again (new crop/flip); after 10 failed checks the 11th sample is kept unchecked.
All draws use NumPy's global RNG (seeded per sample by ``position_sampling.PositionSeededDataset``).
"""
import functools
import json
import logging
import os
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from detectron2.data.common import DatasetFromList
from torch.utils.data import Dataset

from .dataset_mappers.train_mappers import SemSegTrainMapper

__all__ = [
    "RCS_CLASS_STATS_FILE",
    "RCS_SAMPLES_WITH_CLASS_FILE",
    "load_rcs_statistics",
    "rcs_class_probabilities",
    "rcs_files_per_class",
    "RareClassSamplingDataset",
]

logger = logging.getLogger(__name__)

RCS_CLASS_STATS_FILE = "sample_class_stats.json"
RCS_SAMPLES_WITH_CLASS_FILE = "samples_with_class.json"
# number of re-crop checks before the last sample is kept unchecked (docs/method.md §8.4 step 3)
_RECROP_CHECKS = 10


def load_rcs_statistics(dataset_root: str) -> Tuple[List[Dict[str, Any]], Dict[str, List[List[Any]]]]:
    """Read ``(sample_class_stats, samples_with_class)`` from ``dataset_root``.

    Raises ``FileNotFoundError`` naming the missing file and the command that writes it, and
    ``ValueError`` naming the file if its JSON does not have the expected type.
    """
    loaded = []
    for name, expected_type in ((RCS_CLASS_STATS_FILE, list), (RCS_SAMPLES_WITH_CLASS_FILE, dict)):
        path = os.path.join(dataset_root, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"rare class sampling needs {path}, which does not exist. It is written by the dataset's "
                "preparation script (python datasets/prepare_<dataset>.py <dataset root>); or set "
                "DATASETS.RCS.ENABLED False"
            )
        with open(path) as f:
            try:
                content = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not valid JSON ({e}); re-run the dataset's preparation script") from e
        if not isinstance(content, expected_type):
            raise ValueError(f"{path} must hold a JSON {expected_type.__name__}, found {type(content).__name__}")
        loaded.append(content)
    return loaded[0], loaded[1]


def rcs_class_probabilities(
    sample_class_stats: Sequence[Dict[str, Any]], temperature: float
) -> Tuple[List[int], np.ndarray]:
    """Classes and sampling probabilities of docs/method.md §8.2.

    Args:
        sample_class_stats: per-file ``{"<train id>": pixel count, ..., "file": path}`` dicts.
        temperature: ``T`` (0.01 in the paper).
    Returns:
        ``classes``: train ids sorted by total pixel count ascending (stable), and ``probs``: float32
        array aligned with ``classes``, ``softmax((1 - n / sum(n)) / T)``.
    """
    totals: Dict[int, int] = {}
    for stats in sample_class_stats:
        for key, count in stats.items():
            if key == "file":
                continue
            totals[int(key)] = totals.get(int(key), 0) + int(count)
    if not totals:
        raise ValueError("the class statistics hold no pixel counts; re-run the dataset's preparation script")
    ordered = sorted(totals.items(), key=lambda item: item[1])
    counts = torch.tensor([count for _, count in ordered], dtype=torch.int64)
    freq = counts / torch.sum(counts)  # true division: float32
    probs = torch.softmax((1 - freq) / temperature, dim=-1)
    return [c for c, _ in ordered], probs.numpy()


def rcs_files_per_class(
    samples_with_class: Dict[str, List[List[Any]]], classes: Sequence[int], min_pixels: int
) -> Dict[int, List[str]]:
    """Per class, the basenames of the label files with more than ``min_pixels`` (strict) pixels of it,
    in file order (docs/method.md §8.3). Raises ``ValueError`` if a class has none."""
    files: Dict[int, List[str]] = {}
    for c in classes:
        entries = samples_with_class.get(str(c), [])
        files[c] = [path.replace("\\", "/").split("/")[-1] for path, count in entries if count > min_pixels]
        if not files[c]:
            raise ValueError(
                f"rare class sampling: class {c} has no label file with more than {min_pixels} pixels of it "
                f"({len(entries)} file(s) contain it); lower DATASETS.RCS.MIN_PIXELS or disable RCS"
            )
    return files


def _basename_to_index(dataset_dicts: Sequence[Dict[str, Any]]) -> Dict[str, int]:
    index: Dict[str, int] = {}
    for i, d in enumerate(dataset_dicts):
        if "sem_seg_file_name" not in d:
            raise KeyError(f"rare class sampling: dataset dict of {d.get('file_name')} has no 'sem_seg_file_name'")
        name = os.path.basename(d["sem_seg_file_name"])
        if name in index:
            raise ValueError(
                f"rare class sampling matches files by basename, but {name} occurs twice in the source dataset "
                f"({dataset_dicts[index[name]]['sem_seg_file_name']} and {d['sem_seg_file_name']})"
            )
        index[name] = i
    return index


class RareClassSamplingDataset(Dataset):
    """Source dataset whose every item is a rare-class sample (docs/method.md §8.4); the index is ignored.

    Args:
        dataset_dicts: the source split's dataset dicts (``sem_seg_file_name`` required).
        mapper: callable dataset dict -> mapped dict with ``"sem_seg"`` (``h x w`` tensor). A
            :class:`SemSegTrainMapper` reads and rescales the file once per item and re-runs only its
            random steps for the re-crops (same result as mapping the file again).
        sample_class_stats, samples_with_class: the statistics (see :func:`load_rcs_statistics`).
        temperature: ``DATASETS.RCS.CLASS_TEMP``.
        min_pixels: ``DATASETS.RCS.MIN_PIXELS`` (file-list threshold, original-resolution counts).
        min_crop_ratio: ``DATASETS.RCS.MIN_CROP_RATIO``; a crop is accepted when it holds more than
            ``min_pixels * min_crop_ratio`` pixels of the drawn class; 0 disables the re-crops.
    ``len()`` is the number of dataset dicts (for Detectron2 logging; sampling never uses it).
    """

    def __init__(
        self,
        dataset_dicts: Sequence[Dict[str, Any]],
        mapper: Callable[[Dict[str, Any]], Dict[str, Any]],
        sample_class_stats: Sequence[Dict[str, Any]],
        samples_with_class: Dict[str, List[List[Any]]],
        *,
        temperature: float,
        min_pixels: int,
        min_crop_ratio: float,
    ):
        self.classes, self.probs = rcs_class_probabilities(sample_class_stats, temperature)
        files = rcs_files_per_class(samples_with_class, self.classes, min_pixels)
        name_to_index = _basename_to_index(dataset_dicts)
        self.class_indices: Dict[int, np.ndarray] = {}
        for c, names in files.items():
            missing = [n for n in names if n not in name_to_index]
            if missing:
                raise ValueError(
                    f"rare class sampling: {len(missing)} label file(s) of the statistics, e.g. {missing[0]}, "
                    "are not in the source dataset; the statistics files are stale or belong to another dataset: "
                    "re-run the dataset's preparation script"
                )
            self.class_indices[c] = np.array([name_to_index[n] for n in names], dtype=np.int64)
        self.min_pixels = int(min_pixels)
        self.min_crop_ratio = float(min_crop_ratio)
        self.dataset_dicts = DatasetFromList(list(dataset_dicts), copy=False)
        self.mapper = mapper
        logger.info(
            "Rare class sampling: classes %s with probabilities %s; files per class %s",
            self.classes,
            np.round(self.probs, 4).tolist(),
            [len(self.class_indices[c]) for c in self.classes],
        )

    def __len__(self) -> int:
        return len(self.dataset_dicts)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        """One rare-class sample drawn from NumPy's global RNG; ``index`` is ignored."""
        c = np.random.choice(self.classes, p=self.probs)
        i = int(np.random.choice(self.class_indices[c]))
        if isinstance(self.mapper, SemSegTrainMapper):
            # re-crops redo only the random steps; the original reloads the file, with the same result
            remap = functools.partial(self.mapper.augment, self.mapper.load(self.dataset_dicts[i]))
        else:
            remap = functools.partial(self.mapper, self.dataset_dicts[i])
        sample = remap()
        if self.min_crop_ratio > 0:
            for _ in range(_RECROP_CHECKS):
                if int((sample["sem_seg"] == c).sum()) > self.min_pixels * self.min_crop_ratio:
                    break
                sample = remap()
        return sample
