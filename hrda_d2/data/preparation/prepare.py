"""Preparation of GTA, Synthia, Cityscapes and WildDash 2: every raw label converted to train ids, statistics written.

The logic behind ``datasets/prepare_{gta,synthia,cityscapes,wilddash2}.py``. For each dataset:
* every raw label is converted to ``*_labelTrainIds.png`` (8-bit, train ids 0..18, 255 = ignore), next to it:

  - GTA (``ROOT/labels/*.png``): palettised PNG read with Pillow -> Cityscapes label ids -> train ids
    (``cityscapes_classes.GTA_LABEL_MAPPING``, docs/method.md §9.2).
  - Synthia (``ROOT/GT/LABELS/*.png``): 16-bit PNG read with OpenCV ``IMREAD_UNCHANGED``; the class id is the
    LAST channel of OpenCV's array (the file's R channel) -> train ids (``SYNTHIA_LABEL_MAPPING``).
  - Cityscapes (``ROOT/gtFine/<split>/<city>/*_gtFine_polygons.json``): cityscapesscripts'
    ``json2labelImg(json, out, "trainIds")``, i.e. exactly the official conversion.
  - WildDash 2 (``ROOT/{train,val}/labels/<stem>.png``, 8-bit WildDash 2 label ids 0..38): the Cityscapes table
    for ids 0..33, 255 for the extra classes 34..38, as VFM-UDA evaluates it (``WILDDASH2_LABEL_MAPPING``,
    docs/method.md §21.3). The unpacked ``wd_public_02.zip`` (``ROOT/images``, ``ROOT/labels``) is first split
    into ``ROOT/{train,val}/{images,labels}`` by VFM-UDA's validation list (hard links, copies across devices).

* the statistics of docs/method.md §8.1 are written into ROOT: ``sample_class_stats.json``,
  ``samples_with_class.json``, ``sample_class_stats_dict.json`` (Cityscapes: ``gtFine/train`` files only;
  WildDash 2: ``train/labels`` only;
  ``file`` entries are ``ROOT/<label dir>/<name>_labelTrainIds.png`` with ROOT as given).

What counts as "outside the mapping" (refused with an error naming the file, the ids and what is accepted):

* GTA: any value that is not a Cityscapes label id 0..33 (``cityscapesscripts.helpers.labels``). Valid ids
  without a train id (unlabeled 0, ego vehicle 1, ..., polegroup 18, caravan 29, trailer 30) become 255.
  Label images must be palettised ('P') or grey ('L').
* Synthia: any value that is not a SYNTHIA-RAND-CITYSCAPES class id 0..22. Void 0, parking-slot 13,
  road-work 14 and lanemarking 22 become 255. Labels must be 3-channel (class id in the R channel).
* WildDash 2: any value that is not a WildDash 2 label id 0..38.
* Cityscapes: a polygon whose label name is not in cityscapesscripts' table (``<name>group`` is accepted for
  a known ``<name>``, as cityscapesscripts does).

``map_unknown_to_ignore=True`` (``--map-unknown-to-ignore``, GTA/Synthia/WildDash 2) maps such values to 255 with a
logged warning instead.

Idempotent: an existing ``*_labelTrainIds.png`` is not rewritten; it is read back (and its values checked)
to produce the statistics, which are always written. Outputs are written to a hidden temporary name and
renamed, so an interrupted run never leaves a half-written label behind.

Checks: every label needs its image and every image its label (error naming the file); image headers are
read (corrupt files are named); ``verify_images=True`` also decodes every image completely (finds truncated
files; slower). Unreadable or truncated labels raise :class:`DatasetFormatError` naming the file.
"""
import functools
import logging
import multiprocessing as mp
import os
import shutil
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..datasets.cityscapes_classes import (
    GTA_LABEL_MAPPING,
    NUM_CLASSES,
    SYNTHIA_LABEL_MAPPING,
    WILDDASH2_LABEL_MAPPING,
    LabelIdMapping,
)
from ..datasets.file_lists import list_files, replace_suffix
from ..datasets.sem_seg_splits import DatasetNotFoundError, MissingLabelError
from ..datasets.wilddash2_split import WILDDASH2_NUM_PUBLIC, WILDDASH2_VAL_STEMS
from .class_statistics import class_pixel_counts, write_class_statistics
from .label_conversion import (
    convert_cityscapes_polygons,
    convert_id_label,
    read_gta_label_ids,
    read_index_label,
    read_synthia_label_ids,
    read_train_id_label,
    unreadable_file_error,
)

__all__ = [
    "MissingImageError",
    "LabelTask",
    "PreparationResult",
    "run_parallel",
    "convert_labels",
    "prepare_gta",
    "prepare_synthia",
    "prepare_cityscapes",
    "prepare_wilddash2",
]

logger = logging.getLogger(__name__)

TRAIN_ID_SUFFIX = "_labelTrainIds.png"
_MAX_LISTED = 5


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
        num_classes: train ids of the label space are ``0..num_classes-1`` (19 for Cityscapes).
    """

    source: str
    output: str
    image: Optional[str]
    stats_file: Optional[str]
    verify_image: bool = False
    num_classes: int = NUM_CLASSES


@dataclass(frozen=True)
class PreparationResult:
    dataset_root: str
    num_converted: int
    num_skipped: int  # outputs that existed already
    num_with_stats: int  # entries of sample_class_stats.json


def _check_image(path: str, decode: bool) -> Tuple[int, int]:
    """(height, width) of an image; reads the header, or the whole image when ``decode``."""
    try:
        with Image.open(path) as img:
            if decode:
                img.load()
            width, height = img.size
    except (OSError, SyntaxError, ValueError) as e:
        raise unreadable_file_error(path, e) from e
    return height, width


def _process_task(task: LabelTask, converter: Callable[[str, str], np.ndarray]) -> Tuple[bool, Optional[dict]]:
    """Convert one label (or read the existing output). Returns (converted, statistics entry or None)."""
    image_size = _check_image(task.image, task.verify_image) if task.image else None
    converted = not os.path.exists(task.output)
    train_ids = (converter(task.source, task.output) if converted
                 else read_train_id_label(task.output, task.num_classes))
    if image_size is not None and image_size != train_ids.shape:
        logger.warning("%s: image size %s differs from its label's %s (%s)", task.image, image_size,
                       train_ids.shape, task.source)
    if task.stats_file is None:
        return converted, None
    stats: Dict[str, Any] = class_pixel_counts(train_ids, task.num_classes)
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


def convert_labels(
    dataset_root: str, tasks: Sequence[LabelTask], converter: Callable[[str, str], np.ndarray], nproc: int,
    desc: str,
) -> PreparationResult:
    """Run every task (convert, or read the existing output), write the statistics of those with a
    ``stats_file`` into ``dataset_root``, and report the counts."""
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


def _pair_or_raise(image_root: str, images: Sequence[str], label_root: str, labels: Sequence[str],
                   label_of: Callable[[str], str] = lambda rel: rel) -> None:
    """Every image has its label (relative path ``label_of(image)``; the same by default) and every label its image,
    else an error naming them."""
    expected = {rel: label_of(rel) for rel in images}
    label_set, image_of = set(labels), {label: rel for rel, label in expected.items()}
    no_label = [rel for rel in images if expected[rel] not in label_set]
    if no_label:
        shown = ", ".join(os.path.join(image_root, r) for r in no_label[:_MAX_LISTED])
        raise MissingLabelError(
            f"{len(no_label)} image(s) without label, e.g. {shown} (expected "
            f"{os.path.join(label_root, expected[no_label[0]])}); restore the missing labels or remove the images"
        )
    no_image = [rel for rel in labels if rel not in image_of]
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
    return convert_labels(root, tasks, converter, nproc, mapping.dataset)


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
    return convert_labels(root, tasks, convert_cityscapes_polygons, nproc, "Cityscapes")


_WILDDASH2_LAYOUT = (
    "  ROOT/images/<stem>.jpg, ROOT/labels/<stem>.png (wd_public_02.zip unpacked; 8-bit WildDash 2 label ids)\n"
    "  or ROOT/{train,val}/images/<stem>.jpg, ROOT/{train,val}/labels/<stem>.png (VFM-UDA's create_wilddash_ds.sh)"
)
_WILDDASH2_SPLITS = ("train", "val")


def read_wilddash2_label_ids(path: str) -> np.ndarray:
    """WildDash 2 label (8-bit PNG, grey or palettised) -> H x W WildDash 2 label ids."""
    return read_index_label(path, "a grey ('L') or palettised ('P') label PNG holding WildDash 2 label ids")


def _link_or_copy(source: str, target: str) -> None:
    if os.path.exists(target):
        return
    try:
        os.link(source, target)
    except OSError:  # another device, or links not supported
        shutil.copy2(source, target)


def _split_wilddash2(root: str) -> None:
    """``ROOT/{images,labels}`` -> ``ROOT/{train,val}/{images,labels}`` by VFM-UDA's validation list."""
    image_root, label_root = os.path.join(root, "images"), os.path.join(root, "labels")
    _require_dir(label_root, "WildDash 2", _WILDDASH2_LAYOUT)
    images = list_files(image_root, ".jpg")
    if not images:
        raise DatasetNotFoundError(f"WildDash 2: no '*.jpg' images in {os.path.abspath(image_root)}\n"
                                   f"Expected layout:\n{_WILDDASH2_LAYOUT}")
    stems = [os.path.splitext(rel)[0] for rel in images]
    num_val = sum(1 for stem in stems if stem in WILDDASH2_VAL_STEMS)
    if len(images) != WILDDASH2_NUM_PUBLIC or num_val != len(WILDDASH2_VAL_STEMS):
        logger.warning("WildDash 2: %d images, %d of them in the validation list; the public release has %d and %d "
                       "(a partial or different download?)", len(images), num_val, WILDDASH2_NUM_PUBLIC,
                       len(WILDDASH2_VAL_STEMS))
    for split in _WILDDASH2_SPLITS:
        for kind in ("images", "labels"):
            os.makedirs(os.path.join(root, split, kind), exist_ok=True)
    for rel, stem in zip(images, stems):
        split = "val" if stem in WILDDASH2_VAL_STEMS else "train"
        label = os.path.join(label_root, stem + ".png")
        if not os.path.isfile(label):
            raise MissingLabelError(f"WildDash 2: image {os.path.join(image_root, rel)} has no label {label}; "
                                    "extract wd_public_02.zip again")
        _link_or_copy(os.path.join(image_root, rel), os.path.join(root, split, "images", os.path.basename(rel)))
        _link_or_copy(label, os.path.join(root, split, "labels", os.path.basename(stem) + ".png"))


def prepare_wilddash2(
    root: str, nproc: int = 4, verify_images: bool = False, map_unknown_to_ignore: bool = False
) -> PreparationResult:
    """Convert ``ROOT/{train,val}/labels/<stem>.png`` to ``<stem>_labelTrainIds.png`` (docs/method.md §21.3) and write
    the statistics of the train split into ROOT. An unpacked ``wd_public_02.zip`` (``ROOT/images``,
    ``ROOT/labels``) is split into that layout first."""
    if not all(os.path.isdir(os.path.join(root, split, "images")) for split in _WILDDASH2_SPLITS):
        _require_dir(os.path.join(root, "images"), "WildDash 2", _WILDDASH2_LAYOUT)
        _split_wilddash2(root)
    tasks = []
    for split in _WILDDASH2_SPLITS:
        image_root, label_root = os.path.join(root, split, "images"), os.path.join(root, split, "labels")
        _require_dir(label_root, "WildDash 2", _WILDDASH2_LAYOUT)
        images = list_files(image_root, ".jpg")
        labels = list_files(label_root, ".png", exclude_suffixes=(TRAIN_ID_SUFFIX,))
        if not labels:
            raise DatasetNotFoundError(f"WildDash 2: no label PNGs in {os.path.abspath(label_root)}\n"
                                       f"Expected layout:\n{_WILDDASH2_LAYOUT}")
        _pair_or_raise(image_root, images, label_root, labels,
                       label_of=functools.partial(replace_suffix, old_suffix=".jpg", new_suffix=".png"))
        for rel in labels:
            output_rel = replace_suffix(rel, ".png", TRAIN_ID_SUFFIX)
            tasks.append(LabelTask(
                source=os.path.join(label_root, rel),
                output=os.path.join(label_root, output_rel),
                image=os.path.join(image_root, replace_suffix(rel, ".png", ".jpg")),
                stats_file=os.path.join(root, split, "labels", output_rel) if split == "train" else None,
                verify_image=verify_images,
            ))
    converter = functools.partial(convert_id_label, reader=read_wilddash2_label_ids, mapping=WILDDASH2_LABEL_MAPPING,
                                  map_unknown_to_ignore=map_unknown_to_ignore)
    return convert_labels(root, tasks, converter, nproc, "WildDash 2")
