"""Polygon helpers shared by the scene builders.

Coordinates are pixels ``(x, y)``: ``x`` grows to the right from the left image border, ``y`` downwards from
the top border (the convention of PIL and of Cityscapes ``*_polygons.json`` files). Builders work with float
points; :func:`clip_polygon` turns them into the integer pixel polygons that a scene stores.
"""
from typing import List, Sequence, Tuple

import numpy as np

__all__ = ["Point", "FloatPolygon", "Polygon", "LabelledPolygon", "SceneObject", "clip_polygon", "rect", "ellipse"]

Point = Tuple[float, float]  # (x, y) in pixels, not yet clipped or rounded
FloatPolygon = List[Point]
Polygon = List[Tuple[int, int]]  # (x, y) integer pixels inside the image
LabelledPolygon = Tuple[str, FloatPolygon]  # (Cityscapes label name, float polygon)
SceneObject = Tuple[str, Polygon]  # (Cityscapes label name, polygon in pixel coordinates (x, y))


def clip_polygon(points: Sequence[Point], height: int, width: int) -> Polygon:
    """Round every point to the nearest pixel inside a ``height x width`` image (x in [0, width - 1], y in
    [0, height - 1])."""
    return [(int(round(min(max(x, 0), width - 1))), int(round(min(max(y, 0), height - 1)))) for x, y in points]


def rect(x0: float, y0: float, x1: float, y1: float) -> FloatPolygon:
    """The axis-aligned rectangle with corners ``(x0, y0)`` (top left) and ``(x1, y1)`` (bottom right), clockwise
    from the top-left corner."""
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def ellipse(cx: float, cy: float, rx: float, ry: float, rng: np.random.Generator, n: int = 12,
            jitter: float = 0.0) -> FloatPolygon:
    """``n`` points on the ellipse of centre ``(cx, cy)`` and radii ``rx``, ``ry``, from angle 0 (right of the
    centre) onwards; each radius is scaled by ``1 + jitter * u``, ``u ~ U(-1, 1)``.

    ``rng`` is always drawn from (``n`` uniforms), also when ``jitter`` is 0, so the random stream of a scene
    does not depend on the jitter.
    """
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    radius = 1 + jitter * rng.uniform(-1, 1, size=n)
    return [(cx + rx * r * np.cos(a), cy + ry * r * np.sin(a)) for a, r in zip(angles, radius)]
