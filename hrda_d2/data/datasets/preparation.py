"""Label conversion (label id -> train id) and rare-class-sampling statistics for GTA, Synthia and Cityscapes.

The logic behind ``datasets/prepare_{gta,synthia,cityscapes}.py`` (each ``python datasets/prepare_X.py ROOT
[--nproc N] [--verify-images]``). For each dataset:

* every raw label is converted to ``*_labelTrainIds.png`` (8-bit, train ids 0..18, 255 = ignore), next to it:

  - GTA (``ROOT/labels/*.png``): palettised PNG read with Pillow -> Cityscapes label ids -> train ids
    (``cityscapes_classes.GTA_LABEL_MAPPING``, reference 9.2).
  - Synthia (``ROOT/GT/LABELS/*.png``): 16-bit PNG read with OpenCV ``IMREAD_UNCHANGED``; the class id is the
    LAST channel of OpenCV's array (the file's R channel) -> train ids (``SYNTHIA_LABEL_MAPPING``).
  - Cityscapes (``ROOT/gtFine/<split>/<city>/*_gtFine_polygons.json``): cityscapesscripts'
    ``json2labelImg(json, out, "trainIds")``, i.e. exactly the official conversion.

* the statistics of reference 8.1 are written into ROOT: ``sample_class_stats.json``,
  ``samples_with_class.json``, ``sample_class_stats_dict.json`` (Cityscapes: ``gtFine/train`` files only;
  ``file`` entries are ``ROOT/<label dir>/<name>_labelTrainIds.png`` with ROOT as given).

What counts as "outside the mapping" (refused with an error naming the file, the ids and what is accepted):

* GTA: any value that is not a Cityscapes label id 0..33 (``cityscapesscripts.helpers.labels``). Valid ids
  without a train id (unlabeled 0, ego vehicle 1, ..., polegroup 18, caravan 29, trailer 30) become 255.
  Label images must be palettised ('P') or grey ('L').
* Synthia: any value that is not a SYNTHIA-RAND-CITYSCAPES class id 0..22. Void 0, parking-slot 13,
  road-work 14 and lanemarking 22 become 255. Labels must be 3-channel (class id in the R channel).
* Cityscapes: a polygon whose label name is not in cityscapesscripts' table (``<name>group`` is accepted for
  a known ``<name>``, as cityscapesscripts does).

``map_unknown_to_ignore=True`` (``--map-unknown-to-ignore``, GTA/Synthia) maps such values to 255 with a
logged warning instead.

Idempotent: an existing ``*_labelTrainIds.png`` is not rewritten; it is read back (and its values checked)
to produce the statistics, which are always written. Outputs are written to a hidden temporary name and
renamed, so an interrupted run never leaves a half-written label behind.

Checks: every label needs its image and every image its label (error naming the file); image headers are
read (corrupt files are named); ``verify_images=True`` also decodes every image completely (finds truncated
files; slower). Unreadable or truncated labels raise :class:`DatasetFormatError` naming the file.
"""
import argparse
import functools
import json
import logging
import multiprocessing as mp
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from .cityscapes_classes import (
    GTA_LABEL_MAPPING,
    IGNORE_LABEL,
    NUM_CLASSES,
    SYNTHIA_LABEL_MAPPING,
    LabelIdMapping,
)
from .file_lists import list_files, replace_suffix
from ...utils.file_io import atomic_path, atomic_write_text
from .sem_seg_splits import DatasetNotFoundError, MissingLabelError

__all__ = [
    "DatasetFormatError",
    "MissingImageError",
    "LabelTask",
    "PreparationResult",
    "map_label_ids",
    "class_pixel_counts",
    "read_gta_label_ids",
    "read_synthia_label_ids",
    "read_train_id_label",
    "write_label_png",
    "convert_id_label",
    "convert_cityscapes_polygons",
    "write_class_statistics",
    "run_parallel",
    "prepare_gta",
    "prepare_synthia",
    "prepare_cityscapes",
    "run_prepare_cli",
]

logger = logging.getLogger(__name__)

TRAIN_ID_SUFFIX = "_labelTrainIds.png"
_MAX_LISTED = 5


class DatasetFormatError(ValueError):
    """A file of a dataset cannot be read or holds values outside the dataset's mapping."""


class MissingImageError(FileNotFoundError):
    """A label has no image."""


@dataclass(frozen=True)
class LabelTask:
    """One label to convert.

    Attributes:
        source: raw label (GTA/Synthia PNG, Cityscapes ``*_gtFine_polygons.json``).
        output: the ``*_labelTrainIds.png`` to write.
        image: the label's image (header checked; fully decoded with ``verify_image``), or None.
        stats_file: the ``file`` entry of the statistics; None = no statistics for this label.
        verify_image: decode the whole image (finds truncated files).
    """

    source: str
    output: str
    image: Optional[str]
    stats_file: Optional[str]
    verify_image: bool = False


@dataclass(frozen=True)
class PreparationResult:
    dataset_root: str
    num_converted: int
    num_skipped: int  # outputs that existed already
    num_with_stats: int  # entries of sample_class_stats.json


# ------------------------------------------------------------------------------------------- id mapping


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


def class_pixel_counts(train_ids: np.ndarray) -> Dict[str, int]:
    """Pixels per train id, as the statistics store them: ``{"0": n0, ...}`` ascending, classes with 0 omitted."""
    counts = np.bincount(np.asarray(train_ids, dtype=np.uint8).ravel(), minlength=256)
    return {str(c): int(counts[c]) for c in range(NUM_CLASSES) if counts[c] > 0}


# ------------------------------------------------------------------------------------------- reading


def _unreadable(path: str, error: Exception) -> DatasetFormatError:
    return DatasetFormatError(
        f"{path}: cannot read ({type(error).__name__}: {error}); the file is corrupt or truncated - "
        "extract it again from the download"
    )


def read_gta_label_ids(path: str) -> np.ndarray:
    """GTA label (palettised PNG) -> H x W Cityscapes label ids (the palette indices)."""
    try:
        with Image.open(path) as img:
            mode = img.mode
            ids = np.asarray(img) if mode in ("P", "L") else None
    except (OSError, SyntaxError, ValueError) as e:
        raise _unreadable(path, e) from e
    if ids is None:
        raise DatasetFormatError(
            f"{path}: expected a palettised ('P') label PNG holding Cityscapes label ids, got mode '{mode}' "
            "(a colour-coded label?)"
        )
    return ids


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


def read_train_id_label(path: str) -> np.ndarray:
    """A ``*_labelTrainIds.png`` -> H x W uint8; refuses values other than 0..18 and 255."""
    try:
        with Image.open(path) as img:
            train_ids = np.asarray(img)
    except (OSError, SyntaxError, ValueError) as e:
        raise _unreadable(path, e) from e
    bad = sorted(set(np.unique(train_ids).tolist()) - set(range(NUM_CLASSES)) - {IGNORE_LABEL})
    if train_ids.ndim != 2 or bad:
        raise DatasetFormatError(
            f"{path}: not a train-id label (shape {train_ids.shape}, values {bad[:10]} outside 0..18/255); "
            "delete it and run the preparation again"
        )
    return train_ids.astype(np.uint8, copy=False)


def _check_image(path: str, decode: bool) -> Tuple[int, int]:
    """(height, width) of an image; reads the header, or the whole image when ``decode``."""
    try:
        with Image.open(path) as img:
            if decode:
                img.load()
            width, height = img.size
    except (OSError, SyntaxError, ValueError) as e:
        raise _unreadable(path, e) from e
    return height, width


# ------------------------------------------------------------------------------------------- writing


def write_label_png(path: str, train_ids: np.ndarray) -> None:
    """Write an 8-bit grey ('L') PNG atomically (temporary file + rename)."""
    with atomic_path(path, suffix=".png", hidden=True) as tmp:
        Image.fromarray(np.asarray(train_ids, dtype=np.uint8), mode="L").save(tmp, format="PNG")


# ------------------------------------------------------------------------------------------- converters
# A converter reads task.source, writes task.output and returns the train ids it wrote (H x W uint8).


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
        raise _unreadable(json_file, e) from e
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
            raise _unreadable(source, e) from e
    return read_train_id_label(output)


# ------------------------------------------------------------------------------------------- running


def _process_task(task: LabelTask, converter: Callable[[str, str], np.ndarray]) -> Tuple[bool, Optional[dict]]:
    """Convert one label (or read the existing output). Returns (converted, statistics entry or None)."""
    image_size = _check_image(task.image, task.verify_image) if task.image else None
    converted = not os.path.exists(task.output)
    train_ids = converter(task.source, task.output) if converted else read_train_id_label(task.output)
    if image_size is not None and image_size != train_ids.shape:
        logger.warning("%s: image size %s differs from its label's %s (%s)", task.image, image_size,
                       train_ids.shape, task.source)
    if task.stats_file is None:
        return converted, None
    stats: Dict[str, Any] = class_pixel_counts(train_ids)
    stats["file"] = task.stats_file
    return converted, stats


def run_parallel(fn: Callable[[Any], Any], items: Sequence[Any], nproc: int, desc: str) -> List[Any]:
    """``[fn(x) for x in items]`` in ``nproc`` worker processes (in this process if ``nproc <= 1``), in order,
    with a tqdm progress bar (shown on terminals). An exception in a worker is raised here."""
    if nproc <= 1 or len(items) <= 1:
        return [fn(item) for item in tqdm(items, desc=desc, disable=None)]
    chunksize = max(1, min(32, len(items) // (nproc * 8)))
    with mp.Pool(processes=nproc) as pool:
        return list(tqdm(pool.imap(fn, items, chunksize=chunksize), total=len(items), desc=desc, disable=None))


def write_class_statistics(dataset_root: str, stats: Iterable[Dict[str, Any]]) -> None:
    """Write the three statistics files of reference 8.1 into ``dataset_root``.

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


def _convert_all(
    dataset_root: str, tasks: Sequence[LabelTask], converter: Callable[[str, str], np.ndarray], nproc: int,
    desc: str,
) -> PreparationResult:
    results = run_parallel(functools.partial(_process_task, converter=converter), tasks, nproc, desc)
    stats = [s for _, s in results if s is not None]
    write_class_statistics(dataset_root, stats)
    num_converted = sum(1 for converted, _ in results if converted)
    result = PreparationResult(dataset_root, num_converted, len(results) - num_converted, len(stats))
    logger.info("%s: %d labels converted, %d already converted (skipped); statistics of %d files in %s",
                desc, result.num_converted, result.num_skipped, result.num_with_stats, dataset_root)
    return result


def _require_dir(path: str, dataset: str, layout: str) -> None:
    if not os.path.isdir(path):
        raise DatasetNotFoundError(f"{dataset}: folder not found: {os.path.abspath(path)}\nExpected layout:\n{layout}")


def _pair_or_raise(image_root: str, images: Sequence[str], label_root: str, labels: Sequence[str]) -> None:
    """Every image has its label (same relative path) and every label its image, else an error naming them."""
    image_set, label_set = set(images), set(labels)
    no_label = [rel for rel in images if rel not in label_set]
    if no_label:
        shown = ", ".join(os.path.join(image_root, r) for r in no_label[:_MAX_LISTED])
        raise MissingLabelError(
            f"{len(no_label)} image(s) without label, e.g. {shown} (expected "
            f"{os.path.join(label_root, no_label[0])}); restore the missing labels or remove the images"
        )
    no_image = [rel for rel in labels if rel not in image_set]
    if no_image:
        shown = ", ".join(os.path.join(label_root, r) for r in no_image[:_MAX_LISTED])
        raise MissingImageError(
            f"{len(no_image)} label(s) without image below {image_root}, e.g. {shown}; restore the missing "
            "images or remove the labels"
        )


def _prepare_id_labels(
    root: str,
    *,
    image_dir: str,
    label_dir: str,
    mapping: LabelIdMapping,
    reader: Callable[[str], np.ndarray],
    layout: str,
    nproc: int,
    verify_images: bool,
    map_unknown_to_ignore: bool,
) -> PreparationResult:
    """GTA / Synthia: ``ROOT/<image_dir>/<name>.png`` with ``ROOT/<label_dir>/<name>.png``."""
    image_root, label_root = os.path.join(root, image_dir), os.path.join(root, label_dir)
    _require_dir(image_root, mapping.dataset, layout)
    _require_dir(label_root, mapping.dataset, layout)
    images = list_files(image_root, ".png", exclude_suffixes=(TRAIN_ID_SUFFIX,))
    labels = list_files(label_root, ".png", exclude_suffixes=(TRAIN_ID_SUFFIX,))
    if not labels:
        raise DatasetNotFoundError(f"{mapping.dataset}: no label PNGs below {os.path.abspath(label_root)}\n"
                                   f"Expected layout:\n{layout}")
    _pair_or_raise(image_root, images, label_root, labels)
    tasks = [
        LabelTask(
            source=os.path.join(label_root, rel),
            output=os.path.join(label_root, replace_suffix(rel, ".png", TRAIN_ID_SUFFIX)),
            image=os.path.join(image_root, rel),
            stats_file=os.path.join(root, label_dir, replace_suffix(rel, ".png", TRAIN_ID_SUFFIX)),
            verify_image=verify_images,
        )
        for rel in labels
    ]
    converter = functools.partial(
        convert_id_label, reader=reader, mapping=mapping, map_unknown_to_ignore=map_unknown_to_ignore
    )
    return _convert_all(root, tasks, converter, nproc, mapping.dataset)


_GTA_LAYOUT = "  ROOT/images/00001.png ...\n  ROOT/labels/00001.png ... (palettised, Cityscapes label ids)"
_SYNTHIA_LAYOUT = "  ROOT/RGB/0000000.png ...\n  ROOT/GT/LABELS/0000000.png ... (16-bit, class id in R)"
_CITYSCAPES_LAYOUT = (
    "  ROOT/gtFine/{train,val,test}/<city>/*_gtFine_polygons.json\n"
    "  ROOT/leftImg8bit/{train,val,test}/<city>/*_leftImg8bit.png"
)


def prepare_gta(
    root: str, nproc: int = 4, verify_images: bool = False, map_unknown_to_ignore: bool = False
) -> PreparationResult:
    """Convert ``ROOT/labels/*.png`` to ``*_labelTrainIds.png`` and write the statistics into ROOT."""
    return _prepare_id_labels(
        root, image_dir="images", label_dir="labels", mapping=GTA_LABEL_MAPPING, reader=read_gta_label_ids,
        layout=_GTA_LAYOUT, nproc=nproc, verify_images=verify_images,
        map_unknown_to_ignore=map_unknown_to_ignore,
    )


def prepare_synthia(
    root: str, nproc: int = 4, verify_images: bool = False, map_unknown_to_ignore: bool = False
) -> PreparationResult:
    """Convert ``ROOT/GT/LABELS/*.png`` to ``*_labelTrainIds.png`` and write the statistics into ROOT."""
    return _prepare_id_labels(
        root, image_dir="RGB", label_dir=os.path.join("GT", "LABELS"), mapping=SYNTHIA_LABEL_MAPPING,
        reader=read_synthia_label_ids, layout=_SYNTHIA_LAYOUT, nproc=nproc, verify_images=verify_images,
        map_unknown_to_ignore=map_unknown_to_ignore,
    )


def prepare_cityscapes(root: str, nproc: int = 4, verify_images: bool = False) -> PreparationResult:
    """Convert every ``ROOT/gtFine/**/*_gtFine_polygons.json`` with json2labelImg ('trainIds'); statistics of
    the ``gtFine/train`` files into ROOT. Images of ``leftImg8bit/<split>`` (where present) must each have
    their polygons file."""
    gt_root, image_root = os.path.join(root, "gtFine"), os.path.join(root, "leftImg8bit")
    _require_dir(gt_root, "Cityscapes", _CITYSCAPES_LAYOUT)
    polygons = list_files(gt_root, "_gtFine_polygons.json")
    if not polygons:
        raise DatasetNotFoundError(f"Cityscapes: no '*_gtFine_polygons.json' below {os.path.abspath(gt_root)}\n"
                                   f"Expected layout:\n{_CITYSCAPES_LAYOUT}")
    images = list_files(image_root, "_leftImg8bit.png") if os.path.isdir(image_root) else []
    if not images:
        logger.warning("Cityscapes: no images below %s; only the labels are converted", image_root)
    polygon_set = set(polygons)
    image_of_polygons = {}
    no_label = []
    for rel in images:
        rel_polygons = replace_suffix(rel, "_leftImg8bit.png", "_gtFine_polygons.json")
        if rel_polygons in polygon_set:
            image_of_polygons[rel_polygons] = os.path.join(image_root, rel)
        else:
            no_label.append(rel)
    if no_label:
        expected = replace_suffix(no_label[0], "_leftImg8bit.png", "_gtFine_polygons.json")
        raise MissingLabelError(
            f"{len(no_label)} Cityscapes image(s) without polygons, e.g. {os.path.join(image_root, no_label[0])} "
            f"(expected {os.path.join(gt_root, expected)})"
        )
    tasks = []
    for rel in polygons:
        rel_output = replace_suffix(rel, "_gtFine_polygons.json", "_gtFine_labelTrainIds.png")
        tasks.append(LabelTask(
            source=os.path.join(gt_root, rel),
            output=os.path.join(gt_root, rel_output),
            image=image_of_polygons.get(rel),
            stats_file=os.path.join(root, "gtFine", rel_output) if rel.split("/")[0] == "train" else None,
            verify_image=verify_images,
        ))
    return _convert_all(root, tasks, convert_cityscapes_polygons, nproc, "Cityscapes")


# ------------------------------------------------------------------------------------------- command line


def run_prepare_cli(
    prepare: Callable[..., PreparationResult], description: str, argv: Optional[Sequence[str]] = None,
    unknown_id_option: bool = True,
) -> int:
    """Command line of ``datasets/prepare_*.py``: ``ROOT [--nproc N] [--verify-images]
    [--map-unknown-to-ignore]``. Returns the exit status (0 ok, 1 bad input, with the message on stderr)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="the dataset folder (e.g. datasets/gta)")
    parser.add_argument("--nproc", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--verify-images", action="store_true",
                        help="decode every image completely to find truncated files (slower)")
    if unknown_id_option:
        parser.add_argument("--map-unknown-to-ignore", action="store_true",
                            help="map label ids outside the dataset's mapping to 255 (warning) instead of failing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    kwargs: Dict[str, Any] = {"nproc": args.nproc, "verify_images": args.verify_images}
    if unknown_id_option:
        kwargs["map_unknown_to_ignore"] = args.map_unknown_to_ignore
    try:
        result = prepare(args.root, **kwargs)
    except (OSError, ValueError) as e:
        sys.stderr.write(f"ERROR: {e}\n")
        return 1
    logger.info(
        f"{args.root}: {result.num_converted} labels converted, {result.num_skipped} already converted; "
        f"statistics of {result.num_with_stats} files in {os.path.join(args.root, 'sample_class_stats.json')}"
    )
    return 0
