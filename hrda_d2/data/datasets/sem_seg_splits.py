"""Registering and loading semantic-segmentation splits (lazy; Detectron2 dataset-dict convention).

Dataset dicts (see the project's data contract)::

    {"file_name": absolute image path,
     "sem_seg_file_name": absolute path of the train-id label PNG (uint8, 0..18, 255 = ignore),
     "height": int, "width": int}          # height/width only where ``with_image_size`` is set

Registering never touches the disk. Loading a split checks, in this order, and raises a clear error:

* the image folder (and label folder) exists -> :class:`DatasetNotFoundError` naming the path, the expected
  layout and the preparation command;
* every image has its label -> :class:`MissingLabelError` naming the image and the label it expects.
  Images without labels are never skipped silently: for a training source a skipped image would change the
  data set, so this is an error, not a skip.

Lists are sorted by image path, so they are deterministic.

Public API:

* :func:`register_sem_seg_split` - register your own split (image folder + label folder + suffixes).
* :func:`register_cityscapes_root` - register a Cityscapes-layout folder under new names (a second copy, tests);
  it reuses Detectron2's ``load_cityscapes_semantic``.
* :func:`load_split` - load any registered split by name; for Cityscapes-layout splits (including
  Detectron2's builtin ``cityscapes_fine_sem_seg_{train,val}``) it first checks the folders and the
  ``*_gtFine_labelTrainIds.png`` files and reports what is missing and how to create it.
"""
import difflib
import functools
import logging
import os
from typing import Any, Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.cityscapes import load_cityscapes_semantic
from PIL import Image

from .cityscapes_classes import CITYSCAPES_CLASSES, IGNORE_LABEL, stuff_colors
from .file_lists import list_files, replace_suffix

__all__ = [
    "DatasetNotFoundError",
    "MissingLabelError",
    "UnknownSplitError",
    "load_sem_seg_split",
    "register_sem_seg_split",
    "load_cityscapes_split",
    "check_cityscapes_split",
    "register_cityscapes_root",
    "cityscapes_hint",
    "load_split",
    "sem_seg_metadata",
]

logger = logging.getLogger(__name__)

_MAX_LISTED = 5  # how many offending files an error message names


class DatasetNotFoundError(FileNotFoundError):
    """A split's folder does not exist (dataset not downloaded, wrong $DETECTRON2_DATASETS, not prepared)."""


class UnknownSplitError(KeyError):
    """A split name that is not registered (``DATASETS.*``); the message names it and the nearest one."""

    def __str__(self) -> str:  # the message, not KeyError's quoted repr of it
        return str(self.args[0])


class MissingLabelError(FileNotFoundError):
    """An image of a split has no label file."""


def sem_seg_metadata(**extra: Any) -> Dict[str, Any]:
    """The metadata every split of this project carries: 19 Cityscapes classes, palette, ignore label 255."""
    meta: Dict[str, Any] = {
        "stuff_classes": list(CITYSCAPES_CLASSES),
        "stuff_colors": stuff_colors(),
        "ignore_label": IGNORE_LABEL,
    }
    meta.update(extra)
    return meta


def _require_dir(path: str, what: str, split_name: str, hint: str) -> None:
    if not os.path.isdir(path):
        raise DatasetNotFoundError(
            f"Dataset split '{split_name}': {what} folder not found: {os.path.abspath(path)}\n{hint}"
        )


def _format_missing(pairs: Sequence[tuple], total: int) -> str:
    shown = "\n".join(f"  image {image} -> expected label {label}" for image, label in pairs[:_MAX_LISTED])
    more = f"\n  ... and {len(pairs) - _MAX_LISTED} more" if len(pairs) > _MAX_LISTED else ""
    return f"{len(pairs)} of {total} images have no label:\n{shown}{more}"


def _image_size(path: str) -> tuple:
    """(height, width) from the image header (no decoding); clear error if it is not a readable image."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, SyntaxError, ValueError) as e:
        raise OSError(f"cannot read image header of {path}: {e} (corrupt or not an image file)") from e
    return height, width


def load_sem_seg_split(
    image_root: str,
    label_root: Optional[str],
    image_suffix: str,
    label_suffix: str,
    *,
    with_image_size: bool = True,
    split_name: str = "",
    hint: str = "",
) -> List[Dict[str, Any]]:
    """List the images below ``image_root`` and their labels below ``label_root``.

    An image ``<image_root>/<rel>/<name><image_suffix>`` has the label
    ``<label_root>/<rel>/<name><label_suffix>`` (same relative folder, suffix replaced; mmseg's rule).

    Args:
        image_root, label_root: folders (searched recursively). ``label_root=None``: an image-only split
            (e.g. unlabeled target images); the dicts then have no "sem_seg_file_name".
        image_suffix, label_suffix: file name endings, e.g. ".png" and "_labelTrainIds.png".
            Files ending with ``label_suffix`` are never taken as images (GTA keeps both in one name space).
        with_image_size: add "height"/"width" read from each image header (needed by evaluators; off for
            the large synthetic source sets, whose mappers read the image anyway).
        split_name, hint: used in error messages (the hint says the layout and how to prepare the data).

    Returns:
        list of dataset dicts, sorted by image path.

    Raises:
        DatasetNotFoundError: a folder is missing or holds no image / no converted label at all.
        MissingLabelError: some images have no label (all are named, up to 5).
        OSError: an image header cannot be read (``with_image_size``), naming the file.
    """
    _require_dir(image_root, "image", split_name, hint)
    exclude = (label_suffix,) if label_suffix and label_suffix != image_suffix else ()
    images = list_files(image_root, image_suffix, exclude_suffixes=exclude)
    if not images:
        raise DatasetNotFoundError(
            f"Dataset split '{split_name}': no '*{image_suffix}' images below {os.path.abspath(image_root)}\n"
            f"{hint}"
        )
    image_root = os.path.abspath(image_root)
    dicts: List[Dict[str, Any]] = [{"file_name": os.path.join(image_root, rel)} for rel in images]
    if label_root is not None:
        _require_dir(label_root, "label", split_name, hint)
        label_root = os.path.abspath(label_root)
        present = set(list_files(label_root, label_suffix))
        expected = [replace_suffix(rel, image_suffix, label_suffix) for rel in images]
        missing = [
            (os.path.join(image_root, img), os.path.join(label_root, lab))
            for img, lab in zip(images, expected)
            if lab not in present
        ]
        if len(missing) == len(images):
            raise DatasetNotFoundError(
                f"Dataset split '{split_name}': none of the {len(images)} images has a '*{label_suffix}' "
                f"label below {label_root} (labels not converted yet?); first expected: {missing[0][1]}\n{hint}"
            )
        if missing:
            raise MissingLabelError(f"Dataset split '{split_name}': {_format_missing(missing, len(images))}\n{hint}")
        for d, rel in zip(dicts, expected):
            d["sem_seg_file_name"] = os.path.join(label_root, rel)
    if with_image_size:
        for d in dicts:
            d["height"], d["width"] = _image_size(d["file_name"])
    logger.info("Loaded %d images of split '%s' from %s", len(dicts), split_name, image_root)
    return dicts


def register_sem_seg_split(
    name: str,
    image_root: str,
    label_root: Optional[str],
    image_suffix: str,
    label_suffix: str,
    *,
    with_image_size: bool = True,
    hint: Optional[str] = None,
    **metadata: Any,
) -> None:
    """Register a semantic-segmentation split with Detectron2 (lazy: the disk is read only when loaded).

    Use it for your own data sets, e.g. a folder of images with train-id label PNGs::

        from hrda_d2.data.datasets import register_sem_seg_split
        register_sem_seg_split("mycity_val", "data/mycity/images/val", "data/mycity/labels/val",
                               ".jpg", "_trainIds.png")
        # then: DATASETS.TEST = ("mycity_val",)

    Labels must already hold train ids (0..18, 255 = ignore). ``label_root=None`` registers an image-only
    split (unlabeled target images). Arguments as in :func:`load_sem_seg_split`; ``hint`` is added to the
    error raised when the split is loaded but missing (default: the expected layout).

    Metadata: the 19 Cityscapes ``stuff_classes`` / ``stuff_colors``, ``ignore_label`` 255,
    ``evaluator_type`` "sem_seg", ``image_root``, ``sem_seg_root`` and ``dataset_root`` (default: the parent
    of ``image_root``; rare class sampling reads its statistics files there), overridable by ``metadata``.
    """
    if hint is None:
        hint = (
            f"Expected layout: images {image_root}/**/*{image_suffix}"
            + (f", labels {label_root}/**/*{label_suffix} at the same relative paths" if label_root else "")
        )
    DatasetCatalog.register(
        name,
        functools.partial(
            load_sem_seg_split,
            image_root,
            label_root,
            image_suffix,
            label_suffix,
            with_image_size=with_image_size,
            split_name=name,
            hint=hint,
        ),
    )
    meta = sem_seg_metadata(
        evaluator_type="sem_seg",
        image_root=image_root,
        dataset_root=os.path.dirname(os.path.normpath(image_root)),
    )
    if label_root is not None:
        meta["sem_seg_root"] = label_root
    meta.update(metadata)
    MetadataCatalog.get(name).set(**meta)


# --------------------------------------------------------------------------------------------- Cityscapes


def cityscapes_hint(cityscapes_root: str) -> str:
    """Expected layout and preparation command of a Cityscapes folder (for error messages)."""
    return (
        f"Expected layout under {cityscapes_root}:\n"
        "  leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png\n"
        "  gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_{polygons.json,labelIds.png,"
        "instanceIds.png,labelTrainIds.png}\n"
        "Download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
        "https://www.cityscapes-dataset.com/downloads/ (see datasets/README.md), then run:\n"
        f"  python datasets/prepare_cityscapes.py {cityscapes_root}\n"
        "(set $DETECTRON2_DATASETS to the folder that contains cityscapes/ if it lies elsewhere)"
    )


def _cityscapes_root_of(image_dir: str) -> str:
    """<root>/leftImg8bit/<split> -> <root>."""
    return os.path.dirname(os.path.dirname(os.path.normpath(image_dir)))


def check_cityscapes_split(image_dir: str, gt_dir: str, split_name: str = "") -> None:
    """Check what Detectron2's ``load_cityscapes_semantic`` needs, with messages that say how to fix it.

    Every ``<city>/*_leftImg8bit.png`` below ``image_dir`` needs ``*_gtFine_polygons.json``,
    ``*_gtFine_labelIds.png``, ``*_gtFine_instanceIds.png`` (from the download) and
    ``*_gtFine_labelTrainIds.png`` (from ``datasets/prepare_cityscapes.py``) in ``gt_dir/<city>/``.
    """
    hint = cityscapes_hint(_cityscapes_root_of(image_dir))
    _require_dir(image_dir, "image", split_name, hint)
    _require_dir(gt_dir, "gtFine", split_name, hint)
    images = list_files(image_dir, "_leftImg8bit.png")
    if not images:
        raise DatasetNotFoundError(
            f"Dataset split '{split_name}': no '*_leftImg8bit.png' images below {os.path.abspath(image_dir)}\n"
            f"{hint}"
        )
    present = set(list_files(gt_dir, ".json")) | set(list_files(gt_dir, ".png"))
    for gt_suffix in ("_gtFine_polygons.json", "_gtFine_labelIds.png", "_gtFine_instanceIds.png",
                      "_gtFine_labelTrainIds.png"):
        missing = [
            (os.path.join(image_dir, rel), os.path.join(gt_dir, lab))
            for rel in images
            for lab in [replace_suffix(rel, "_leftImg8bit.png", gt_suffix)]
            if lab not in present
        ]
        if missing:
            what = (
                "train-id labels not generated" if gt_suffix == "_gtFine_labelTrainIds.png"
                else "incomplete gtFine download"
            )
            raise MissingLabelError(
                f"Dataset split '{split_name}' ({what}): '*{gt_suffix}' missing; "
                f"{_format_missing(missing, len(images))}\n{hint}"
            )


def load_cityscapes_split(image_dir: str, gt_dir: str, split_name: str = "") -> List[Dict[str, Any]]:
    """:func:`check_cityscapes_split`, then Detectron2's ``load_cityscapes_semantic``, sorted by image path."""
    check_cityscapes_split(image_dir, gt_dir, split_name)
    dicts = load_cityscapes_semantic(os.path.abspath(image_dir), os.path.abspath(gt_dir))
    return sorted(dicts, key=lambda d: d["file_name"])


def register_cityscapes_root(
    cityscapes_root: str, name_prefix: str, splits: Sequence[str] = ("train", "val")
) -> List[str]:
    """Register the Cityscapes-layout folder ``cityscapes_root`` as ``<name_prefix>_<split>`` splits.

    For a second copy of Cityscapes (or a generated replica) next to Detectron2's builtin
    ``cityscapes_fine_sem_seg_{train,val}`` (which are rooted at ``$DETECTRON2_DATASETS/cityscapes``).
    The splits load with :func:`load_cityscapes_split` and carry the builtin splits' metadata
    (``evaluator_type`` "cityscapes_sem_seg", ``image_dir``, ``gt_dir``) plus ``stuff_colors`` and
    ``dataset_root`` = ``cityscapes_root``. Returns the registered names.
    """
    names = []
    for split in splits:
        name = f"{name_prefix}_{split}"
        image_dir = os.path.join(cityscapes_root, "leftImg8bit", split)
        gt_dir = os.path.join(cityscapes_root, "gtFine", split)
        DatasetCatalog.register(name, functools.partial(load_cityscapes_split, image_dir, gt_dir, name))
        MetadataCatalog.get(name).set(
            **sem_seg_metadata(
                evaluator_type="cityscapes_sem_seg",
                image_dir=image_dir,
                gt_dir=gt_dir,
                dataset_root=cityscapes_root,
            )
        )
        names.append(name)
    return names


def load_split(name: str) -> List[Dict[str, Any]]:
    """Load a registered split by name, with clear errors and a sorted list.

    Equivalent to ``DatasetCatalog.get(name)`` except that Cityscapes-layout splits (metadata
    ``evaluator_type == "cityscapes_sem_seg"`` with ``image_dir``/``gt_dir``, e.g. Detectron2's builtin
    ``cityscapes_fine_sem_seg_train``) are checked first with :func:`check_cityscapes_split` (Detectron2's
    own loader would fail with a bare assertion), and that the result is sorted by image path
    (Detectron2's Cityscapes loader lists files in file-system order), with absolute file paths (Detectron2's
    builtin Cityscapes splits give paths relative to the working directory when ``$DETECTRON2_DATASETS`` is).
    """
    if name not in DatasetCatalog.list():
        close = difflib.get_close_matches(name, DatasetCatalog.list(), n=1)
        raise UnknownSplitError(
            f"Dataset split '{name}' is not registered" + (f"; did you mean {close[0]}?" if close else "")
            + " (the builtin splits are listed in datasets/README.md; DATASETS.SPLIT_FILES registers your own)")
    meta = MetadataCatalog.get(name)
    if meta.get("evaluator_type") == "cityscapes_sem_seg" and meta.get("image_dir") and meta.get("gt_dir"):
        check_cityscapes_split(meta.image_dir, meta.gt_dir, name)
    dicts = [dict(d) for d in DatasetCatalog.get(name)]
    for d in dicts:
        for key in ("file_name", "sem_seg_file_name"):
            if key in d:
                d[key] = os.path.abspath(d[key])
    return sorted(dicts, key=lambda d: d["file_name"])
