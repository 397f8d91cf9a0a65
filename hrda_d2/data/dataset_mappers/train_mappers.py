"""Training dataset mappers: the source and target pipelines of docs/method.md §10.1, §10.3.

Pipeline (order as in the original, docs/method.md §10.1): read image (+ label) -> [target: pseudo-label margin mask at
``VALID_MASK_SIZE``] -> keep-ratio rescale (mmcv ``imrescale``) -> [random rescale by RATIO_RANGE] -> random crop with ``cat_max_ratio``
-> horizontal flip -> [photometric distortion, §18.7] -> pad bottom/right to the crop size. The label and the margin mask undergo every
geometric op with the image (nearest-neighbour resize; like mmseg, each field is rescaled from its own
size with the same scale tuple). Normalisation is left to the model.

Randomness (crop boxes, flips) comes from NumPy's global RNG; the training loaders seed it per sample
(``hrda_d2.data.samplers.position_sampling``).
"""
import copy
import dataclasses
import logging
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import transforms as T

from ...config import check_choice
from ..photometric_distortion import PhotoMetricDistortion
from ..transforms import (KeepRatioRescale, PadBottomRight, RandomCropWithCategoryRatio, RandomRatioRescale,
                          imrescale_size)
from ..image_io import image_to_chw_tensor, read_label, read_rgb_image

__all__ = [
    "LoadedSample",
    "SemSegTrainMapper",
    "SourceTrainMapper",
    "TargetTrainMapper",
    "make_margin_mask",
    "transform_valid_mask",
]

logger = logging.getLogger(__name__)


def make_margin_mask(size: Sequence[int], margins: Sequence[int]) -> np.ndarray:
    """The pseudo-label validity mask of docs/method.md §10.3 ("plcrop v2").

    Args:
        size: (H, W) of the mask.
        margins: [top, bottom, left, right] in pixels; each margin is applied only if > 0.
    Returns:
        ``H x W`` uint8 array, 1 = pseudo-label used, 0 = inside a margin (first ``top`` rows, last
        ``bottom`` rows, first ``left`` columns, last ``right`` columns).
    """
    if len(margins) != 4 or min(margins) < 0:
        raise ValueError(f"pseudo-label margins must be 4 non-negative ints [top, bottom, left, right], got {margins}")
    top, bottom, left, right = (int(m) for m in margins)
    mask = np.ones((int(size[0]), int(size[1])), dtype=np.uint8)
    if top > 0:
        mask[:top, :] = 0
    if bottom > 0:
        mask[-bottom:, :] = 0
    if left > 0:
        mask[:, :left] = 0
    if right > 0:
        mask[:, -right:] = 0
    return mask


def transform_valid_mask(transforms: T.TransformList, mask: np.ndarray) -> np.ndarray:
    """Apply the crop/flip/pad transforms of a sample to its (already rescaled) margin mask.

    Every transform acts as on a segmentation map (``apply_segmentation``: same crop box, same
    flip), except padding, which fills the mask with 0 (no pseudo-label there). mmseg would pad it
    with 255 like a label, which would multiply the pseudo-label weights of padded pixels by 255;
    padding never happens in the standard configs, so this only matters for small custom data.
    """
    for tfm in transforms.transforms:
        if isinstance(tfm, T.PadTransform):
            tfm = T.PadTransform(tfm.x0, tfm.y0, tfm.x1, tfm.y1, tfm.orig_w, tfm.orig_h, tfm.pad_value, 0)
        mask = tfm.apply_segmentation(mask)
    return mask


@dataclasses.dataclass(frozen=True)
class LoadedSample:
    """A training sample after the deterministic steps (read, margin mask, keep-ratio rescale).

    ``dataset_dict``: copy of the input dict with ``height``/``width`` of the original image;
    ``image``: ``h x w x 3`` uint8 RGB (rescaled); ``label``: ``h x w`` uint8 or None;
    ``valid_mask``: ``h x w`` uint8 rescaled margin mask or None.
    """

    dataset_dict: Dict[str, Any]
    image: np.ndarray
    label: Optional[np.ndarray]
    valid_mask: Optional[np.ndarray]


class SemSegTrainMapper:
    """Training pipeline for one domain; use :class:`SourceTrainMapper` / :class:`TargetTrainMapper`.

    Input: a Detectron2 semantic-segmentation dataset dict (``file_name``, optional
    ``sem_seg_file_name``; ``height``/``width`` are not used). Output: a copy of the dict with

    * ``"image"``: ``3 x h x w`` uint8 RGB tensor (h, w = crop size, smaller only if the rescaled image
      is smaller and no padding applies - padding makes it exactly the crop size),
    * ``"sem_seg"``: ``h x w`` int64 tensor of train ids, 255 = ignore (when the sample has a label),
    * ``"valid_pseudo_mask"``: ``h x w`` uint8 tensor of 0/1 (only when margins are configured),
    * ``"height"``, ``"width"``: size of the ORIGINAL image file (Detectron2 convention).
    """

    @configurable
    def __init__(
        self,
        *,
        scale: Sequence[int],
        crop_size: Sequence[int],
        cat_max_ratio: float,
        flip_prob: float,
        num_classes: int,
        ignore_value: int = 255,
        require_label: bool = True,
        pseudo_margins: Sequence[int] = (),
        valid_mask_size: Sequence[int] = (),
        photometric_distortion: bool = False,
        ratio_range: Sequence[float] = (),
    ):
        """
        Args:
            scale: (long side, short side) of the keep-ratio rescale.
            crop_size: (h, w) of the random crop (and of the padding).
            cat_max_ratio: max fraction of one class in a crop (< 1 needs labels; 1.0 = no check).
            flip_prob: probability of a horizontal flip.
            num_classes: labels must hold 0 .. num_classes - 1 or ``ignore_value``.
            ignore_value: ignore label value (padding value of labels).
            require_label: raise if a dataset dict has no ``sem_seg_file_name`` (source data).
            pseudo_margins: [top, bottom, left, right] margins of the pseudo-label mask; () = no mask.
            valid_mask_size: (H, W) at which the margin mask is built before any transform;
                () = the image's own size.
            photometric_distortion: mmseg's PhotoMetricDistortion after the flip (docs/method.md §18.7).
            ratio_range: ``(low, high)``: a random rescale by ``U(low, high)`` after the keep-ratio rescale, before
                the crop (VFM-UDA's scale jitter, docs/method.md §10.1); () = none.
        """
        self.num_classes = int(num_classes)
        self.ignore_value = int(ignore_value)
        self.require_label = bool(require_label)
        self.pseudo_margins = tuple(int(m) for m in pseudo_margins)
        if self.pseudo_margins:
            make_margin_mask((1, 1), self.pseudo_margins)  # validates
        if len(valid_mask_size) not in (0, 2):
            raise ValueError(f"valid_mask_size must be [] or [H, W], got {list(valid_mask_size)}")
        self.valid_mask_size = tuple(int(s) for s in valid_mask_size)
        self.rescale = KeepRatioRescale(scale)
        self.scale = self.rescale.scale
        self.augmentations = T.AugmentationList(  # the random part, after the rescale in ``load``
            [
                *([RandomRatioRescale(ratio_range)] if ratio_range else []),
                RandomCropWithCategoryRatio(crop_size, cat_max_ratio, ignore_value),
                T.RandomFlip(prob=flip_prob, horizontal=True, vertical=False),
                *([PhotoMetricDistortion()] if photometric_distortion else []),
                PadBottomRight(crop_size, pad_value=0, seg_pad_value=ignore_value),
            ]
        )
        logger.info("%s augmentations: %s", type(self).__name__, self.augmentations)

    @classmethod
    def from_config(cls, cfg, is_source: bool) -> Dict[str, Any]:
        """Arguments from the config keys (``is_source`` picks ``INPUT.SOURCE`` or ``INPUT.TARGET``).

        Keys read:

        * ``INPUT.FORMAT``: must be ``"RGB"`` (the model normalises RGB with ``MODEL.PIXEL_MEAN/STD``).
        * ``INPUT.{SOURCE,TARGET}.SCALE``: (long, short) side of the keep-ratio rescale, e.g. [2560, 1440].
        * ``INPUT.{SOURCE,TARGET}.CROP_SIZE``: (h, w) of the random crop, e.g. [1024, 1024].
        * ``INPUT.{SOURCE,TARGET}.CAT_MAX_RATIO``: source 0.75, target 1.0 (no check).
        * ``INPUT.{SOURCE,TARGET}.FLIP_PROB``: 0.5.
        * ``INPUT.{SOURCE,TARGET}.PHOTOMETRIC_DISTORTION``: False (True: the ``gtaCAug`` colour augmentation).
        * ``INPUT.{SOURCE,TARGET}.RATIO_RANGE``: [] (off) or [low, high] random rescale factors ([0.9, 1.1]: VFM-UDA).
        * ``INPUT.TARGET.PSEUDO_MARGINS``: [top, bottom, left, right], [30, 240, 30, 30]; [] = no mask.
        * ``INPUT.TARGET.VALID_MASK_SIZE``: (H, W) of the margin mask before the rescale, [1024, 2048]
          for Cityscapes, [1080, 1920] for ACDC/Dark Zurich; [] = each image's own size.
        * ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` / ``IGNORE_VALUE``: label value check / ignore value.
        """
        check_choice("INPUT.FORMAT", cfg.INPUT.FORMAT)
        node = cfg.INPUT.SOURCE if is_source else cfg.INPUT.TARGET
        args = {
            "scale": node.SCALE,
            "crop_size": node.CROP_SIZE,
            "cat_max_ratio": node.CAT_MAX_RATIO,
            "flip_prob": node.FLIP_PROB,
            "photometric_distortion": node.PHOTOMETRIC_DISTORTION,
            "ratio_range": tuple(node.RATIO_RANGE),
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "require_label": is_source,
        }
        if not is_source:
            args["pseudo_margins"] = node.PSEUDO_MARGINS
            args["valid_mask_size"] = node.VALID_MASK_SIZE
        return args

    def _read_label(self, dataset_dict: Dict[str, Any], image_size: Tuple[int, int]) -> Optional[np.ndarray]:
        file_name = dataset_dict.get("sem_seg_file_name")
        if file_name is None:
            if self.require_label:
                raise KeyError(
                    f"dataset dict of image {dataset_dict.get('file_name')} has no 'sem_seg_file_name'; a source "
                    "dataset needs a label for every image (check the dataset's label folder)"
                )
            return None
        label = read_label(file_name, self.num_classes, self.ignore_value)
        if label.shape != image_size:
            raise ValueError(
                f"label {file_name} has size {label.shape} but image {dataset_dict['file_name']} has size "
                f"{image_size}; image and label must have the same size"
            )
        return label

    def _rescaled_margin_mask(self, image_size: Tuple[int, int], file_name: str) -> np.ndarray:
        """Margin mask built at ``valid_mask_size`` (or the image size), then keep-ratio rescaled from
        that size (nearest); it must come out at the image's rescaled size."""
        mask_size = self.valid_mask_size or image_size
        if imrescale_size(*mask_size, self.scale) != imrescale_size(*image_size, self.scale):
            raise ValueError(
                f"image {file_name} has size {image_size}, which does not rescale to the same size as the "
                f"pseudo-label mask of INPUT.TARGET.VALID_MASK_SIZE={list(mask_size)}; set VALID_MASK_SIZE to the "
                "dataset's image size, or to [] to use each image's own size"
            )
        mask = make_margin_mask(mask_size, self.pseudo_margins)
        return self.rescale.get_transform(mask).apply_segmentation(mask)

    def load(self, dataset_dict: Dict[str, Any]) -> LoadedSample:
        """The deterministic part: read image (+ label), build the margin mask, keep-ratio rescale."""
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_rgb_image(dataset_dict["file_name"])
        image_size = image.shape[:2]
        dataset_dict["height"], dataset_dict["width"] = image_size
        label = self._read_label(dataset_dict, image_size)
        mask = self._rescaled_margin_mask(image_size, dataset_dict["file_name"]) if self.pseudo_margins else None
        rescale = self.rescale.get_transform(image)
        image = rescale.apply_image(image)
        if label is not None:
            label = rescale.apply_segmentation(label)
        return LoadedSample(dataset_dict, image, label, mask)

    def augment(self, loaded: LoadedSample) -> Dict[str, Any]:
        """The random part (crop, flip, pad; NumPy global RNG) -> the output dict. ``loaded`` is not
        modified, so a sample can be augmented again (rare class sampling re-crops)."""
        aug_input = T.AugInput(loaded.image, sem_seg=loaded.label)
        transforms = self.augmentations(aug_input)
        dataset_dict = copy.deepcopy(loaded.dataset_dict)
        dataset_dict["image"] = image_to_chw_tensor(aug_input.image)
        if aug_input.sem_seg is not None:
            dataset_dict["sem_seg"] = torch.from_numpy(aug_input.sem_seg.astype(np.int64))
        if loaded.valid_mask is not None:
            mask = transform_valid_mask(transforms, loaded.valid_mask)
            dataset_dict["valid_pseudo_mask"] = torch.from_numpy(np.array(mask, dtype=np.uint8, copy=True))
        return dataset_dict

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        return self.augment(self.load(dataset_dict))


class SourceTrainMapper(SemSegTrainMapper):
    """Source-domain training pipeline (labels required; ``INPUT.SOURCE.*`` keys, no margin mask)."""

    @classmethod
    def from_config(cls, cfg) -> Dict[str, Any]:
        return super().from_config(cfg, is_source=True)


class TargetTrainMapper(SemSegTrainMapper):
    """Target-domain training pipeline (``INPUT.TARGET.*`` keys): labels loaded when the dataset dict
    has them (DACS does not use them; ``require_label`` for the target-only oracle), plus the
    ``valid_pseudo_mask`` of docs/method.md §10.3 when ``INPUT.TARGET.PSEUDO_MARGINS`` is set."""

    @classmethod
    def from_config(cls, cfg, require_label: bool = False) -> Dict[str, Any]:
        return dict(super().from_config(cfg, is_source=False), require_label=require_label)

