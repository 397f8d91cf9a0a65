"""Builtin splits of this project, registered at import under ``$DETECTRON2_DATASETS`` (default "datasets").

=====================  =====================================================  =============================
split                  images / labels (below the root)                       preparation
=====================  =====================================================  =============================
gta_train              gta/images/*.png / gta/labels/*_labelTrainIds.png      datasets/prepare_gta.py
synthia_train          synthia/RGB/*.png / synthia/GT/LABELS/*_labelTrainIds  datasets/prepare_synthia.py
acdc_{train,val}       acdc/rgb_anon/<split>/**/*_rgb_anon.png /              flatten the download
                       acdc/gt/<split>/**/*_gt_labelTrainIds.png              (datasets/README.md)
darkzurich_train       dark_zurich/rgb_anon/train/night/**/*_rgb_anon.png     none (images only)
darkzurich_val         dark_zurich/rgb_anon/val/** / dark_zurich/gt/val/**    none
wilddash2_{train,val}  wilddash2/<split>/images/*.jpg /                       datasets/prepare_wilddash2.py
                       wilddash2/<split>/labels/*_labelTrainIds.png
=====================  =====================================================  =============================

WildDash 2 (an evaluation split of VFM-UDA, docs/method.md §21.3): VFM-UDA's train / val split of the 4256 public
frames of ``wd_public_02.zip``, labels mapped as VFM-UDA maps them (its five extra classes ignored).

Cityscapes uses Detectron2's own builtin ``cityscapes_fine_sem_seg_{train,val}`` (evaluated with the official
``CityscapesSemSegEvaluator``); this module only adds ``stuff_colors`` and ``dataset_root`` (<root>/cityscapes,
where ``datasets/prepare_cityscapes.py`` writes the rare-class-sampling statistics) to their metadata.
Load them with :func:`hrda_d2.data.datasets.load_split` for clear errors when files are missing.

Metadata of every split: ``stuff_classes``, ``stuff_colors``, ``ignore_label`` 255, ``evaluator_type`` "sem_seg",
``dataset_root``; ``synthia_train`` also ``miou16_classes``. GTA/Synthia dicts have no height/width (25k
image headers would be read at every load); the others have them.
"""
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from detectron2.data import MetadataCatalog

from .cityscapes_classes import SYNTHIA_MIOU16_CLASSES, stuff_colors
from .sem_seg_splits import register_sem_seg_split

__all__ = [
    "BuiltinSplit",
    "BUILTIN_SPLITS",
    "CITYSCAPES_BUILTIN_SPLITS",
    "register_builtin_split",
    "register_all_hrda_datasets",
]

_DOWNLOAD_PAGES = {
    "gta": "https://download.visinf.tu-darmstadt.de/data/from_games/",
    "synthia": "https://synthia-dataset.net/downloads/ (SYNTHIA-RAND-CITYSCAPES)",
    "acdc": "https://acdc.vision.ee.ethz.ch/download",
    "dark_zurich": "https://www.trace.ethz.ch/publications/2019/GCMA_UIoU/",
    "wilddash2": "https://wilddash.cc/download/wd_public_02.zip (the 'WD2 beta' package with semantic labels)",
}


@dataclass(frozen=True)
class BuiltinSplit:
    """One builtin split: folders relative to the dataset folder ``<root>/<dataset_dir>``.

    ``layout`` and ``prepare`` are message templates (``{dataset_root}`` is filled in) shown when the split
    is loaded but missing.
    """

    name: str
    dataset_dir: str
    image_dir: str
    label_dir: Optional[str]
    image_suffix: str
    label_suffix: str
    with_image_size: bool
    layout: str
    prepare: str
    extra_metadata: Tuple[Tuple[str, Tuple[int, ...]], ...] = field(default=())

    def hint(self, dataset_root: str) -> str:
        template = (
            "Expected layout under {dataset_root}:\n" + self.layout + "\n"
            + "Download: " + _DOWNLOAD_PAGES[self.dataset_dir] + " (see datasets/README.md), then "
            + self.prepare + "\n(set $DETECTRON2_DATASETS to the folder that contains "
            + self.dataset_dir + "/ if it lies elsewhere)"
        )
        return template.format(dataset_root=dataset_root)


_GTA_LAYOUT = (
    "  images/00001.png ...\n"
    "  labels/00001.png (palettised, Cityscapes label ids) and labels/00001_labelTrainIds.png (prepared)"
)
_SYNTHIA_LAYOUT = (
    "  RGB/0000000.png ...\n"
    "  GT/LABELS/0000000.png (16-bit, class id in R) and GT/LABELS/0000000_labelTrainIds.png (prepared)"
)
_ACDC_LAYOUT = (
    "  rgb_anon/{{train,val}}/<name>_rgb_anon.png\n"
    "  gt/{{train,val}}/<name>_gt_labelTrainIds.png (official train-id labels)"
)
_ACDC_PREPARE = "flatten the condition folders as described in datasets/README.md (no conversion needed)"
_DZ_LAYOUT = (
    "  rgb_anon/train/night/<sequence>/<name>_rgb_anon.png (unlabeled)\n"
    "  rgb_anon/val/night/<sequence>/<name>_rgb_anon.png, gt/val/night/<sequence>/<name>_gt_labelTrainIds.png"
)
_DZ_PREPARE = "unpack it there (no conversion needed)"
_WD2_LAYOUT = (
    "  {{train,val}}/images/<stem>.jpg\n"
    "  {{train,val}}/labels/<stem>.png (WildDash 2 label ids) and <stem>_labelTrainIds.png (prepared)"
)
_WD2_PREPARE = "unpack it there and run: python datasets/prepare_wilddash2.py {dataset_root}"

BUILTIN_SPLITS: Tuple[BuiltinSplit, ...] = (
    BuiltinSplit("gta_train", "gta", "images", "labels", ".png", "_labelTrainIds.png", False,
                 _GTA_LAYOUT, "run: python datasets/prepare_gta.py {dataset_root}"),
    BuiltinSplit("synthia_train", "synthia", "RGB", "GT/LABELS", ".png", "_labelTrainIds.png", False,
                 _SYNTHIA_LAYOUT, "run: python datasets/prepare_synthia.py {dataset_root}",
                 extra_metadata=(("miou16_classes", SYNTHIA_MIOU16_CLASSES),)),
    BuiltinSplit("acdc_train", "acdc", "rgb_anon/train", "gt/train", "_rgb_anon.png", "_gt_labelTrainIds.png",
                 True, _ACDC_LAYOUT, _ACDC_PREPARE),
    BuiltinSplit("acdc_val", "acdc", "rgb_anon/val", "gt/val", "_rgb_anon.png", "_gt_labelTrainIds.png",
                 True, _ACDC_LAYOUT, _ACDC_PREPARE),
    BuiltinSplit("darkzurich_train", "dark_zurich", "rgb_anon/train/night", None, "_rgb_anon.png",
                 "_gt_labelTrainIds.png", True, _DZ_LAYOUT, _DZ_PREPARE),
    BuiltinSplit("darkzurich_val", "dark_zurich", "rgb_anon/val", "gt/val", "_rgb_anon.png",
                 "_gt_labelTrainIds.png", True, _DZ_LAYOUT, _DZ_PREPARE),
    BuiltinSplit("wilddash2_train", "wilddash2", "train/images", "train/labels", ".jpg", "_labelTrainIds.png",
                 True, _WD2_LAYOUT, _WD2_PREPARE),
    BuiltinSplit("wilddash2_val", "wilddash2", "val/images", "val/labels", ".jpg", "_labelTrainIds.png",
                 True, _WD2_LAYOUT, _WD2_PREPARE),
)

# Detectron2's builtin Cityscapes semantic splits (registered by detectron2.data at import)
CITYSCAPES_BUILTIN_SPLITS: Tuple[str, ...] = ("cityscapes_fine_sem_seg_train", "cityscapes_fine_sem_seg_val")


def register_builtin_split(split: BuiltinSplit, root: str, name: Optional[str] = None) -> None:
    """Register ``split`` below ``root`` (no disk access), under ``name`` (default: ``split.name``)."""
    dataset_root = os.path.join(root, split.dataset_dir)
    metadata: Dict[str, Any] = {key: list(value) for key, value in split.extra_metadata}
    register_sem_seg_split(
        name or split.name,
        os.path.join(dataset_root, split.image_dir),
        os.path.join(dataset_root, split.label_dir) if split.label_dir else None,
        split.image_suffix,
        split.label_suffix,
        with_image_size=split.with_image_size,
        hint=split.hint(dataset_root),
        dataset_root=dataset_root,
        **metadata,
    )


def register_all_hrda_datasets(root: str) -> None:
    """Register :data:`BUILTIN_SPLITS` below ``root`` and complete the builtin Cityscapes metadata.

    No disk access. Called once at import with ``$DETECTRON2_DATASETS``; names can be registered only once,
    so for another root use :func:`register_builtin_split` with new names.
    """
    for split in BUILTIN_SPLITS:
        register_builtin_split(split, root)
    for name in CITYSCAPES_BUILTIN_SPLITS:
        meta = MetadataCatalog.get(name)
        # Detectron2 roots them at its own reading of $DETECTRON2_DATASETS: derive the root from gt_dir
        # (<root>/cityscapes/gtFine/<split>/) so both always agree.
        cityscapes_root = os.path.dirname(os.path.dirname(os.path.normpath(meta.gt_dir)))
        meta.set(stuff_colors=stuff_colors(), dataset_root=cityscapes_root)


register_all_hrda_datasets(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
