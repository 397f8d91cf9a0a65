"""The 19 Cityscapes evaluation classes and the label-id -> train-id tables of every dataset.

Every dataset of this project (GTA, Synthia, Cityscapes, ACDC, Dark Zurich) is trained and evaluated on the
19 Cityscapes classes (docs/method.md §9.3). Train ids are ``0..18``; ``255`` is "ignore".

* ``CITYSCAPES_CLASSES`` / ``CITYSCAPES_PALETTE``: class names and RGB colours indexed by train id.
* ``CITYSCAPES_LABEL_ID_TO_TRAIN_ID``: Cityscapes label id (``0..33``) -> train id, 255 for labels that are
  not evaluated. Derived from ``cityscapesscripts.helpers.labels`` (the official table, also used for the
  Cityscapes conversion), so GTA labels - which hold Cityscapes label ids - map exactly like Cityscapes.
* ``CITYSCAPES_LABEL_ID_COLORS``: RGB colour of every Cityscapes label id (256 entries, black where no label),
  the palette of label-id images (prediction PNGs for the test server, generated GTA-like labels).
* ``SYNTHIA_ID_TO_TRAIN_ID``: SYNTHIA-RAND-CITYSCAPES class id -> train id (docs/method.md §9.2).
* ``GTA_LABEL_MAPPING`` / ``SYNTHIA_LABEL_MAPPING``: the tables above plus the set of ids a raw label may hold
  at all; the preparation scripts refuse any other value (see ``preparation.map_label_ids``).
* ``WILDDASH2_LABEL_MAPPING``: WildDash 2 label ids (Cityscapes ids 0..33 plus ``WILDDASH2_EXTRA_CLASSES``
  34..38) as VFM-UDA evaluates them: the Cityscapes table, the five extra classes ignored (docs/method.md §21.3).

All tables are immutable (tuples / ``MappingProxyType``).
"""
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Tuple

from cityscapesscripts.helpers.labels import labels as _cityscapes_labels

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "CITYSCAPES_LABEL_ID_TO_TRAIN_ID",
    "CITYSCAPES_LABEL_ID_COLORS",
    "SYNTHIA_ID_TO_TRAIN_ID",
    "SYNTHIA_CLASS_NAMES",
    "SYNTHIA_MIOU16_CLASSES",
    "IGNORE_LABEL",
    "NUM_CLASSES",
    "LabelIdMapping",
    "GTA_LABEL_MAPPING",
    "SYNTHIA_LABEL_MAPPING",
    "WILDDASH2_EXTRA_CLASSES",
    "WILDDASH2_LABEL_MAPPING",
    "stuff_colors",
]

IGNORE_LABEL = 255
NUM_CLASSES = 19

# docs/method.md §9.3, indexed by train id
CITYSCAPES_CLASSES: Tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)
CITYSCAPES_PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)

# Cityscapes label ids 0..33 (license plate, id -1, is never stored in a label image) -> train id
CITYSCAPES_LABEL_ID_TO_TRAIN_ID: Mapping[int, int] = MappingProxyType({
    label.id: (label.trainId if 0 <= label.trainId < NUM_CLASSES else IGNORE_LABEL)
    for label in _cityscapes_labels
    if label.id >= 0
})

_label_colors = {label.id: tuple(label.color) for label in _cityscapes_labels if label.id >= 0}
CITYSCAPES_LABEL_ID_COLORS: Tuple[Tuple[int, int, int], ...] = tuple(
    _label_colors.get(label_id, (0, 0, 0)) for label_id in range(256))

# SYNTHIA-RAND-CITYSCAPES class ids (README of the data set); 0 = void
SYNTHIA_CLASS_NAMES: Mapping[int, str] = MappingProxyType({
    0: "void", 1: "sky", 2: "building", 3: "road", 4: "sidewalk", 5: "fence", 6: "vegetation", 7: "pole",
    8: "car", 9: "traffic sign", 10: "pedestrian", 11: "bicycle", 12: "motorcycle", 13: "parking-slot",
    14: "road-work", 15: "traffic light", 16: "terrain", 17: "rider", 18: "truck", 19: "bus", 20: "train",
    21: "wall", 22: "lanemarking",
})
# docs/method.md §9.2 (ids 0, 13, 14, 22 -> 255)
SYNTHIA_ID_TO_TRAIN_ID: Mapping[int, int] = MappingProxyType({
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12, 8: 13, 18: 14,
    19: 15, 20: 16, 12: 17, 11: 18,
})
# docs/method.md §9.3: mIoU16 leaves out terrain (9), truck (14) and train (16)
SYNTHIA_MIOU16_CLASSES: Tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)


@dataclass(frozen=True)
class LabelIdMapping:
    """How the raw label ids of one dataset become train ids.

    Attributes:
        dataset: name used in messages ("GTA", "Synthia").
        id_to_train_id: (raw id, train id) pairs for the ids that have one; every other valid id maps to 255
            (a tuple, so that the mapping pickles into worker processes).
        valid_ids: every value a raw label of this dataset may hold; anything else is refused.
        valid_ids_text: human-readable description of ``valid_ids`` for error messages.
    """

    dataset: str
    id_to_train_id: Tuple[Tuple[int, int], ...]
    valid_ids: Tuple[int, ...]
    valid_ids_text: str


# GTA labels hold Cityscapes label ids: every id of the official table is valid, the ones without a train id
# (unlabeled 0, ego vehicle 1, ..., caravan 29, trailer 30) become 255.
GTA_LABEL_MAPPING = LabelIdMapping(
    dataset="GTA",
    id_to_train_id=tuple((i, t) for i, t in CITYSCAPES_LABEL_ID_TO_TRAIN_ID.items() if t != IGNORE_LABEL),
    valid_ids=tuple(sorted(CITYSCAPES_LABEL_ID_TO_TRAIN_ID)),
    valid_ids_text="Cityscapes label ids 0..33 (cityscapesscripts.helpers.labels)",
)
# Synthia labels hold SYNTHIA-RAND-CITYSCAPES ids 0..22; void 0, parking-slot 13, road-work 14 and
# lanemarking 22 become 255.
SYNTHIA_LABEL_MAPPING = LabelIdMapping(
    dataset="Synthia",
    id_to_train_id=tuple(SYNTHIA_ID_TO_TRAIN_ID.items()),
    valid_ids=tuple(sorted(SYNTHIA_CLASS_NAMES)),
    valid_ids_text="SYNTHIA-RAND-CITYSCAPES class ids 0..22",
)

# WildDash 2 label ids after the Cityscapes ones (the benchmark's label definition)
WILDDASH2_EXTRA_CLASSES = MappingProxyType({34: "pickup", 35: "van", 36: "billboard", 37: "street-light",
                                            38: "road-marking"})
# VFM-UDA maps WildDash 2 labels with the Cityscapes label-id table alone (torchvision's Cityscapes classes), so
# pickup, van, billboard, street-light and road-marking become 255 rather than car / road (docs/method.md §21.3)
WILDDASH2_LABEL_MAPPING = LabelIdMapping(
    dataset="WildDash 2",
    id_to_train_id=GTA_LABEL_MAPPING.id_to_train_id,
    valid_ids=tuple(sorted(CITYSCAPES_LABEL_ID_TO_TRAIN_ID)) + tuple(sorted(WILDDASH2_EXTRA_CLASSES)),
    valid_ids_text="WildDash 2 label ids 0..38 (Cityscapes ids 0..33; 34 pickup, 35 van, 36 billboard, "
                   "37 street-light, 38 road-marking)",
)


def stuff_colors() -> list:
    """The palette as Detectron2 metadata wants it: a new list of ``[R, G, B]`` lists, indexed by train id."""
    return [list(color) for color in CITYSCAPES_PALETTE]
