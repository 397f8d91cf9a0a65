"""Objects that stand on the ground (vehicles, persons, two-wheelers, poles with signs and lights).

Each builder adds float polygons (pixels ``(x, y)``, ``y`` downwards) to a :class:`Things` collection with a
depth key: the row ``y`` where the object touches the ground (plus a tiny offset for parts that must cover
their object, e.g. a car's cabin or a pole's sign). Nearer objects have a larger ``y`` and are drawn later.
Sizes scale with :meth:`StreetLayout.scale_at` of that row.
"""
from typing import List, Tuple

import numpy as np

from .geometry import FloatPolygon, LabelledPolygon, ellipse, rect
from .layout import StreetLayout

__all__ = ["Things", "add_vehicle", "add_train", "add_person", "add_two_wheeler", "add_pole"]


class Things:
    """Labelled polygons with a depth key, returned far to near by :meth:`in_drawing_order`."""

    def __init__(self) -> None:
        self._items: List[Tuple[float, str, FloatPolygon]] = []

    def add(self, depth: float, label: str, polygon: FloatPolygon) -> None:
        self._items.append((depth, label, polygon))

    def in_drawing_order(self) -> List[LabelledPolygon]:
        """By increasing depth key; objects with equal keys keep the order they were added in."""
        return [(label, polygon) for _, label, polygon in sorted(self._items, key=lambda item: item[0])]


def add_vehicle(things: Things, layout: StreetLayout, label: str, length: float, tall: float, cabin: bool,
                license_plate: bool = False) -> None:
    """A box on the road at a random row: height ``tall * scale * image height``, width ``length * height``.

    ``cabin`` adds a narrower box on top (cars); ``license_plate`` a 'license plate' polygon on its lower part
    (Cityscapes annotates it with label id -1, which cityscapesscripts does not draw).
    """
    H = layout.height
    y = layout.ground_y()
    s = layout.scale_at(y)
    h = tall * s * H
    w = length * h
    x = layout.on_road(y)
    things.add(y, label, rect(x - w / 2, y - h, x + w / 2, y))
    if cabin:
        things.add(y + 1e-3, label, rect(x - w * 0.3, y - h * 1.4, x + w * 0.3, y - h * 0.9))
    if license_plate:
        things.add(y + 2e-3, "license plate", rect(x - w * 0.1, y - h * 0.3, x + w * 0.1, y - h * 0.1))


def add_train(things: Things, layout: StreetLayout) -> None:
    """A train on the rail track near the horizon, left of the road centre (draws nothing from the rng)."""
    H, W = layout.height, layout.width
    y = layout.ground_top + 0.05 * H
    things.add(y, "train", rect(layout.vanishing_x - 0.25 * W, y - 0.12 * H, layout.vanishing_x + 0.05 * W, y))


def add_person(things: Things, layout: StreetLayout, label: str, y: float, x: float) -> None:
    """A thin body (rectangle) and a head (ellipse) standing at ``(x, y)``; ``label`` 'person' or 'rider'."""
    s = layout.scale_at(y)
    h = 0.35 * s * layout.height
    w = max(0.28 * h, 2.0)
    things.add(y, label, rect(x - w / 2, y - 0.85 * h, x + w / 2, y))
    things.add(y, label, ellipse(x, y - 0.9 * h, w * 0.45, h * 0.1, layout.rng, n=8))


def add_two_wheeler(things: Things, layout: StreetLayout, label: str, y: float, x: float) -> None:
    """Two wheels (circles of radius ``r``) and a frame bar standing at ``(x, y)``; 'bicycle' or 'motorcycle'."""
    s = layout.scale_at(y)
    r = max(0.05 * s * layout.height, 1.5)
    for cx in (x - 1.6 * r, x + 1.6 * r):
        things.add(y, label, ellipse(cx, y - r, r, r, layout.rng, n=10))
    things.add(y, label, rect(x - 1.6 * r, y - 2.2 * r, x + 1.6 * r, y - 1.4 * r))


def _sign(x: float, top: float, side: float, rng: np.random.Generator) -> FloatPolygon:
    """A traffic sign centred at ``(x, top)`` of half size ``side``: square, triangle or disc, at random."""
    shape = rng.integers(0, 3)
    if shape == 0:
        return rect(x - side, top - side, x + side, top + side)
    if shape == 1:
        return [(x, top - side * 1.2), (x + side * 1.1, top + side * 0.8), (x - side * 1.1, top + side * 0.8)]
    return ellipse(x, top, side, side, rng)


def add_pole(things: Things, layout: StreetLayout, with_sign: bool, with_light: bool) -> None:
    """A thin pole beside the road at a random row, optionally with a traffic sign and/or a traffic light on
    top (both drawn over the pole)."""
    H, W = layout.height, layout.width
    y = layout.ground_y()
    s = layout.scale_at(y)
    x = layout.off_road(y)
    w = max(0.012 * W * s, 1.0)
    top = y - 0.7 * s * H
    things.add(y, "pole", rect(x - w / 2, top, x + w / 2, y))
    side = max(0.07 * s * H, 2.0)
    if with_sign:
        things.add(y + 1e-3, "traffic sign", _sign(x, top, side, layout.rng))
    if with_light:
        things.add(y + 1e-3, "traffic light", rect(x - side * 0.6, top - side * 2.5, x + side * 0.6, top))
