"""Stuff classes of a scene, drawn first: sky, buildings, vegetation, ground, road and the void stuff labels.

Every function returns ``(label name, float polygon)`` pairs in drawing order (later ones overwrite earlier
ones); points are pixels ``(x, y)``, ``y`` downwards (see :mod:`.geometry`).
"""
from typing import AbstractSet, List

from .geometry import LabelledPolygon, ellipse, rect
from .layout import StreetLayout

__all__ = ["skyline", "ground"]


def _buildings(layout: StreetLayout) -> List[LabelledPolygon]:
    """A row of buildings of random widths along the horizon, each one missing with probability 0.2."""
    H, W, rng = layout.height, layout.width, layout.rng
    out: List[LabelledPolygon] = []
    x = -rng.uniform(0, 0.05) * W
    while x < W:
        building_width = rng.uniform(0.08, 0.22) * W
        if rng.random() < 0.8:
            top = rng.uniform(0.04, max(layout.horizon / H - 0.1, 0.05)) * H
            out.append(("building", rect(x, top, x + building_width, layout.ground_top + 0.02 * H)))
        x += building_width
    return out


def skyline(layout: StreetLayout, wanted: AbstractSet[str]) -> List[LabelledPolygon]:
    """Everything above the ground: sky, buildings, sometimes a bridge (void), 1-3 trees on the horizon and a
    wall if ``"wall"`` is in ``wanted``."""
    H, W, rng = layout.height, layout.width, layout.rng
    horizon, ground_top = layout.horizon, layout.ground_top
    out: List[LabelledPolygon] = [("sky", rect(0, 0, W, ground_top + 0.02 * H))]
    out += _buildings(layout)
    if rng.random() < 0.3:
        out.append(("bridge", rect(0, horizon - 0.22 * H, W, horizon - 0.16 * H)))
    for _ in range(rng.integers(1, 4)):
        out.append(("vegetation", ellipse(rng.uniform(0, W), horizon - rng.uniform(0, 0.1) * H,
                                          rng.uniform(0.05, 0.12) * W, rng.uniform(0.06, 0.14) * H,
                                          rng, jitter=0.25)))
    if "wall" in wanted:
        x0 = rng.uniform(0, 0.6) * W
        x1 = x0 + rng.uniform(0.15, 0.35) * W
        out.append(("wall", rect(x0, horizon - 0.1 * H, x1, ground_top + 0.03 * H)))
    return out


def ground(layout: StreetLayout, wanted: AbstractSet[str]) -> List[LabelledPolygon]:
    """The ground below ``ground_top``: sidewalk, terrain (if wanted), the perspective road and, at random, the
    void labels ground, parking, rail track (always with a train), guard rail and an unlabeled corner; a fence
    if ``"fence"`` is in ``wanted``."""
    H, W, rng = layout.height, layout.width, layout.rng
    ground_top, vanishing_x, half_width = layout.ground_top, layout.vanishing_x, layout.road_half_width
    out: List[LabelledPolygon] = [("sidewalk", rect(0, ground_top, W, H))]
    if "terrain" in wanted:
        out.append(("terrain", [(0, ground_top), (0.2 * W, ground_top), (0, 0.8 * H)]))
    if rng.random() < 0.3:
        out.append(("ground", [(W, ground_top), (0.8 * W, ground_top), (W, 0.7 * H)]))
    out.append(("road", [(vanishing_x - half_width(ground_top), ground_top),
                         (vanishing_x + half_width(ground_top), ground_top),
                         (vanishing_x + half_width(H), H), (vanishing_x - half_width(H), H)]))
    if rng.random() < 0.3:
        y0 = ground_top + 0.1 * H
        out.append(("parking", rect(vanishing_x + half_width(y0) * 0.5, y0,
                                    vanishing_x + half_width(y0) * 1.0, y0 + 0.08 * H)))
    if "train" in wanted or rng.random() < 0.15:  # no draw when a train is wanted
        out.append(("rail track", [(vanishing_x - 0.02 * W, ground_top), (vanishing_x + 0.02 * W, ground_top),
                                   (vanishing_x + 0.1 * W, 0.75 * H), (vanishing_x - 0.1 * W, 0.75 * H)]))
    if "fence" in wanted:
        x0 = rng.uniform(0.4, 0.8) * W
        x1 = x0 + rng.uniform(0.15, 0.3) * W
        out.append(("fence", rect(x0, ground_top - 0.08 * H, x1, ground_top + 0.05 * H)))
    if rng.random() < 0.3:
        x0 = rng.uniform(0, 0.7) * W
        out.append(("guard rail", rect(x0, ground_top + 0.02 * H, x0 + 0.25 * W, ground_top + 0.05 * H)))
    out.append(("unlabeled", rect(0, H - 0.04 * H, 0.06 * W, H)))
    return out
