"""Reading images and train-id labels with checks that turn bad files into clear errors.

Images are decoded with OpenCV (the decoder of the original's ``LoadImageFromFile``) and returned as
``H x W x 3`` uint8 RGB. Labels are decoded with Pillow (as the original's ``LoadAnnotations``) and
returned as ``H x W`` uint8 train ids (255 = ignore).
"""
import os

import cv2
import numpy as np
import torch
from PIL import Image

__all__ = ["read_rgb_image", "read_label", "check_label_values", "image_to_chw_tensor"]

# single-channel integer Pillow modes a train-id label may have
_LABEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")
_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"


def read_rgb_image(file_name: str) -> np.ndarray:
    """Read an image file as ``H x W x 3`` uint8 RGB.

    Raises ``OSError`` naming the file if it is missing, empty, not an image, or truncated (OpenCV refuses
    truncated PNGs; for JPEGs, which OpenCV would decode partially, the end-of-image marker is checked).
    """
    try:
        with open(file_name, "rb") as f:
            data = f.read()
    except OSError as e:
        raise OSError(f"cannot read image file {file_name}: {e}") from e
    if not data:
        raise OSError(f"image file {file_name} is empty (0 bytes): an interrupted copy or download; re-download or "
                      "re-generate it")
    if data.startswith(_JPEG_START) and not data.rstrip(b"\x00").endswith(_JPEG_END):
        raise OSError(f"image file {file_name} is a truncated JPEG (no end-of-image marker); re-download it")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(
            f"image file {file_name} ({len(data)} bytes) could not be decoded: corrupt, truncated or not an "
            "image; re-download or re-generate it"
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def check_label_values(label: np.ndarray, num_classes: int, ignore_value: int, file_name: str) -> None:
    """Raise ``ValueError`` naming ``file_name`` and the values if ``label`` holds a value outside
    ``0 .. num_classes - 1`` that is not ``ignore_value``."""
    bad = (label >= num_classes) & (label != ignore_value)
    if label.dtype.kind == "i":
        bad |= label < 0
    if bad.any():
        values = np.unique(label[bad])
        raise ValueError(
            f"label file {file_name} holds value(s) {values[:10].tolist()} outside the train ids "
            f"0..{num_classes - 1} and the ignore value {ignore_value}; it is probably an unconverted label-id "
            "image: run the dataset's prepare script (datasets/prepare_*.py) to write *_labelTrainIds.png"
        )


def read_label(file_name: str, num_classes: int, ignore_value: int = 255) -> np.ndarray:
    """Read a train-id label PNG as ``H x W`` uint8.

    The file must be single-channel (Pillow mode L, P or I/I;16); its values must be train ids
    ``0 .. num_classes - 1`` or ``ignore_value``. Raises ``OSError`` (unreadable, empty, corrupt, truncated)
    or ``ValueError`` (wrong mode, bad value), each naming the file.
    """
    if os.path.isfile(file_name) and os.path.getsize(file_name) == 0:
        raise OSError(f"label file {file_name} is empty (0 bytes): an interrupted copy or conversion; re-run the "
                      "dataset's prepare script (datasets/prepare_*.py) or re-download it")
    try:
        with Image.open(file_name) as img:
            if img.mode not in _LABEL_MODES:
                raise ValueError(
                    f"label file {file_name} has Pillow mode {img.mode!r} ({len(img.getbands())} channel(s)); a "
                    f"train-id label must be a single-channel image (mode one of {_LABEL_MODES}). Is it a colour "
                    "visualisation instead of a *_labelTrainIds.png?"
                )
            label = np.array(img)
    except (OSError, SyntaxError) as e:  # Pillow raises SyntaxError for some broken PNG chunks
        raise OSError(f"label file {file_name} could not be decoded (corrupt or truncated?): {e}") from e
    if label.ndim != 2:
        raise ValueError(f"label file {file_name} decoded to shape {label.shape}; expected H x W")
    check_label_values(label, num_classes, ignore_value, file_name)
    return label.astype(np.uint8, copy=False)



def image_to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    """``H x W x 3`` uint8 array -> contiguous ``3 x H x W`` uint8 tensor."""
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
