"""Test dataset mapper: the test pipeline of docs/method.md §10.2 (keep-ratio rescale, no flip, no padding)."""
import copy
from typing import Any, Dict, Sequence

from detectron2.config import configurable

from ...config import check_choice
from ..transforms import KeepRatioRescale
from ..image_io import image_to_chw_tensor, read_rgb_image

__all__ = ["TestMapper"]


class TestMapper:
    """Read an image and rescale it to ``INPUT.TEST.SCALE`` (mmcv ``imrescale``, OpenCV bilinear).

    Output: a copy of the dataset dict with ``"image"`` (``3 x h x w`` uint8 RGB tensor of the
    rescaled image) and ``"height"``, ``"width"`` set to the ORIGINAL image size; the model resizes
    its logits back to that size (Detectron2 convention). Labels are not read (evaluators read them).

    Keys read by ``from_config``: ``INPUT.TEST.SCALE`` ((long, short) side, [2048, 1024] for
    Cityscapes, [1920, 1080] for ACDC / Dark Zurich, [1024, 512] for the DAFormer-512 configs) and
    ``INPUT.FORMAT`` (must be "RGB").
    """

    __test__ = False  # not a pytest test class despite its name

    @configurable
    def __init__(self, *, scale: Sequence[int]):
        """``scale``: (long side, short side) of the keep-ratio rescale."""
        self.rescale = KeepRatioRescale(scale)

    @classmethod
    def from_config(cls, cfg) -> Dict[str, Any]:
        check_choice("INPUT.FORMAT", cfg.INPUT.FORMAT)
        return {"scale": cfg.INPUT.TEST.SCALE}

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_rgb_image(dataset_dict["file_name"])
        dataset_dict["height"], dataset_dict["width"] = image.shape[:2]
        image = self.rescale.get_transform(image).apply_image(image)
        dataset_dict["image"] = image_to_chw_tensor(image)
        return dataset_dict
