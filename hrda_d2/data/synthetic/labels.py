"""From polygons to label maps: Cityscapes annotations, label-id maps and the per-dataset label encodings.

A label-id map is an ``H x W`` uint8 array of Cityscapes label ids (``0..33``). A *render map* is the same
with one extra index, :data:`LANE_MARKING` (34), for the Synthia lane markings that Cityscapes has no label
for; :mod:`.appearance` paints render maps. Polygons are pixel points ``(x, y)``, ``y`` downwards.
"""
import json
from typing import List, Sequence

import numpy as np
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.helpers.labels import name2label
from cityscapesscripts.preparation.json2labelImg import createLabelImage
from PIL import Image, ImageDraw

from ..datasets.cityscapes_classes import CITYSCAPES_LABEL_ID_COLORS, CITYSCAPES_LABEL_ID_TO_TRAIN_ID, IGNORE_LABEL
from .geometry import SceneObject

__all__ = [
    "LANE_MARKING", "NUM_RENDER_IDS", "annotation_dict", "annotation", "label_id_map", "add_lane_markings",
    "cityscapes_label_palette", "train_id_lut", "synthia_lut",
]

LANE_MARKING = 34  # extra render index (Synthia lane markings) after the Cityscapes label ids 0..33
NUM_RENDER_IDS = 35

# Cityscapes label name -> Synthia class id for the labels the Synthia-like scenes use; others -> 0 (void)
_SYNTHIA_ID_OF = {
    "sky": 1, "building": 2, "road": 3, "sidewalk": 4, "fence": 5, "vegetation": 6, "pole": 7, "car": 8,
    "traffic sign": 9, "person": 10, "bicycle": 11, "motorcycle": 12, "parking": 13, "static": 14,
    "traffic light": 15, "rider": 17, "bus": 19, "wall": 21,
}
_SYNTHIA_LANE_MARKING = 22


def annotation_dict(objects: Sequence[SceneObject], height: int, width: int) -> dict:
    """The Cityscapes ``*_gtFine_polygons.json`` content of a scene (``imgHeight``, ``imgWidth``, ``objects``)."""
    return {
        "imgHeight": height,
        "imgWidth": width,
        "objects": [{"label": label, "polygon": [list(p) for p in poly]} for label, poly in objects],
    }


def annotation(objects: Sequence[SceneObject], height: int, width: int) -> Annotation:
    """The scene as a cityscapesscripts ``Annotation`` (the input of ``createLabelImage`` and
    ``createInstanceImage``)."""
    result = Annotation()
    result.fromJsonText(json.dumps(annotation_dict(objects, height, width)))
    return result


def label_id_map(objects: Sequence[SceneObject], height: int, width: int) -> np.ndarray:
    """H x W uint8 Cityscapes label ids: the polygons rasterised by cityscapesscripts (as for labelIds.png)."""
    return np.asarray(createLabelImage(annotation(objects, height, width), "ids"), dtype=np.uint8)


def add_lane_markings(render_ids: np.ndarray, objects: Sequence[SceneObject]) -> np.ndarray:
    """Dashed centre line on the road (Synthia): a copy of the H x W render map with the road pixels under the
    dashes set to :data:`LANE_MARKING`. The dashes follow the centre of the scene's 'road' trapezoid (corners
    top left, top right, bottom right, bottom left) and widen towards the bottom."""
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
    out[(np.asarray(mask) > 0) & (render_ids == name2label["road"].id)] = LANE_MARKING
    return out


def cityscapes_label_palette() -> List[int]:
    """A flat 768-entry PIL palette: index = Cityscapes label id (0..33) -> its colour, the rest black (the
    colours GTA's palettised label files use)."""
    return [channel for color in CITYSCAPES_LABEL_ID_COLORS for channel in color]


def train_id_lut() -> np.ndarray:
    """(256,) uint8 lookup table: Cityscapes label id -> train id (0..18), 255 elsewhere."""
    lut = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_LABEL_ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


def synthia_lut() -> np.ndarray:
    """(35,) uint16 lookup table: render index -> Synthia class id (0 = void, 22 = lane marking)."""
    lut = np.zeros(NUM_RENDER_IDS, dtype=np.uint16)
    for name, synthia_id in _SYNTHIA_ID_OF.items():
        lut[name2label[name].id] = synthia_id
    lut[LANE_MARKING] = _SYNTHIA_LANE_MARKING
    return lut
