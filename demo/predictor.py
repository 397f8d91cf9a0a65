"""``VisualizationDemo``: predict with a predictor and draw the result (the layout of Detectron2's and
Mask2Former's ``demo/predictor.py``; ``demo/demo.py`` imports it from here).

The predictor is the eager :class:`hrda_d2.engine.predictor.SemSegPredictor` (built from the config by default) or
any object with its call, e.g. :class:`hrda_d2_deploy.DeployPredictor` of an exported model
(``demo/demo.py --exported``): ``predictor(image, input_format="RGB")`` -> ``{"sem_seg": K x H x W}`` logits as a
torch tensor or a NumPy array (or ``{"attention": 1 x H x W}``). The drawing is the same for both.

Pictures are ``H x W x 3`` uint8 RGB; video frames are BGR as OpenCV reads and writes them.
"""
from typing import Any, Iterator, Optional, Tuple

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog

from hrda_d2.engine.predictor import SemSegPredictor
from hrda_d2.utils.visualization import attention_image, check_sem_seg_metadata, sem_seg_overlay

__all__ = ["VisualizationDemo", "class_ids"]


def class_ids(sem_seg: Any) -> np.ndarray:
    """``K x H x W`` logits (torch tensor on any device, or NumPy array) -> ``H x W`` int64 argmax class ids."""
    if isinstance(sem_seg, torch.Tensor):
        return sem_seg.argmax(dim=0).cpu().numpy()
    return np.asarray(sem_seg).argmax(axis=0)


class VisualizationDemo:
    """Predict and draw (Detectron2 ``demo/predictor.py`` style).

    ``run_on_image(image)`` -> ``(prediction, picture)``; ``run_on_video(capture)`` yields BGR frames.
    Attributes: ``predictor``, ``metadata``, ``num_classes``, ``opacity``.
    """

    def __init__(self, cfg: CfgNode, hrda_out: str = "fused", metadata_name: Optional[str] = None,
                 opacity: float = 0.5, predictor: Optional[Any] = None, num_classes: Optional[int] = None):
        """
        Args:
            cfg: config with the hrda_d2 keys (the metadata, and the eager model when ``predictor`` is None).
            hrda_out: ``fused`` | ``lr`` | ``hr`` | ``attention`` (``SemSegPredictor``; ignored with ``predictor``).
            metadata_name: dataset whose metadata names and colours the classes; default ``DATASETS.TEST[0]``.
            opacity: overlay opacity in ``[0, 1]`` (1 = palette image).
            predictor: a predictor with ``SemSegPredictor``'s call (e.g. ``hrda_d2_deploy.DeployPredictor``);
                None builds ``SemSegPredictor(cfg, hrda_out)``.
            num_classes: the classes the predictor predicts (checked against the metadata); default
                ``MODEL.SEM_SEG_HEAD.NUM_CLASSES``.
        """
        if not 0.0 <= opacity <= 1.0:
            raise ValueError(f"opacity must be in [0, 1], got {opacity}")
        name = metadata_name or (cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else None)
        if not name:
            raise ValueError("no dataset for the class names and colours: set --metadata-name or DATASETS.TEST")
        self.metadata = MetadataCatalog.get(name)
        self.num_classes = int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES if num_classes is None else num_classes)
        check_sem_seg_metadata(self.metadata, self.num_classes)
        self.opacity = float(opacity)
        self.predictor = SemSegPredictor(cfg, hrda_out) if predictor is None else predictor

    def draw(self, image: np.ndarray, prediction: dict) -> np.ndarray:
        """Picture (RGB) of a prediction (``{"sem_seg": K x H x W}`` tensor or array, or ``{"attention": ...}``)
        for the RGB ``image`` it was computed from."""
        if "attention" in prediction:
            return attention_image(prediction["attention"])
        return sem_seg_overlay(image, class_ids(prediction["sem_seg"]), self.metadata, self.opacity)

    def run_on_image(self, image: np.ndarray) -> Tuple[dict, np.ndarray]:
        """``H x W x 3`` uint8 RGB image -> (the predictor's output, ``H x W x 3`` uint8 RGB picture)."""
        prediction = self.predictor(image, input_format="RGB")
        return prediction, self.draw(image, prediction)

    def run_on_video(self, video: cv2.VideoCapture) -> Iterator[np.ndarray]:
        """Frame by frame: yields one ``H x W x 3`` uint8 BGR picture per frame read from ``video``."""
        while True:
            ok, frame = video.read()
            if not ok:
                return
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            _, picture = self.run_on_image(rgb)
            yield cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)
