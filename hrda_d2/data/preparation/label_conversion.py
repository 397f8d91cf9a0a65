"""Raw dataset labels -> ``*_labelTrainIds.png`` (docs/method.md §9.2): GTA and Synthia id maps, Cityscapes
polygons (cityscapesscripts' official ``json2labelImg``).

A converter reads a raw label, writes the train-id PNG atomically (hidden temporary name + rename, so an
interrupted run never leaves a half-written label behind) and returns the train ids it wrote (``H x W`` uint8,
0..18, 255 = ignore). Unreadable files and values outside the dataset's mapping raise
:class:`DatasetFormatError` naming the file.
"""
import json
import logging
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from ...utils.file_io import atomic_path
from ..datasets.cityscapes_classes import IGNORE_LABEL, NUM_CLASSES, LabelIdMapping
from ..image_io import read_label

__all__ = [
    "DatasetFormatError",
    "unreadable_file_error",
    "map_label_ids",
    "read_gta_label_ids",
    "read_index_label",
    "read_synthia_label_ids",
    "read_train_id_label",
    "write_label_png",
    "convert_id_label",
    "convert_cityscapes_polygons",
]

logger = logging.getLogger(__name__)


class DatasetFormatError(ValueError):
    """A file of a dataset cannot be read or holds values outside the dataset's mapping."""


def map_label_ids(
    label_ids: np.ndarray, mapping: LabelIdMapping, file_name: str, map_unknown_to_ignore: bool = False
) -> np.ndarray:
    """Raw label ids (H x W, integer) -> train ids (H x W uint8; 255 for valid ids without a train id).

    Raises :class:`DatasetFormatError` naming ``file_name``, the offending ids and the accepted ids if the
    label holds a value outside ``mapping.valid_ids`` (unless ``map_unknown_to_ignore``: then they become 255
    and a warning is logged).
    """
    ids = np.asarray(label_ids)
    if ids.ndim != 2 or ids.dtype.kind not in "ui":
        raise DatasetFormatError(
            f"{file_name}: expected a single-channel integer label image, got shape {ids.shape} dtype {ids.dtype}"
        )
    if ids.size and int(ids.min()) < 0:
        raise DatasetFormatError(f"{file_name}: negative label id {int(ids.min())}")
    counts = np.bincount(ids.ravel(), minlength=1)
    invalid = sorted(set(np.flatnonzero(counts).tolist()) - set(mapping.valid_ids))
    if invalid:
        listed = ", ".join(f"{i} ({int(counts[i])} px)" for i in invalid[:10])
        message = (
            f"{file_name}: label id(s) {listed} outside the {mapping.dataset} mapping; accepted: "
            f"{mapping.valid_ids_text} (ids without a train id become 255)"
        )
        if not map_unknown_to_ignore:
            raise DatasetFormatError(message + ". Use --map-unknown-to-ignore to map them to 255 instead.")
        logger.warning("%s; mapped to 255 (--map-unknown-to-ignore)", message)
    lut = np.full(max(len(counts), max(mapping.valid_ids) + 1), IGNORE_LABEL, dtype=np.uint8)
    for label_id, train_id in mapping.id_to_train_id:
        lut[label_id] = train_id
    return lut[ids]


def unreadable_file_error(path: str, error: Exception) -> DatasetFormatError:
    return DatasetFormatError(
        f"{path}: cannot read ({type(error).__name__}: {error}); the file is corrupt or truncated - "
        "extract it again from the download"
    )


def read_index_label(path: str, expected: str = "a palettised ('P') or grey ('L') label PNG") -> np.ndarray:
    """Single-channel label image (palettised or grey) -> H x W values (palette indices / grey levels); another
    mode (e.g. colour-coded RGB) raises :class:`DatasetFormatError` naming the file and ``expected``."""
    try:
        with Image.open(path) as img:
            mode = img.mode
            ids = np.asarray(img) if mode in ("P", "L") else None
    except (OSError, SyntaxError, ValueError) as e:
        raise unreadable_file_error(path, e) from e
    if ids is None:
        raise DatasetFormatError(f"{path}: expected {expected}, got mode '{mode}' (a colour-coded label?)")
    return ids


def read_gta_label_ids(path: str) -> np.ndarray:
    """GTA label (palettised PNG) -> H x W Cityscapes label ids (the palette indices)."""
    return read_index_label(path, "a palettised ('P') label PNG holding Cityscapes label ids")


def read_synthia_label_ids(path: str) -> np.ndarray:
    """Synthia label (16-bit, 3 channels) -> H x W class ids: the last channel of OpenCV's BGR array (= R)."""
    array = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise DatasetFormatError(f"{path}: OpenCV cannot decode it; the file is missing, corrupt or truncated")
    if array.ndim != 3:
        raise DatasetFormatError(
            f"{path}: expected a 3-channel Synthia label (class id in the R channel), got shape {array.shape}"
        )
    return array[:, :, -1]


def read_train_id_label(path: str, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """An existing ``*_labelTrainIds.png`` (train ids ``0..num_classes-1``, 255) -> H x W uint8
    (:func:`hrda_d2.data.image_io.read_label`); a file that is not a valid train-id label raises
    :class:`DatasetFormatError` saying to delete it and prepare again."""
    try:
        return read_label(path, num_classes, IGNORE_LABEL)
    except (OSError, ValueError) as e:
        raise DatasetFormatError(f"{e}; delete {path} and run the preparation again") from e


def write_label_png(path: str, train_ids: np.ndarray) -> None:
    """Write an 8-bit grey ('L') PNG atomically (temporary file + rename)."""
    with atomic_path(path, suffix=".png", hidden=True) as tmp:
        Image.fromarray(np.asarray(train_ids, dtype=np.uint8), mode="L").save(tmp, format="PNG")


def convert_id_label(
    source: str,
    output: str,
    *,
    reader: Callable[[str], np.ndarray],
    mapping: LabelIdMapping,
    map_unknown_to_ignore: bool = False,
) -> np.ndarray:
    """Raw id label -> ``*_labelTrainIds.png`` (GTA and Synthia)."""
    train_ids = map_label_ids(reader(source), mapping, source, map_unknown_to_ignore)
    write_label_png(output, train_ids)
    return train_ids


def _check_polygon_labels(json_file: str) -> None:
    """Refuse what cityscapesscripts' json2labelImg would turn into ``sys.exit`` or a bare KeyError."""
    from cityscapesscripts.helpers.labels import name2label

    try:
        with open(json_file, "r") as f:
            annotation = json.load(f)
        objects = annotation["objects"]
        int(annotation["imgHeight"]), int(annotation["imgWidth"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise unreadable_file_error(json_file, e) from e
    for obj in objects:
        if obj.get("deleted"):
            continue
        name = obj.get("label")
        if isinstance(name, str) and name not in name2label and name.endswith("group"):
            name = name[: -len("group")]
        if name not in name2label:
            raise DatasetFormatError(
                f"{json_file}: polygon label '{obj.get('label')}' is not a Cityscapes label; accepted: the "
                "names of cityscapesscripts.helpers.labels (optionally with the suffix 'group')"
            )


def convert_cityscapes_polygons(source: str, output: str) -> np.ndarray:
    """``*_gtFine_polygons.json`` -> ``*_gtFine_labelTrainIds.png`` with cityscapesscripts' json2labelImg."""
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    _check_polygon_labels(source)
    with atomic_path(output, suffix=".png", hidden=True) as tmp:  # json2labelImg picks the format by extension
        try:
            json2labelImg(source, tmp, "trainIds")
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise unreadable_file_error(source, e) from e
    return read_train_id_label(output)
