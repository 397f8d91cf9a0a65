"""Pictures of predictions: Detectron2 ``Visualizer`` overlays, palette images, attention maps (the demo's
``VisualizationDemo`` in ``demo/predictor.py`` draws with these).

Colours come from the dataset metadata (``stuff_classes``, ``stuff_colors``; the Cityscapes palette for every
split of this project). ``Visualizer.draw_sem_seg(pred, alpha)`` fills each class with ``stuff_colors[class]``
blended with the photo (``(1 - alpha) * photo + alpha * colour``), outlines the regions and writes the class
names. At opacity 1 the outlines and names would cover the palette, so opacity 1 gives the plain palette image
instead: exactly what the original's ``tools/test.py --show-dir --opacity 1`` writes (every pixel a palette
colour).

Images are ``H x W x 3`` uint8 RGB unless a name says BGR (OpenCV frames).
"""
import numpy as np
from detectron2.data import Metadata
from detectron2.utils.visualizer import Visualizer
from torch import Tensor

from .colorize import colorize_labels, grey_image

__all__ = ["attention_image", "check_sem_seg_metadata", "palette_image", "sem_seg_overlay"]


def check_sem_seg_metadata(metadata: Metadata, num_classes: int) -> None:
    """Raise ``ValueError`` naming the dataset unless ``metadata`` has ``stuff_classes`` and ``stuff_colors``
    for ``num_classes`` classes (without colours Detectron2's Visualizer would pick random ones)."""
    name = metadata.get("name", "?")
    for key in ("stuff_classes", "stuff_colors"):
        values = metadata.get(key)
        if values is None or len(values) < num_classes:
            have = "none" if values is None else f"{len(values)}"
            raise ValueError(
                f"metadata of dataset '{name}' has {have} {key}, the model predicts {num_classes} classes; "
                f"choose a dataset with the model's classes (--metadata-name, e.g. cityscapes_fine_sem_seg_val)"
            )


def palette_image(sem_seg: np.ndarray, metadata: Metadata) -> np.ndarray:
    """``H x W`` class ids -> ``H x W x 3`` uint8 RGB with ``metadata.stuff_colors[id]`` (ids beyond the palette,
    e.g. 255, are black)."""
    return colorize_labels(sem_seg, metadata.stuff_colors)


def sem_seg_overlay(image: np.ndarray, sem_seg: np.ndarray, metadata: Metadata, opacity: float) -> np.ndarray:
    """The prediction over the photo: Detectron2's ``Visualizer.draw_sem_seg`` with ``alpha=opacity`` for
    ``0 < opacity < 1``, the photo itself for 0 and the exact palette image for 1 (module docstring).

    Args:
        image: ``H x W x 3`` uint8 RGB photo.
        sem_seg: ``H x W`` integer class ids.
        metadata: dataset metadata with ``stuff_classes`` / ``stuff_colors``.
        opacity: in ``[0, 1]``.
    Returns: ``H x W x 3`` uint8 RGB.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    if image.shape[:2] != sem_seg.shape:
        raise ValueError(f"image {image.shape[:2]} and prediction {sem_seg.shape} differ in size")
    if opacity == 1.0:
        return palette_image(sem_seg, metadata)
    if opacity == 0.0:
        return image.copy()
    return Visualizer(image, metadata).draw_sem_seg(sem_seg, alpha=opacity).get_image()


def attention_image(attention: Tensor) -> np.ndarray:
    """``1 x H x W`` attention in ``[0, 1]`` -> ``H x W x 3`` uint8 grey image ``round(255 * att)`` (the
    original's ``--hrda-out ATT`` writes ``255 * att`` as a grey image)."""
    return grey_image(attention[0])
