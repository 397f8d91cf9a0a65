"""How each domain paints a render map: class colours, texture, lighting, fog/night and noise.

The class layout is the same in every domain; only this appearance differs (the domain shift described in
the package docstring).
"""
from dataclasses import dataclass
from typing import Tuple

import numpy as np
from cityscapesscripts.helpers.labels import id2label

from .labels import LANE_MARKING, NUM_RENDER_IDS

__all__ = ["DomainStyle", "domain_style", "render_image"]


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
    """(35, 3) Cityscapes label colours per label id; black void labels get distinct dark colours; lane
    marking white."""
    colors = np.zeros((NUM_RENDER_IDS, 3), dtype=np.float64)
    dark = {0: (35, 35, 35), 1: (60, 50, 40), 2: (20, 20, 20), 3: (25, 25, 25), 4: (90, 80, 60)}
    for label_id in range(34):
        colors[label_id] = dark.get(label_id, id2label[label_id].color)
    colors[LANE_MARKING] = (240, 240, 235)
    return colors


def _hue_rotation(degrees: float) -> np.ndarray:
    """3x3 rotation of RGB about the grey axis (1, 1, 1) / sqrt(3)."""
    a = np.deg2rad(degrees)
    k = np.ones((3, 3)) / 3.0
    cross = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / np.sqrt(3)
    return np.cos(a) * np.eye(3) + np.sin(a) * cross + (1 - np.cos(a)) * k


def domain_style(domain: str) -> DomainStyle:
    """The appearance of ``domain``: "gta", "synthia" (sources), "cityscapes", "acdc", "dark_zurich", "wilddash2"
    (targets; WildDash 2-like: the target appearance, slightly hazy and dim)."""
    base = _base_colors()
    if domain == "gta":
        return DomainStyle(0.85 * base + 20, (1 / 6, 1 / 3), 10.0, "vertical", 0.2, 4.0)
    if domain == "synthia":
        return DomainStyle(0.8 * base + np.array([30, 22, 12]), (1 / 5, 1 / 4), 12.0, "vertical", 0.25, 5.0)
    if domain in ("cityscapes", "acdc", "dark_zurich", "wilddash2"):
        # the target colour of a class is a fixed transform of its source colour
        target = (0.85 * _hue_rotation(30.0) @ (base - 128.0).T).T + 128.0 + np.array([-10, 8, 14])
        fog = {"acdc": 0.35, "wilddash2": 0.1}.get(domain, 0.0)
        night = {"dark_zurich": 0.35, "wilddash2": 0.85}.get(domain, 1.0)
        return DomainStyle(np.clip(target, 0, 255), (1 / 48, 1 / 24), 18.0, "horizontal", 0.35, 10.0, fog, night)
    raise ValueError(f"unknown domain '{domain}'; expected gta, synthia, cityscapes, acdc, dark_zurich or wilddash2")


def render_image(render_ids: np.ndarray, style: DomainStyle, rng: np.random.Generator) -> np.ndarray:
    """Paint an H x W map of render indices (Cityscapes label ids, 34 = lane marking) -> H x W x 3 uint8 RGB.

    Draws from ``rng`` in this order: a per-image colour cast (3), a per-class colour jitter (35 x 3), a
    per-class texture phase (35) and the pixel noise (H x W x 3).
    """
    height, width = render_ids.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    colors = style.colors * rng.uniform(0.92, 1.08, size=(1, 3))  # per-image colour cast
    colors = colors + rng.normal(0, 6, size=colors.shape)  # per-image class colour jitter
    image = colors[render_ids].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=NUM_RENDER_IDS)[render_ids].astype(np.float32)
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
