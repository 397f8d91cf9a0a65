"""Void and crowd objects: labels the preparation maps to 255 ('ignore'), so that mapping is exercised.

Static and dynamic boxes, caravans and trailers, pole groups and crowd polygons ('persongroup') beside the
road, and the ego vehicle's bonnet along the bottom border. Points are pixels ``(x, y)``, ``y`` downwards.
"""
from typing import List

from .geometry import LabelledPolygon, rect
from .layout import StreetLayout
from .things import Things, add_vehicle

__all__ = ["add_void_objects", "ego_vehicle"]


def add_void_objects(things: Things, layout: StreetLayout) -> None:
    """Each at random: a static (p 0.3) and a dynamic (p 0.3) box beside the road, a caravan (p 0.2) and a
    trailer (p 0.2) on it, a pole group (p 0.2) and a crowd of persons (p 0.15) beside it."""
    H, W, rng = layout.height, layout.width, layout.rng
    for label, probability in (("static", 0.3), ("dynamic", 0.3), ("caravan", 0.2), ("trailer", 0.2)):
        if rng.random() < probability:
            if label in ("caravan", "trailer"):
                add_vehicle(things, layout, label, 1.8, 0.3, cabin=False)
            else:
                y = layout.ground_y()
                r = 0.05 * layout.scale_at(y) * H + 1
                x = layout.off_road(y)
                things.add(y, label, rect(x - r, y - r, x + r, y))
    if rng.random() < 0.2:
        y = layout.ground_y()
        x = layout.off_road(y)
        s = layout.scale_at(y)
        things.add(y, "polegroup", rect(x - 0.02 * W * s, y - 0.5 * s * H, x + 0.02 * W * s, y))
    if rng.random() < 0.15:
        y = layout.ground_y()
        # the left and the right edge are two independent off-road positions (kept for reproducibility)
        things.add(y, "persongroup", rect(layout.off_road(y) - 0.05 * W, y - 0.1 * H,
                                          layout.off_road(y) + 0.05 * W, y))


def ego_vehicle(layout: StreetLayout) -> List[LabelledPolygon]:
    """With probability 0.3 the ego vehicle along the bottom 6 % of the image (drawn over everything)."""
    if layout.rng.random() < 0.3:
        return [("ego vehicle", rect(0, 0.94 * layout.height, layout.width, layout.height))]
    return []
