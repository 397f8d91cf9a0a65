"""Dataset registration (lazy: nothing touches the disk until a split is loaded).

Importing this package registers the builtin splits of :mod:`.builtin` (``gta_train``, ``synthia_train``,
``acdc_{train,val}``, ``darkzurich_{train,val}``, ``wilddash2_{train,val}``) under ``$DETECTRON2_DATASETS`` (default
"datasets") and adds ``stuff_colors`` / ``dataset_root`` to Detectron2's builtin
``cityscapes_fine_sem_seg_{train,val}``.

* :func:`register_sem_seg_split` registers your own split; :func:`register_cityscapes_root` a second
  Cityscapes-layout folder; :func:`load_split` loads any split with clear errors and a sorted list.
* :mod:`.cityscapes_classes`: class names, palette, label-id -> train-id tables.

Preparation (``datasets/prepare_*.py``) is :mod:`hrda_d2.data.preparation`; the generated replicas of the real
layouts (tests, ``make demo``) are :mod:`hrda_d2.data.synthetic`.
"""
from . import builtin  # noqa: F401  (registers the builtin splits)
from .builtin import BUILTIN_SPLITS, CITYSCAPES_BUILTIN_SPLITS, register_all_hrda_datasets, register_builtin_split
from .cityscapes_classes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABEL_ID_TO_TRAIN_ID,
    CITYSCAPES_PALETTE,
    IGNORE_LABEL,
    NUM_CLASSES,
    SYNTHIA_ID_TO_TRAIN_ID,
    SYNTHIA_MIOU16_CLASSES,
)
from .sem_seg_splits import (
    DatasetNotFoundError,
    MissingLabelError,
    UnknownSplitError,
    check_cityscapes_split,
    load_cityscapes_split,
    load_sem_seg_split,
    load_split,
    register_cityscapes_root,
    register_sem_seg_split,
)

__all__ = [
    "BUILTIN_SPLITS",
    "CITYSCAPES_BUILTIN_SPLITS",
    "register_all_hrda_datasets",
    "register_builtin_split",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_LABEL_ID_TO_TRAIN_ID",
    "CITYSCAPES_PALETTE",
    "IGNORE_LABEL",
    "NUM_CLASSES",
    "SYNTHIA_ID_TO_TRAIN_ID",
    "SYNTHIA_MIOU16_CLASSES",
    "DatasetNotFoundError",
    "MissingLabelError",
    "UnknownSplitError",
    "check_cityscapes_split",
    "load_cityscapes_split",
    "load_sem_seg_split",
    "load_split",
    "register_cityscapes_root",
    "register_sem_seg_split",
]
