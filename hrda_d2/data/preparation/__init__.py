"""Dataset preparation (run once per dataset by ``datasets/prepare_*.py``; not needed for loading).

* :mod:`.label_conversion`: raw GTA / Synthia / Cityscapes labels -> ``*_labelTrainIds.png``;
* :mod:`.class_statistics`: the rare-class-sampling statistics files;
* :mod:`.prepare`: ``prepare_gta`` / ``prepare_synthia`` / ``prepare_cityscapes`` / ``prepare_wilddash2`` (checks,
  parallel conversion);
* :mod:`.split_file`: ``prepare_split_file`` for your own datasets (raw masks -> train ids, statistics);
* :mod:`.cli`: the scripts' shared command line.
"""
from .class_statistics import class_pixel_counts, write_class_statistics
from .label_conversion import DatasetFormatError, map_label_ids, read_train_id_label
from .prepare import (
    MissingImageError,
    PreparationResult,
    prepare_cityscapes,
    prepare_gta,
    prepare_synthia,
    prepare_wilddash2,
)
from .split_file import prepare_split_file

__all__ = [
    "DatasetFormatError",
    "MissingImageError",
    "PreparationResult",
    "class_pixel_counts",
    "map_label_ids",
    "prepare_cityscapes",
    "prepare_gta",
    "prepare_split_file",
    "prepare_synthia",
    "prepare_wilddash2",
    "read_train_id_label",
    "write_class_statistics",
]
