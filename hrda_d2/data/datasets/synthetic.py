"""Small generated replicas of GTA, Synthia, Cityscapes, ACDC and Dark Zurich in their exact real layouts.

They let the whole pipeline (preparation, registration, loading, training, evaluation) run without the real
data. ``generate_synthetic_datasets(root, ...)`` (``datasets/prepare_synthetic.py``) writes::

    root/gta/images/00001.png                       RGB
    root/gta/labels/00001.png                       palettised ('P'), Cityscapes label ids, Cityscapes colours
    root/synthia/RGB/0000000.png                    RGB
    root/synthia/GT/LABELS/0000000.png              16-bit, 3 channels: R = Synthia class id, G = instance,
                                                    B = 1000 (so reading the wrong channel is noticed)
    root/cityscapes/leftImg8bit/{train,val}/<city>/<city>_<seq>_000019_leftImg8bit.png
    root/cityscapes/gtFine/{train,val}/<city>/<city>_<seq>_000019_gtFine_polygons.json
                                                    + _gtFine_labelIds.png (cityscapesscripts json2labelImg)
                                                    + _gtFine_instanceIds.png (cityscapesscripts, 16-bit)
    root/acdc/rgb_anon/{train,val}/GOPR0475_frame_<i>_rgb_anon.png           (acdc=True)
    root/acdc/gt/{train,val}/GOPR0475_frame_<i>_gt_labelTrainIds.png
    root/dark_zurich/rgb_anon/train/night/GOPR0355/GOPR0355_frame_<i>_rgb_anon.png     (dark_zurich=True)
    root/dark_zurich/{rgb_anon,gt}/val/night/GOPR0356/GOPR0356_frame_<i>_{rgb_anon,gt_labelTrainIds}.png

Train-id labels of GTA/Synthia/Cityscapes are NOT written: ``datasets/prepare_*.py`` make them, as for the real
data (ACDC/Dark Zurich ship train-id labels, so they are written directly).

Scenes. Every image is a street scene drawn as Cityscapes polygons (the label image of every domain is the
rasterisation of the polygons by cityscapesscripts' ``createLabelImage``, the image is painted from that label
map, so image and label always agree): sky on top, buildings and vegetation along a random horizon, sidewalk
and a perspective road (vanishing point) below, and objects scaled with their distance to the horizon: cars,
persons, poles with traffic signs (always), and walls, fences, traffic lights, terrain, riders, trucks, buses,
trains, motorcycles, bicycles (each image gets 3 of these 10 rare classes in turn, plus each other with
probability 0.25, so any 4 consecutive images hold all 19 classes unless a nearer object hides one). Poles,
signs and persons stay small and thin, which gives rare class sampling something to do. Void labels
(unlabeled, ego vehicle, static, dynamic, ground, parking, rail track, guard rail, bridge, polegroup, caravan,
trailer) and crowd polygons ('persongroup') appear too, so the preparation's 255-mapping is exercised;
Cityscapes cars carry a license plate polygon (id -1, not drawn by cityscapesscripts). Synthia-like scenes
leave out terrain, truck and train (not present in Synthia), and add lane markings on the road (Synthia
id 22) and road-work (id 14) where Cityscapes has 'static'.

Domain shift. The class layout statistics are the same in every domain; the APPEARANCE differs:

* source (GTA-like, Synthia-like): each class is painted with its Cityscapes colour, slightly washed out
  (GTA) or warmed (Synthia), a smooth low-frequency texture, a top-to-bottom lighting ramp and weak noise.
* target (Cityscapes-like): every class colour is a consistent transform of the source colour - a rotation
  of the hue by 30 degrees about the grey axis with 0.85 contrast and a blue/green shift - painted with a
  fine high-frequency texture, a left-to-right lighting falloff and stronger noise.
* ACDC-like: the target appearance plus fog (blend towards light grey); Dark Zurich-like: the target
  appearance at night (dark, noisier).

So a model trained on the source sees familiar shapes with unfamiliar colours/textures on the target and does
noticeably worse there, while the consistent colour transform leaves self-training something to adapt to.
Everything is deterministic under ``seed`` (one NumPy generator per image, from ``(seed, domain, split, i)``).
"""
import json
import os
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.helpers.labels import id2label, name2label
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
from cityscapesscripts.preparation.json2labelImg import createLabelImage, json2labelImg
from PIL import Image, ImageDraw

from .cityscapes_classes import CITYSCAPES_LABEL_ID_TO_TRAIN_ID, IGNORE_LABEL

__all__ = ["SyntheticDatasets", "generate_synthetic_datasets", "make_scene", "render_image", "domain_style"]

Polygon = List[Tuple[int, int]]
SceneObject = Tuple[str, Polygon]  # (Cityscapes label name, polygon in pixel coordinates (x, y))

RARE_CLASSES: Tuple[str, ...] = (
    "wall", "fence", "traffic light", "terrain", "rider", "truck", "bus", "train", "motorcycle", "bicycle",
)
SYNTHIA_EXCLUDED: FrozenSet[str] = frozenset({"terrain", "truck", "train"})
_LANE_MARKING = 34  # extra render index (Synthia lane markings) after the Cityscapes label ids 0..33
_NUM_RENDER_IDS = 35

# Cityscapes label name -> Synthia class id for the labels the Synthia-like scenes use; others -> 0 (void)
_SYNTHIA_ID_OF = {
    "sky": 1, "building": 2, "road": 3, "sidewalk": 4, "fence": 5, "vegetation": 6, "pole": 7, "car": 8,
    "traffic sign": 9, "person": 10, "bicycle": 11, "motorcycle": 12, "parking": 13, "static": 14,
    "traffic light": 15, "rider": 17, "bus": 19, "wall": 21,
}

_FULL_SIZES = {"cityscapes": (1024, 2048), "gta": (1052, 1914), "synthia": (760, 1280), "adverse": (1080, 1920)}


@dataclass(frozen=True)
class SyntheticDatasets:
    """Folders written by :func:`generate_synthetic_datasets` (None where not requested)."""

    root: str
    gta: str
    synthia: str
    cityscapes: str
    acdc: Optional[str]
    dark_zurich: Optional[str]
    sizes: Dict[str, Tuple[int, int]]  # domain -> (height, width)


# ------------------------------------------------------------------------------------------- scenes


def _clip(points: Sequence[Tuple[float, float]], height: int, width: int) -> Polygon:
    return [(int(round(min(max(x, 0), width - 1))), int(round(min(max(y, 0), height - 1)))) for x, y in points]


def _rect(x0: float, y0: float, x1: float, y1: float) -> List[Tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _ellipse(cx: float, cy: float, rx: float, ry: float, rng: np.random.Generator, n: int = 12,
             jitter: float = 0.0) -> List[Tuple[float, float]]:
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    radius = 1 + jitter * rng.uniform(-1, 1, size=n)
    return [(cx + rx * r * np.cos(a), cy + ry * r * np.sin(a)) for a, r in zip(angles, radius)]


def make_scene(
    height: int, width: int, rng: np.random.Generator, rare: Sequence[str] = (),
    excluded: FrozenSet[str] = frozenset(), license_plates: bool = False,
) -> List[SceneObject]:
    """A street scene as Cityscapes polygons, in drawing order (later polygons overwrite earlier ones).

    Args:
        height, width: image size in pixels; polygons are clipped to it.
        rng: the image's generator.
        rare: rare classes (names of :data:`RARE_CLASSES`) this image must contain; each other rare class
            appears with probability 0.25.
        excluded: label names never drawn (e.g. :data:`SYNTHIA_EXCLUDED`).
        license_plates: add a 'license plate' polygon (id -1) on each car, as Cityscapes annotations do.
    """
    H, W = float(height), float(width)
    background: List[Tuple[str, List[Tuple[float, float]]]] = []
    things: List[Tuple[float, str, List[Tuple[float, float]]]] = []  # (depth key, label, polygon)
    wanted = set(rare) | {c for c in RARE_CLASSES if rng.random() < 0.25}
    wanted -= excluded

    horizon = H * rng.uniform(0.38, 0.48)
    ground_top = horizon + 0.04 * H
    vanishing_x = W * rng.uniform(0.4, 0.6)

    def road_half_width(y: float) -> float:
        t = (y - ground_top) / (H - ground_top)
        return (0.04 + 0.7 * t) * W

    def scale_at(y: float) -> float:
        return max((y - horizon) / (H - horizon), 0.05)

    background.append(("sky", _rect(0, 0, W, ground_top + 0.02 * H)))
    x = -rng.uniform(0, 0.05) * W
    while x < W:
        building_width = rng.uniform(0.08, 0.22) * W
        if rng.random() < 0.8:
            top = rng.uniform(0.04, max(horizon / H - 0.1, 0.05)) * H
            background.append(("building", _rect(x, top, x + building_width, ground_top + 0.02 * H)))
        x += building_width
    if rng.random() < 0.3:
        background.append(("bridge", _rect(0, horizon - 0.22 * H, W, horizon - 0.16 * H)))
    for _ in range(rng.integers(1, 4)):
        background.append(("vegetation", _ellipse(rng.uniform(0, W), horizon - rng.uniform(0, 0.1) * H,
                                                   rng.uniform(0.05, 0.12) * W, rng.uniform(0.06, 0.14) * H,
                                                   rng, jitter=0.25)))
    if "wall" in wanted:
        x0 = rng.uniform(0, 0.6) * W
        x1 = x0 + rng.uniform(0.15, 0.35) * W
        background.append(("wall", _rect(x0, horizon - 0.1 * H, x1, ground_top + 0.03 * H)))
    background.append(("sidewalk", _rect(0, ground_top, W, H)))
    if "terrain" in wanted:
        background.append(("terrain", [(0, ground_top), (0.2 * W, ground_top), (0, 0.8 * H)]))
    if rng.random() < 0.3:
        background.append(("ground", [(W, ground_top), (0.8 * W, ground_top), (W, 0.7 * H)]))
    background.append(("road", [(vanishing_x - road_half_width(ground_top), ground_top),
                                (vanishing_x + road_half_width(ground_top), ground_top),
                                (vanishing_x + road_half_width(H), H), (vanishing_x - road_half_width(H), H)]))
    if rng.random() < 0.3:
        y0 = ground_top + 0.1 * H
        background.append(("parking", _rect(vanishing_x + road_half_width(y0) * 0.5, y0,
                                            vanishing_x + road_half_width(y0) * 1.0, y0 + 0.08 * H)))
    if "train" in wanted or rng.random() < 0.15:
        background.append(("rail track", [(vanishing_x - 0.02 * W, ground_top), (vanishing_x + 0.02 * W, ground_top),
                                          (vanishing_x + 0.1 * W, 0.75 * H), (vanishing_x - 0.1 * W, 0.75 * H)]))
    if "fence" in wanted:
        x0 = rng.uniform(0.4, 0.8) * W
        x1 = x0 + rng.uniform(0.15, 0.3) * W
        background.append(("fence", _rect(x0, ground_top - 0.08 * H, x1, ground_top + 0.05 * H)))
    if rng.random() < 0.3:
        x0 = rng.uniform(0, 0.7) * W
        background.append(("guard rail", _rect(x0, ground_top + 0.02 * H, x0 + 0.25 * W, ground_top + 0.05 * H)))
    background.append(("unlabeled", _rect(0, H - 0.04 * H, 0.06 * W, H)))

    def on_road(y: float) -> float:
        return vanishing_x + rng.uniform(-0.8, 0.8) * road_half_width(y)

    def off_road(y: float) -> float:
        side = 1 if rng.random() < 0.5 else -1
        x = vanishing_x + side * road_half_width(y) * rng.uniform(1.1, 1.6)
        return float(np.clip(x, 0.02 * W, 0.98 * W))

    def ground_y() -> float:
        return rng.uniform(ground_top + 0.06 * H, 0.97 * H)

    def add_vehicle(label: str, length: float, tall: float, cabin: bool) -> None:
        y = ground_y()
        s = scale_at(y)
        h = tall * s * H
        w = length * h
        x = on_road(y)
        things.append((y, label, _rect(x - w / 2, y - h, x + w / 2, y)))
        if cabin:
            things.append((y + 1e-3, label, _rect(x - w * 0.3, y - h * 1.4, x + w * 0.3, y - h * 0.9)))
        if license_plates and label == "car":
            things.append((y + 2e-3, "license plate", _rect(x - w * 0.1, y - h * 0.3, x + w * 0.1, y - h * 0.1)))

    def add_person(label: str, y: float, x: float) -> None:
        s = scale_at(y)
        h = 0.35 * s * H
        w = max(0.28 * h, 2.0)
        things.append((y, label, _rect(x - w / 2, y - 0.85 * h, x + w / 2, y)))
        things.append((y, label, _ellipse(x, y - 0.9 * h, w * 0.45, h * 0.1, rng, n=8)))

    def add_two_wheeler(label: str, y: float, x: float) -> None:
        s = scale_at(y)
        r = max(0.05 * s * H, 1.5)
        for cx in (x - 1.6 * r, x + 1.6 * r):
            things.append((y, label, _ellipse(cx, y - r, r, r, rng, n=10)))
        things.append((y, label, _rect(x - 1.6 * r, y - 2.2 * r, x + 1.6 * r, y - 1.4 * r)))

    def add_pole(with_sign: bool, with_light: bool) -> None:
        y = ground_y()
        s = scale_at(y)
        x = off_road(y)
        w = max(0.012 * W * s, 1.0)
        top = y - 0.7 * s * H
        things.append((y, "pole", _rect(x - w / 2, top, x + w / 2, y)))
        side = max(0.07 * s * H, 2.0)
        if with_sign:
            shape = rng.integers(0, 3)
            if shape == 0:
                sign = _rect(x - side, top - side, x + side, top + side)
            elif shape == 1:
                sign = [(x, top - side * 1.2), (x + side * 1.1, top + side * 0.8), (x - side * 1.1, top + side * 0.8)]
            else:
                sign = _ellipse(x, top, side, side, rng)
            things.append((y + 1e-3, "traffic sign", sign))
        if with_light:
            things.append((y + 1e-3, "traffic light", _rect(x - side * 0.6, top - side * 2.5, x + side * 0.6, top)))

    for _ in range(rng.integers(1, 4)):
        add_vehicle("car", 2.0, 0.22, cabin=True)
    for _ in range(rng.integers(1, 4)):
        y = ground_y()
        add_person("person", y, off_road(y))
    for i in range(rng.integers(1, 4)):
        add_pole(with_sign=i == 0 or rng.random() < 0.5, with_light=False)
    if "traffic light" in wanted:
        add_pole(with_sign=False, with_light=True)
    if "truck" in wanted:
        add_vehicle("truck", 1.6, 0.45, cabin=False)
    if "bus" in wanted:
        add_vehicle("bus", 2.6, 0.45, cabin=False)
    if "train" in wanted:
        y = ground_top + 0.05 * H
        things.append((y, "train", _rect(vanishing_x - 0.25 * W, y - 0.12 * H, vanishing_x + 0.05 * W, y)))
    for label in ("motorcycle", "bicycle"):
        if label in wanted:
            y = ground_y()
            add_two_wheeler(label, y, on_road(y) if label == "motorcycle" else off_road(y))
    if "rider" in wanted:
        y = ground_y()
        x = on_road(y)
        add_two_wheeler("bicycle" if "bicycle" not in excluded else "motorcycle", y, x)
        add_person("rider", y - 0.03 * scale_at(y) * H, x)
    for label, probability in (("static", 0.3), ("dynamic", 0.3), ("caravan", 0.2), ("trailer", 0.2)):
        if rng.random() < probability:
            if label in ("caravan", "trailer"):
                add_vehicle(label, 1.8, 0.3, cabin=False)
            else:
                y = ground_y()
                r = 0.05 * scale_at(y) * H + 1
                x = off_road(y)
                things.append((y, label, _rect(x - r, y - r, x + r, y)))
    if rng.random() < 0.2:
        y = ground_y()
        x = off_road(y)
        s = scale_at(y)
        things.append((y, "polegroup", _rect(x - 0.02 * W * s, y - 0.5 * s * H, x + 0.02 * W * s, y)))
    if rng.random() < 0.15:
        y = ground_y()
        things.append((y, "persongroup", _rect(off_road(y) - 0.05 * W, y - 0.1 * H, off_road(y) + 0.05 * W, y)))
    foreground: List[Tuple[str, List[Tuple[float, float]]]] = []
    if rng.random() < 0.3:
        foreground.append(("ego vehicle", _rect(0, 0.94 * H, W, H)))

    ordered = background + [(label, poly) for _, label, poly in sorted(things, key=lambda t: t[0])] + foreground
    return [
        (label, _clip(poly, height, width))
        for label, poly in ordered
        if _base_label(label) not in excluded
    ]


def _base_label(label: str) -> str:
    """'persongroup' -> 'person' (Cityscapes crowd polygons), other names unchanged."""
    return label[: -len("group")] if label.endswith("group") and label not in name2label else label


def _annotation_dict(objects: Sequence[SceneObject], height: int, width: int) -> dict:
    return {
        "imgHeight": height,
        "imgWidth": width,
        "objects": [{"label": label, "polygon": [list(p) for p in poly]} for label, poly in objects],
    }


def _annotation(objects: Sequence[SceneObject], height: int, width: int) -> Annotation:
    annotation = Annotation()
    annotation.fromJsonText(json.dumps(_annotation_dict(objects, height, width)))
    return annotation


def label_id_map(objects: Sequence[SceneObject], height: int, width: int) -> np.ndarray:
    """H x W uint8 Cityscapes label ids: the polygons rasterised by cityscapesscripts (as for labelIds.png)."""
    return np.asarray(createLabelImage(_annotation(objects, height, width), "ids"), dtype=np.uint8)


# ------------------------------------------------------------------------------------------- appearance


@dataclass(frozen=True)
class DomainStyle:
    """How a domain paints a label map. ``colors``: (35, 3) float RGB per render index (Cityscapes label ids
    0..33, 34 = lane marking); texture: ``amplitude * sin(2 pi (x / period_x + y / period_y) + phase[class])``
    with periods as fractions of the image width; lighting: multiplicative ramp; noise: Gaussian std."""

    colors: np.ndarray
    texture_period: Tuple[float, float]
    texture_amplitude: float
    lighting: str  # "vertical" | "horizontal"
    lighting_strength: float
    noise_std: float
    fog: float = 0.0  # blend weight towards light grey
    night: float = 1.0  # global brightness factor


def _base_colors() -> np.ndarray:
    """Cityscapes label colours per label id; black void labels get distinct dark colours; lane marking white."""
    colors = np.zeros((_NUM_RENDER_IDS, 3), dtype=np.float64)
    dark = {0: (35, 35, 35), 1: (60, 50, 40), 2: (20, 20, 20), 3: (25, 25, 25), 4: (90, 80, 60)}
    for label_id in range(34):
        colors[label_id] = dark.get(label_id, id2label[label_id].color)
    colors[_LANE_MARKING] = (240, 240, 235)
    return colors


def _hue_rotation(degrees: float) -> np.ndarray:
    """3x3 rotation of RGB about the grey axis (1, 1, 1) / sqrt(3)."""
    a = np.deg2rad(degrees)
    k = np.ones((3, 3)) / 3.0
    cross = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / np.sqrt(3)
    return np.cos(a) * np.eye(3) + np.sin(a) * cross + (1 - np.cos(a)) * k


def domain_style(domain: str) -> DomainStyle:
    """The appearance of ``domain``: "gta", "synthia" (sources), "cityscapes", "acdc", "dark_zurich" (targets)."""
    base = _base_colors()
    if domain == "gta":
        return DomainStyle(0.85 * base + 20, (1 / 6, 1 / 3), 10.0, "vertical", 0.2, 4.0)
    if domain == "synthia":
        return DomainStyle(0.8 * base + np.array([30, 22, 12]), (1 / 5, 1 / 4), 12.0, "vertical", 0.25, 5.0)
    if domain in ("cityscapes", "acdc", "dark_zurich"):
        # the target colour of a class is a fixed transform of its source colour
        target = (0.85 * _hue_rotation(30.0) @ (base - 128.0).T).T + 128.0 + np.array([-10, 8, 14])
        fog = 0.35 if domain == "acdc" else 0.0
        night = 0.35 if domain == "dark_zurich" else 1.0
        return DomainStyle(np.clip(target, 0, 255), (1 / 48, 1 / 24), 18.0, "horizontal", 0.35, 10.0, fog, night)
    raise ValueError(f"unknown domain '{domain}'; expected gta, synthia, cityscapes, acdc or dark_zurich")


def render_image(render_ids: np.ndarray, style: DomainStyle, rng: np.random.Generator) -> np.ndarray:
    """Paint an H x W map of render indices (Cityscapes label ids, 34 = lane marking) -> H x W x 3 uint8 RGB."""
    height, width = render_ids.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    colors = style.colors * rng.uniform(0.92, 1.08, size=(1, 3))  # per-image colour cast
    colors = colors + rng.normal(0, 6, size=colors.shape)  # per-image class colour jitter
    image = colors[render_ids].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=_NUM_RENDER_IDS)[render_ids].astype(np.float32)
    period_x, period_y = (p * width for p in style.texture_period)
    texture = style.texture_amplitude * np.sin(2 * np.pi * (xx / period_x + yy / period_y) + phase)
    image += texture[..., None]
    if style.lighting == "vertical":
        light = 1 + style.lighting_strength * (yy / max(height - 1, 1) - 0.5)
    else:
        light = 1 - style.lighting_strength * (xx / max(width - 1, 1))
    image *= light[..., None]
    if style.fog:
        image = (1 - style.fog) * image + style.fog * 200.0
    image *= style.night
    image += rng.normal(0, style.noise_std, size=image.shape).astype(np.float32)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------- writing


def _write_rgb(path: str, rgb: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, np.ascontiguousarray(rgb[:, :, ::-1])):
        raise OSError(f"cannot write {path}")


def _write_png(path: str, image: Image.Image) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, format="PNG")


def _cityscapes_label_palette() -> List[int]:
    palette = [0] * (256 * 3)
    for label_id in range(34):
        palette[3 * label_id: 3 * label_id + 3] = id2label[label_id].color
    return palette


def _train_id_lut() -> np.ndarray:
    lut = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_LABEL_ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


def _synthia_lut() -> np.ndarray:
    lut = np.zeros(_NUM_RENDER_IDS, dtype=np.uint16)
    for name, synthia_id in _SYNTHIA_ID_OF.items():
        lut[name2label[name].id] = synthia_id
    lut[_LANE_MARKING] = 22
    return lut


def _image_rng(seed: int, domain: str, split: str, index: int) -> np.random.Generator:
    domain_code = ("gta", "synthia", "cityscapes", "acdc", "dark_zurich").index(domain)
    split_code = ("train", "val").index(split)
    return np.random.default_rng(np.random.SeedSequence([seed, domain_code, split_code, index]))


def _rare_for(index: int) -> Tuple[str, ...]:
    return tuple(RARE_CLASSES[(3 * index + j) % len(RARE_CLASSES)] for j in range(3))


def _lane_markings(render_ids: np.ndarray, objects: Sequence[SceneObject]) -> np.ndarray:
    """Dashed centre line on the road (Synthia); returns the render map with lane-marking pixels = 34."""
    height, width = render_ids.shape
    road = next(poly for label, poly in objects if label == "road")
    (x_top, y_top), (x_bottom, y_bottom) = road[0], road[3]
    (x_top2, _), (x_bottom2, _) = road[1], road[2]
    centre_top, centre_bottom = (x_top + x_top2) / 2, (x_bottom + x_bottom2) / 2
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    for t0 in np.arange(0.0, 1.0, 0.2):
        t1 = t0 + 0.1
        ya, yb = y_top + t0 * (y_bottom - y_top), y_top + t1 * (y_bottom - y_top)
        xa, xb = centre_top + t0 * (centre_bottom - centre_top), centre_top + t1 * (centre_bottom - centre_top)
        draw.line([(xa, ya), (xb, yb)], fill=1, width=max(1, int(1 + 3 * t1 * width / 256)))
    out = render_ids.copy()
    out[(np.asarray(mask) > 0) & (render_ids == name2label["road"].id)] = _LANE_MARKING
    return out


def _write_gta(folder: str, count: int, size: Tuple[int, int], seed: int) -> None:
    style, palette = domain_style("gta"), _cityscapes_label_palette()
    for i in range(count):
        rng = _image_rng(seed, "gta", "train", i)
        objects = make_scene(*size, rng, rare=_rare_for(i))
        label_ids = label_id_map(objects, *size)
        name = f"{i + 1:05d}.png"
        _write_rgb(os.path.join(folder, "images", name), render_image(label_ids, style, rng))
        label = Image.fromarray(label_ids)
        label.putpalette(palette)  # 'L' -> 'P': palette indices are the label ids
        _write_png(os.path.join(folder, "labels", name), label)


def _write_synthia(folder: str, count: int, size: Tuple[int, int], seed: int) -> None:
    style, lut = domain_style("synthia"), _synthia_lut()
    for i in range(count):
        rng = _image_rng(seed, "synthia", "train", i)
        rare = tuple(c for c in _rare_for(i) if c not in SYNTHIA_EXCLUDED)
        objects = make_scene(*size, rng, rare=rare, excluded=SYNTHIA_EXCLUDED)
        render_ids = _lane_markings(label_id_map(objects, *size), objects)
        name = f"{i:07d}.png"
        _write_rgb(os.path.join(folder, "RGB", name), render_image(render_ids, style, rng))
        instances = np.asarray(createInstanceImage(_annotation(objects, *size), "ids"), dtype=np.int64) % 1000
        bgr = np.stack([np.full(size, 1000), instances, lut[render_ids]], axis=-1).astype(np.uint16)
        path = os.path.join(folder, "GT", "LABELS", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not cv2.imwrite(path, bgr):
            raise OSError(f"cannot write {path}")


def _write_cityscapes(folder: str, counts: Dict[str, int], size: Tuple[int, int], seed: int) -> None:
    style = domain_style("cityscapes")
    cities = {"train": ("aachen", "bochum"), "val": ("frankfurt", "lindau")}
    for split, count in counts.items():
        for i in range(count):
            rng = _image_rng(seed, "cityscapes", split, i)
            objects = make_scene(*size, rng, rare=_rare_for(i), license_plates=True)
            city = cities[split][i % 2]
            stem = f"{city}_{i // 2:06d}_000019"
            gt_dir = os.path.join(folder, "gtFine", split, city)
            os.makedirs(gt_dir, exist_ok=True)
            json_file = os.path.join(gt_dir, f"{stem}_gtFine_polygons.json")
            with open(json_file, "w") as f:
                json.dump(_annotation_dict(objects, *size), f, indent=2)
            json2labelImg(json_file, os.path.join(gt_dir, f"{stem}_gtFine_labelIds.png"), "ids")
            instances = np.asarray(createInstanceImage(_annotation(objects, *size), "ids"), dtype=np.int64)
            _write_png(os.path.join(gt_dir, f"{stem}_gtFine_instanceIds.png"),
                       Image.fromarray(instances.astype(np.uint16)))
            label_ids = np.asarray(Image.open(os.path.join(gt_dir, f"{stem}_gtFine_labelIds.png")))
            _write_rgb(os.path.join(folder, "leftImg8bit", split, city, f"{stem}_leftImg8bit.png"),
                       render_image(label_ids, style, rng))


def _write_adverse(folder: str, domain: str, counts: Dict[str, int], size: Tuple[int, int], seed: int) -> None:
    """ACDC-like (flattened) or Dark Zurich-like images with official-style train-id labels."""
    style, lut = domain_style(domain), _train_id_lut()
    for split, count in counts.items():
        for i in range(count):
            rng = _image_rng(seed, domain, split, i)
            objects = make_scene(*size, rng, rare=_rare_for(i))
            label_ids = label_id_map(objects, *size)
            if domain == "acdc":
                image_dir, gt_dir, stem = (os.path.join(folder, "rgb_anon", split), os.path.join(folder, "gt", split),
                                           f"GOPR0475_frame_{i:06d}")
            else:
                sequence = "GOPR0355" if split == "train" else "GOPR0356"
                image_dir = os.path.join(folder, "rgb_anon", split, "night", sequence)
                gt_dir = os.path.join(folder, "gt", split, "night", sequence)
                stem = f"{sequence}_frame_{i:06d}"
            _write_rgb(os.path.join(image_dir, f"{stem}_rgb_anon.png"), render_image(label_ids, style, rng))
            if domain == "acdc" or split == "val":
                _write_png(os.path.join(gt_dir, f"{stem}_gt_labelTrainIds.png"), Image.fromarray(lut[label_ids]))


def _scaled(domain: str, height: int, width: int) -> Tuple[int, int]:
    """The size of ``domain`` when the Cityscapes-like target is ``height x width`` (real ratios kept)."""
    full_height, full_width = _FULL_SIZES[domain]
    return int(full_height * height / 1024 + 0.5), int(full_width * width / 2048 + 0.5)


def generate_synthetic_datasets(
    root: str,
    num_train: int = 8,
    num_val: int = 4,
    height: int = 128,
    width: int = 256,
    seed: int = 0,
    acdc: bool = False,
    dark_zurich: bool = False,
    full_size: bool = False,
) -> SyntheticDatasets:
    """Write the generated replicas below ``root`` (see the module docstring for layouts and the domain shift).

    Args:
        root: output folder (use it as ``$DETECTRON2_DATASETS``). Existing files are overwritten.
        num_train: images of every training split (GTA, Synthia, Cityscapes/ACDC/Dark Zurich train).
        num_val: images of every validation split.
        height, width: Cityscapes-like image size; the others keep their real size ratios to Cityscapes
            (GTA 1052x1914, Synthia 760x1280, ACDC/Dark Zurich 1080x1920 at 1024x2048), e.g. 128x256 gives
            GTA 132x239, Synthia 95x160, ACDC 135x240.
        seed: everything is a function of the seed.
        acdc, dark_zurich: also write the ACDC-like / Dark Zurich-like targets.
        full_size: real sizes (Cityscapes 1024x2048, GTA 1052x1914, ...), ignoring height/width.
    """
    if full_size:
        height, width = _FULL_SIZES["cityscapes"]
    if min(height, width) < 32 or num_train < 0 or num_val < 0:
        raise ValueError(f"need height, width >= 32 and non-negative counts, got {height}x{width}, "
                         f"{num_train} train / {num_val} val")
    sizes = {domain: _scaled(key, height, width) for domain, key in (
        ("gta", "gta"), ("synthia", "synthia"), ("cityscapes", "cityscapes"), ("acdc", "adverse"),
        ("dark_zurich", "adverse"))}
    counts = {"train": num_train, "val": num_val}
    folders = {name: os.path.join(root, name) for name in ("gta", "synthia", "cityscapes", "acdc", "dark_zurich")}
    _write_gta(folders["gta"], num_train, sizes["gta"], seed)
    _write_synthia(folders["synthia"], num_train, sizes["synthia"], seed)
    _write_cityscapes(folders["cityscapes"], counts, sizes["cityscapes"], seed)
    if acdc:
        _write_adverse(folders["acdc"], "acdc", counts, sizes["acdc"], seed)
    if dark_zurich:
        _write_adverse(folders["dark_zurich"], "dark_zurich", counts, sizes["dark_zurich"], seed)
    return SyntheticDatasets(
        root=root, gta=folders["gta"], synthia=folders["synthia"], cityscapes=folders["cityscapes"],
        acdc=folders["acdc"] if acdc else None, dark_zurich=folders["dark_zurich"] if dark_zurich else None,
        sizes=sizes,
    )
