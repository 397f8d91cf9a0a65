"""Splits of your own datasets declared in YAML files (``DATASETS.SPLIT_FILES``), any number of classes.

A split file lists splits; paths are relative to the file's folder::

    classes: [background, building]          # the label space (MODEL.SEM_SEG_HEAD.NUM_CLASSES = 2)
    colors: [[0, 0, 0], [220, 20, 60]]       # optional; default: distinct colours
    splits:
      - name: roofs_train                    # for DATASETS.SOURCE / TARGET / TEST
        images: images/train                 # image folder, searched recursively
        image_suffix: .jpg
        labels: labels/train                 # optional (image-only target split without it)
        label_suffix: _labelTrainIds.png     # train-id PNGs (0..N-1, 255 = ignore) at the same relative paths
        raw_label_suffix: _mask.png          # optional: raw masks that datasets/prepare_split_file.py converts
      - name: roofs_val
        ...
    label_map: {0: 0, 255: 1}                # optional: raw mask value -> train id (for raw_label_suffix)

The splits carry ``stuff_classes`` / ``stuff_colors`` of the file, ``ignore_label`` 255, ``evaluator_type``
"sem_seg" and ``dataset_root`` = ``<file's folder>/rcs_statistics/<split name>`` (rare class sampling reads the
split's statistics there; ``datasets/prepare_split_file.py`` writes them). ``tools/train_net.py`` and ``demo/demo.py`` register the files of
``DATASETS.SPLIT_FILES``; in your own script call :func:`register_split_files`.
"""
import colorsys
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml
from detectron2.data import DatasetCatalog, MetadataCatalog

from .sem_seg_splits import register_sem_seg_split

__all__ = ["SplitFile", "SplitFileError", "SplitSpec", "default_palette", "read_split_file", "register_split_files",
           "statistics_dir"]

_SPLIT_KEYS = {"name", "images", "image_suffix", "labels", "label_suffix", "raw_label_suffix"}
_FILE_KEYS = {"classes", "colors", "splits", "label_map"}


class SplitFileError(ValueError):
    """A split file is missing, not YAML, or its fields are wrong (the message names the file and field)."""


@dataclass(frozen=True)
class SplitSpec:
    """One split of a split file (absolute paths)."""

    name: str
    images: str
    image_suffix: str
    labels: Optional[str]
    label_suffix: str
    raw_label_suffix: Optional[str]


@dataclass(frozen=True)
class SplitFile:
    """A parsed split file: the label space, the raw-mask mapping and the splits."""

    path: str
    classes: Tuple[str, ...]
    colors: Tuple[Tuple[int, int, int], ...]
    label_map: Optional[Mapping[int, int]]
    splits: Tuple[SplitSpec, ...]

    @property
    def root(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))


def default_palette(num_classes: int) -> List[Tuple[int, int, int]]:
    """``num_classes`` distinct RGB colours (hues spread evenly; class 0 black for binary masks)."""
    if num_classes == 2:
        return [(0, 0, 0), (255, 255, 255)]
    return [tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(i / num_classes, 0.8, 0.9))
            for i in range(num_classes)]


def _fail(path: str, message: str) -> SplitFileError:
    return SplitFileError(f"split file {path}: {message} (format: hrda_d2/data/datasets/split_files.py, "
                          f"datasets/README.md 'Your own dataset')")


def read_split_file(path: str) -> SplitFile:
    """Parse and check ``path`` (see the module docstring); raises :class:`SplitFileError` naming the field."""
    if not os.path.isfile(path):
        raise _fail(path, "does not exist")
    try:
        with open(path) as f:
            content = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise _fail(path, f"is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(content, dict) or not isinstance(content.get("splits"), list) or not content["splits"]:
        raise _fail(path, "needs a top-level 'splits' list")
    unknown = sorted(set(content) - _FILE_KEYS)
    if unknown:
        raise _fail(path, f"unknown top-level keys {unknown}; known: {sorted(_FILE_KEYS)}")
    classes = content.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise _fail(path, "'classes' must be a non-empty list of class names")
    colors = content.get("colors") or default_palette(len(classes))
    if len(colors) != len(classes) or not all(
            isinstance(c, (list, tuple)) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
            for c in colors):
        raise _fail(path, f"'colors' must hold one [R, G, B] (0..255) per class ({len(classes)})")
    label_map = content.get("label_map")
    if label_map is not None:
        if not isinstance(label_map, dict) or not all(
                isinstance(k, int) and isinstance(v, int) and (0 <= v < len(classes) or v == 255)
                for k, v in label_map.items()):
            raise _fail(path, f"'label_map' must map raw integer values to train ids 0..{len(classes) - 1} or 255")
    root = os.path.dirname(os.path.abspath(path))
    splits = []
    for i, entry in enumerate(content["splits"]):
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("images"):
            raise _fail(path, f"splits[{i}] needs at least 'name' and 'images'")
        unknown = sorted(set(entry) - _SPLIT_KEYS)
        if unknown:
            raise _fail(path, f"splits[{i}] ({entry['name']}): unknown keys {unknown}; known: {sorted(_SPLIT_KEYS)}")
        labels = entry.get("labels")
        splits.append(SplitSpec(
            name=str(entry["name"]),
            images=os.path.join(root, str(entry["images"])),
            image_suffix=str(entry.get("image_suffix", ".png")),
            labels=None if labels is None else os.path.join(root, str(labels)),
            label_suffix=str(entry.get("label_suffix", "_labelTrainIds.png")),
            raw_label_suffix=entry.get("raw_label_suffix"),
        ))
    return SplitFile(path, tuple(classes), tuple(tuple(c) for c in colors), label_map, tuple(splits))


def statistics_dir(spec: SplitFile, split: SplitSpec) -> str:
    """Where the rare-class-sampling statistics of ``split`` live (the split's ``dataset_root``)."""
    return os.path.join(spec.root, "rcs_statistics", split.name)


def _metadata(spec: SplitFile, split: SplitSpec) -> Dict[str, Any]:
    return {"stuff_classes": list(spec.classes), "stuff_colors": [list(c) for c in spec.colors],
            "dataset_root": statistics_dir(spec, split), "split_file": os.path.abspath(spec.path)}


def register_split_files(paths: Sequence[str]) -> List[str]:
    """Register every split of the files ``paths`` (``DATASETS.SPLIT_FILES``); returns their names.

    Registering the same file again does nothing; a name already registered from elsewhere is an error naming it.
    """
    names = []
    for path in paths:
        spec = read_split_file(path)
        for split in spec.splits:
            if split.name in DatasetCatalog.list():
                if MetadataCatalog.get(split.name).get("split_file") == os.path.abspath(path):
                    names.append(split.name)
                    continue
                raise _fail(path, f"split name '{split.name}' is already registered (a builtin split or another "
                                  f"file): choose another name")
            register_sem_seg_split(split.name, split.images, split.labels, split.image_suffix, split.label_suffix,
                                   **_metadata(spec, split))
            names.append(split.name)
    return names
