"""Per-dataset writers: one generated scene per image, saved in the real dataset's folder layout and formats.

Each image ``i`` of a split gets its own generator (:func:`image_rng`); the scene is drawn first, then the
image is painted from its labels with the same generator, so a file depends only on ``(seed, domain, split,
i)`` and the image size. The layouts are listed in the package docstring.
"""
import json
import os
from typing import Dict, Tuple

import cv2
import numpy as np
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
from cityscapesscripts.preparation.json2labelImg import json2labelImg
from PIL import Image

from ..datasets.wilddash2_split import WILDDASH2_VAL_STEMS
from .appearance import domain_style, render_image
from .labels import (
    LANE_MARKING, add_lane_markings, annotation, annotation_dict, cityscapes_label_palette, label_id_map, synthia_lut,
    train_id_lut,
)
from .scene import RARE_CLASSES, SYNTHIA_EXCLUDED, make_scene

__all__ = ["image_rng", "rare_for", "write_gta", "write_synthia", "write_cityscapes", "write_adverse",
           "write_wilddash2"]

_DOMAINS = ("gta", "synthia", "cityscapes", "acdc", "dark_zurich", "wilddash2")
_SPLITS = ("train", "val")


def image_rng(seed: int, domain: str, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``domain``/``split`` (independent streams via ``SeedSequence``)."""
    entropy = [seed, _DOMAINS.index(domain), _SPLITS.index(split), index]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def rare_for(index: int) -> Tuple[str, ...]:
    """The 3 rare classes image ``index`` must hold: consecutive images walk through :data:`RARE_CLASSES`."""
    return tuple(RARE_CLASSES[(3 * index + j) % len(RARE_CLASSES)] for j in range(3))


def _write_rgb(path: str, rgb: np.ndarray) -> None:
    """Save an H x W x 3 uint8 RGB image as PNG (via OpenCV, which wants BGR)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, np.ascontiguousarray(rgb[:, :, ::-1])):
        raise OSError(f"cannot write {path}")


def _write_png(path: str, image: Image.Image) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, format="PNG")


def write_gta(folder: str, count: int, size: Tuple[int, int], seed: int) -> None:
    """``images/00001.png`` (RGB) and ``labels/00001.png`` (palettised, Cityscapes label ids and colours)."""
    style, palette = domain_style("gta"), cityscapes_label_palette()
    for i in range(count):
        rng = image_rng(seed, "gta", "train", i)
        objects = make_scene(*size, rng, rare=rare_for(i))
        label_ids = label_id_map(objects, *size)
        name = f"{i + 1:05d}.png"
        _write_rgb(os.path.join(folder, "images", name), render_image(label_ids, style, rng))
        label = Image.fromarray(label_ids)
        label.putpalette(palette)  # 'L' -> 'P': palette indices are the label ids
        _write_png(os.path.join(folder, "labels", name), label)


def write_synthia(folder: str, count: int, size: Tuple[int, int], seed: int) -> None:
    """``RGB/0000000.png`` and ``GT/LABELS/0000000.png``: 16-bit 3-channel, R = Synthia class id, G = instance
    id (mod 1000), B = 1000. Scenes without terrain, truck and train, with lane markings on the road."""
    style, lut = domain_style("synthia"), synthia_lut()
    for i in range(count):
        rng = image_rng(seed, "synthia", "train", i)
        rare = tuple(c for c in rare_for(i) if c not in SYNTHIA_EXCLUDED)
        objects = make_scene(*size, rng, rare=rare, excluded=SYNTHIA_EXCLUDED)
        render_ids = add_lane_markings(label_id_map(objects, *size), objects)
        name = f"{i:07d}.png"
        _write_rgb(os.path.join(folder, "RGB", name), render_image(render_ids, style, rng))
        instances = np.asarray(createInstanceImage(annotation(objects, *size), "ids"), dtype=np.int64) % 1000
        bgr = np.stack([np.full(size, 1000), instances, lut[render_ids]], axis=-1).astype(np.uint16)
        path = os.path.join(folder, "GT", "LABELS", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not cv2.imwrite(path, bgr):
            raise OSError(f"cannot write {path}")


def write_cityscapes(folder: str, counts: Dict[str, int], size: Tuple[int, int], seed: int) -> None:
    """``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` and, in ``gtFine/<split>/<city>/``, the polygons
    json with its ``labelIds`` / ``instanceIds`` images made by cityscapesscripts; two cities per split."""
    style = domain_style("cityscapes")
    cities = {"train": ("aachen", "bochum"), "val": ("frankfurt", "lindau")}
    for split, count in counts.items():
        for i in range(count):
            rng = image_rng(seed, "cityscapes", split, i)
            objects = make_scene(*size, rng, rare=rare_for(i), license_plates=True)
            city = cities[split][i % 2]
            stem = f"{city}_{i // 2:06d}_000019"
            gt_dir = os.path.join(folder, "gtFine", split, city)
            os.makedirs(gt_dir, exist_ok=True)
            json_file = os.path.join(gt_dir, f"{stem}_gtFine_polygons.json")
            with open(json_file, "w") as f:
                json.dump(annotation_dict(objects, *size), f, indent=2)
            json2labelImg(json_file, os.path.join(gt_dir, f"{stem}_gtFine_labelIds.png"), "ids")
            instances = np.asarray(createInstanceImage(annotation(objects, *size), "ids"), dtype=np.int64)
            _write_png(os.path.join(gt_dir, f"{stem}_gtFine_instanceIds.png"),
                       Image.fromarray(instances.astype(np.uint16)))
            label_ids = np.asarray(Image.open(os.path.join(gt_dir, f"{stem}_gtFine_labelIds.png")))
            _write_rgb(os.path.join(folder, "leftImg8bit", split, city, f"{stem}_leftImg8bit.png"),
                       render_image(label_ids, style, rng))


def _adverse_paths(folder: str, domain: str, split: str, index: int) -> Tuple[str, str, str]:
    """(image folder, label folder, file stem) of an ACDC-like (flattened) or Dark Zurich-like image."""
    if domain == "acdc":
        stem = f"GOPR0475_frame_{index:06d}"
        return os.path.join(folder, "rgb_anon", split), os.path.join(folder, "gt", split), stem
    sequence = "GOPR0355" if split == "train" else "GOPR0356"
    return (os.path.join(folder, "rgb_anon", split, "night", sequence),
            os.path.join(folder, "gt", split, "night", sequence), f"{sequence}_frame_{index:06d}")


def write_adverse(folder: str, domain: str, counts: Dict[str, int], size: Tuple[int, int], seed: int) -> None:
    """ACDC-like (``domain="acdc"``) or Dark Zurich-like (``"dark_zurich"``) ``*_rgb_anon.png`` images with
    official-style ``*_gt_labelTrainIds.png`` labels (ACDC: both splits; Dark Zurich: val only, as released)."""
    style, lut = domain_style(domain), train_id_lut()
    for split, count in counts.items():
        for i in range(count):
            rng = image_rng(seed, domain, split, i)
            objects = make_scene(*size, rng, rare=rare_for(i))
            label_ids = label_id_map(objects, *size)
            image_dir, gt_dir, stem = _adverse_paths(folder, domain, split, i)
            _write_rgb(os.path.join(image_dir, f"{stem}_rgb_anon.png"), render_image(label_ids, style, rng))
            if domain == "acdc" or split == "val":
                _write_png(os.path.join(gt_dir, f"{stem}_gt_labelTrainIds.png"), Image.fromarray(lut[label_ids]))


# WildDash 2 label ids of the replica's relabelled classes (hrda_d2.data.datasets.cityscapes_classes)
_WD2_PICKUP, _WD2_VAN, _WD2_BILLBOARD, _WD2_STREET_LIGHT, _WD2_ROAD_MARKING = 34, 35, 36, 37, 38


def _wilddash2_label(label_ids: np.ndarray, render_ids: np.ndarray, index: int) -> np.ndarray:
    """Cityscapes label ids -> WildDash 2 label ids: the lane markings are road-marking; the cars of every third
    image are vans (``index % 3 == 1``) or pickups (``== 2``), the traffic signs of odd images billboards, the poles
    of images 2, 6, 10, ... street-lights (so three frames hold all five extra classes)."""
    out = label_ids.copy()
    out[render_ids == LANE_MARKING] = _WD2_ROAD_MARKING
    car, sign, pole = 26, 20, 17
    if index % 3:
        out[label_ids == car] = _WD2_VAN if index % 3 == 1 else _WD2_PICKUP
    if index % 2:
        out[label_ids == sign] = _WD2_BILLBOARD
    if index % 4 == 2:
        out[label_ids == pole] = _WD2_STREET_LIGHT
    return out


def write_wilddash2(folder: str, counts: Dict[str, int], size: Tuple[int, int], seed: int) -> None:
    """The unpacked ``wd_public_02.zip``: ``images/<stem>.jpg`` (JPEG) and ``labels/<stem>.png`` (8-bit grey,
    WildDash 2 label ids 0..38, road markings on the road). The ``val`` frames take the first names of VFM-UDA's
    validation list; the ``train`` frames are named ``zz<i>_100000`` (no real frame has that name)."""
    style = domain_style("wilddash2")
    val_names = sorted(WILDDASH2_VAL_STEMS)
    for split, count in counts.items():
        for i in range(count):
            rng = image_rng(seed, "wilddash2", split, i)
            objects = make_scene(*size, rng, rare=rare_for(i))
            label_ids = label_id_map(objects, *size)
            render_ids = add_lane_markings(label_ids, objects)
            stem = val_names[i] if split == "val" else f"zz{i:04d}_100000"
            path = os.path.join(folder, "images", f"{stem}.jpg")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if not cv2.imwrite(path, np.ascontiguousarray(render_image(render_ids, style, rng)[:, :, ::-1])):
                raise OSError(f"cannot write {path}")
            _write_png(os.path.join(folder, "labels", f"{stem}.png"),
                       Image.fromarray(_wilddash2_label(label_ids, render_ids, i)))
