"""The street layout every object of a scene is placed in: horizon, ground line, road and perspective."""
from dataclasses import dataclass

import numpy as np

__all__ = ["StreetLayout"]


@dataclass(frozen=True)
class StreetLayout:
    """The geometry of one street scene and its random generator.

    Coordinates are pixels, ``x`` to the right and ``y`` downwards from the top-left corner. The image is
    ``height x width``; the sky ends a little below ``horizon``, the ground (sidewalk, road) starts at
    ``ground_top = horizon + 0.04 * height`` and the road is a trapezoid around the vertical line
    ``x = vanishing_x`` that widens towards the bottom border. An object standing at ``y`` is scaled by
    :meth:`scale_at`, so objects shrink towards the horizon.

    The methods that place objects (:meth:`on_road`, :meth:`off_road`, :meth:`ground_y`) draw from ``rng``:
    their call order is part of what makes a scene reproducible.
    """

    height: float
    width: float
    horizon: float  # y of the horizon
    ground_top: float  # y where sidewalk and road begin
    vanishing_x: float  # x of the road's centre line
    rng: np.random.Generator

    @classmethod
    def sample(cls, height: int, width: int, rng: np.random.Generator) -> "StreetLayout":
        """A random layout: horizon at 38-48 % of the height, road centre at 40-60 % of the width."""
        H, W = float(height), float(width)
        horizon = H * rng.uniform(0.38, 0.48)
        ground_top = horizon + 0.04 * H
        vanishing_x = W * rng.uniform(0.4, 0.6)
        return cls(H, W, horizon, ground_top, vanishing_x, rng)

    def road_half_width(self, y: float) -> float:
        """Half the road width at row ``y``: 4 % of the image width at ``ground_top``, 74 % at the bottom."""
        t = (y - self.ground_top) / (self.height - self.ground_top)
        return (0.04 + 0.7 * t) * self.width

    def scale_at(self, y: float) -> float:
        """Size factor of an object standing at row ``y``: 0 at the horizon, 1 at the bottom (at least 0.05)."""
        return max((y - self.horizon) / (self.height - self.horizon), 0.05)

    def on_road(self, y: float) -> float:
        """A random x on the road at row ``y`` (within 80 % of its half width around the centre)."""
        return self.vanishing_x + self.rng.uniform(-0.8, 0.8) * self.road_half_width(y)

    def off_road(self, y: float) -> float:
        """A random x beside the road at row ``y`` (1.1-1.6 half widths left or right of the centre), kept
        inside 2-98 % of the image width."""
        side = 1 if self.rng.random() < 0.5 else -1
        x = self.vanishing_x + side * self.road_half_width(y) * self.rng.uniform(1.1, 1.6)
        return float(np.clip(x, 0.02 * self.width, 0.98 * self.width))

    def ground_y(self) -> float:
        """A random row on the ground, from a little below ``ground_top`` to 97 % of the height."""
        return self.rng.uniform(self.ground_top + 0.06 * self.height, 0.97 * self.height)
