"""Preparation of the splits of a split file (``DATASETS.SPLIT_FILES``, hrda_d2/data/datasets/split_files.py):
raw masks -> train-id PNGs, and the rare-class-sampling statistics of every labelled split.

For each split with ``labels``:

* with ``raw_label_suffix`` (and the file's ``label_map``): every ``<labels>/**/<stem><raw_label_suffix>``
  (a grey or palettised PNG, e.g. a binary mask with values 0 / 255) becomes ``<stem><label_suffix>`` next to it,
  through ``label_map`` (raw value -> train id; a value missing from it is refused, naming the file);
* the statistics of docs/method.md §8.1 over the split's train-id labels, for the file's ``len(classes)``
  classes, go to ``<split file folder>/rcs_statistics/<split name>/`` (the split's ``dataset_root``).

Idempotent like the builtin preparations: existing train-id PNGs are read back, not rewritten.
"""
import functools
import os
from typing import List

from ..datasets.cityscapes_classes import LabelIdMapping
from ..datasets.file_lists import list_files, replace_suffix
from ..datasets.sem_seg_splits import DatasetNotFoundError
from ..datasets.split_files import SplitFile, SplitSpec, read_split_file, statistics_dir
from .label_conversion import convert_id_label, read_index_label
from .prepare import LabelTask, PreparationResult, convert_labels

__all__ = ["prepare_split_file"]


def _mapping(spec: SplitFile) -> LabelIdMapping:
    pairs = tuple(sorted((int(k), int(v)) for k, v in spec.label_map.items() if v != 255))
    return LabelIdMapping(dataset=os.path.basename(spec.path), id_to_train_id=pairs,
                          valid_ids=tuple(sorted(int(k) for k in spec.label_map)),
                          valid_ids_text=f"the label_map values {sorted(spec.label_map)} of {spec.path}")


def _tasks(spec: SplitFile, split: SplitSpec, verify_images: bool) -> List[LabelTask]:
    source_suffix = split.raw_label_suffix or split.label_suffix
    labels = list_files(split.labels, source_suffix, exclude_suffixes=() if split.raw_label_suffix is None
                        else (split.label_suffix,))
    if not labels:
        raise DatasetNotFoundError(f"split '{split.name}' of {spec.path}: no '*{source_suffix}' labels below "
                                   f"{split.labels}")
    tasks = []
    for rel in labels:
        output = os.path.join(split.labels, replace_suffix(rel, source_suffix, split.label_suffix))
        image = os.path.join(split.images, replace_suffix(rel, source_suffix, split.image_suffix))
        tasks.append(LabelTask(source=os.path.join(split.labels, rel), output=output,
                               image=image if os.path.isfile(image) else None, stats_file=output,
                               verify_image=verify_images, num_classes=len(spec.classes)))
    return tasks


def prepare_split_file(path: str, nproc: int = 4, verify_images: bool = False,
                       map_unknown_to_ignore: bool = False) -> PreparationResult:
    """Prepare every labelled split of the split file ``path`` (module docstring). Returns the totals."""
    spec = read_split_file(path)
    converted = skipped = with_stats = 0
    for split in spec.splits:
        if split.labels is None:
            continue
        if split.raw_label_suffix is not None and spec.label_map is None:
            raise ValueError(f"split '{split.name}' of {path} has raw_label_suffix but the file has no label_map "
                             f"(raw mask value -> train id)")
        converter = None if split.raw_label_suffix is None else functools.partial(
            convert_id_label, reader=read_index_label, mapping=_mapping(spec),
            map_unknown_to_ignore=map_unknown_to_ignore)
        stats_root = statistics_dir(spec, split)
        os.makedirs(stats_root, exist_ok=True)
        result = convert_labels(stats_root, _tasks(spec, split, verify_images), converter, nproc, split.name)
        converted, skipped, with_stats = (converted + result.num_converted, skipped + result.num_skipped,
                                          with_stats + result.num_with_stats)
    return PreparationResult(spec.root, converted, skipped, with_stats)
