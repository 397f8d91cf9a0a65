"""``make_scene``: a street scene as Cityscapes polygons, composed from the builders of this package.

Drawing order: the stuff of :mod:`.background` (sky, skyline, ground, road), then the objects of
:mod:`.things` and :mod:`.void_objects` far to near, then the ego vehicle. The builders draw from one random
generator in a fixed order, so a scene is a function of the generator's state.
"""
from typing import FrozenSet, List, Sequence, Set, Tuple

import numpy as np
from cityscapesscripts.helpers.labels import name2label

from .background import ground, skyline
from .geometry import SceneObject, clip_polygon
from .layout import StreetLayout
from .things import Things, add_person, add_pole, add_train, add_two_wheeler, add_vehicle
from .void_objects import add_void_objects, ego_vehicle

__all__ = ["RARE_CLASSES", "SYNTHIA_EXCLUDED", "make_scene"]

RARE_CLASSES: Tuple[str, ...] = (
    "wall", "fence", "traffic light", "terrain", "rider", "truck", "bus", "train", "motorcycle", "bicycle",
)
SYNTHIA_EXCLUDED: FrozenSet[str] = frozenset({"terrain", "truck", "train"})


def _wanted_rare_classes(rng: np.random.Generator, rare: Sequence[str], excluded: FrozenSet[str]) -> Set[str]:
    """``rare`` plus each rare class with probability 0.25 (one draw per class, always), minus ``excluded``."""
    wanted = set(rare) | {c for c in RARE_CLASSES if rng.random() < 0.25}
    return wanted - excluded


def _add_street_objects(things: Things, layout: StreetLayout, wanted: Set[str], excluded: FrozenSet[str],
                        license_plates: bool) -> None:
    """1-3 cars, 1-3 persons, 1-3 poles (the first with a sign, the others with one at p 0.5) and the wanted
    rare things: a pole with a traffic light, truck, bus, train, motorcycle (on the road), bicycle (beside it),
    a rider on a bicycle (a motorcycle where bicycles are excluded)."""
    rng = layout.rng
    for _ in range(rng.integers(1, 4)):
        add_vehicle(things, layout, "car", 2.0, 0.22, cabin=True, license_plate=license_plates)
    for _ in range(rng.integers(1, 4)):
        y = layout.ground_y()
        add_person(things, layout, "person", y, layout.off_road(y))
    for i in range(rng.integers(1, 4)):
        add_pole(things, layout, with_sign=i == 0 or rng.random() < 0.5, with_light=False)
    if "traffic light" in wanted:
        add_pole(things, layout, with_sign=False, with_light=True)
    if "truck" in wanted:
        add_vehicle(things, layout, "truck", 1.6, 0.45, cabin=False)
    if "bus" in wanted:
        add_vehicle(things, layout, "bus", 2.6, 0.45, cabin=False)
    if "train" in wanted:
        add_train(things, layout)
    for label in ("motorcycle", "bicycle"):
        if label in wanted:
            y = layout.ground_y()
            x = layout.on_road(y) if label == "motorcycle" else layout.off_road(y)
            add_two_wheeler(things, layout, label, y, x)
    if "rider" in wanted:
        y = layout.ground_y()
        x = layout.on_road(y)
        add_two_wheeler(things, layout, "bicycle" if "bicycle" not in excluded else "motorcycle", y, x)
        add_person(things, layout, "rider", y - 0.03 * layout.scale_at(y) * layout.height, x)


def _base_label(label: str) -> str:
    """'persongroup' -> 'person' (Cityscapes crowd polygons), other names unchanged."""
    return label[: -len("group")] if label.endswith("group") and label not in name2label else label


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
        excluded: label names never drawn (e.g. :data:`SYNTHIA_EXCLUDED`); crowd labels ('persongroup') are
            excluded with their class.
        license_plates: add a 'license plate' polygon (id -1) on each car, as Cityscapes annotations do.

    Returns:
        ``(label name, polygon)`` pairs; a polygon is a list of integer pixel points ``(x, y)`` with
        ``0 <= x < width``, ``0 <= y < height`` (``y`` downwards), as in Cityscapes ``*_polygons.json``.
    """
    wanted = _wanted_rare_classes(rng, rare, excluded)
    layout = StreetLayout.sample(height, width, rng)
    background = skyline(layout, wanted) + ground(layout, wanted)
    things = Things()
    _add_street_objects(things, layout, wanted, excluded, license_plates)
    add_void_objects(things, layout)
    ordered = background + things.in_drawing_order() + ego_vehicle(layout)
    return [
        (label, clip_polygon(poly, height, width)) for label, poly in ordered if _base_label(label) not in excluded
    ]
