"""``VisualizationDemo``: predict with :class:`hrda_d2.engine.predictor.SemSegPredictor` and draw the result
(the layout of Detectron2's and Mask2Former's ``demo/predictor.py``; ``demo/demo.py`` imports it from here).

Pictures are ``H x W x 3`` uint8 RGB; video frames are BGR as OpenCV reads and writes them.
"""
from typing import Iterator, Optional, Tuple

import cv2
import numpy as np
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog

from hrda_d2.engine.predictor import SemSegPredictor
from hrda_d2.utils.visualization import attention_image, check_sem_seg_metadata, sem_seg_overlay

__all__ = ["VisualizationDemo"]


class VisualizationDemo:
    """Predict and draw (Detectron2 ``demo/predictor.py`` style).

    ``run_on_image(image)`` -> ``(prediction, picture)``; ``run_on_video(capture)`` yields BGR frames.
    """

    def __init__(self, cfg: CfgNode, hrda_out: str = "fused", metadata_name: Optional[str] = None,
                 opacity: float = 0.5):
        """
        Args:
            cfg: config with the hrda_d2 keys.
            hrda_out: ``fused`` | ``lr`` | ``hr`` | ``attention`` (``SemSegPredictor``).
            metadata_name: dataset whose metadata names and colours the classes; default ``DATASETS.TEST[0]``.
            opacity: overlay opacity in ``[0, 1]`` (1 = palette image).
        """
        if not 0.0 <= opacity <= 1.0:
            raise ValueError(f"opacity must be in [0, 1], got {opacity}")
        name = metadata_name or (cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else None)
        if not name:
            raise ValueError("no dataset for the class names and colours: set --metadata-name or DATASETS.TEST")
        self.metadata = MetadataCatalog.get(name)
        check_sem_seg_metadata(self.metadata, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
        self.opacity = float(opacity)
        self.predictor = SemSegPredictor(cfg, hrda_out)

    def draw(self, image: np.ndarray, prediction: dict) -> np.ndarray:
        """Picture (RGB) of a ``SemSegPredictor`` output for the RGB ``image`` it was computed from."""
        if "attention" in prediction:
            return attention_image(prediction["attention"])
        sem_seg = prediction["sem_seg"].argmax(dim=0).cpu().numpy()
        return sem_seg_overlay(image, sem_seg, self.metadata, self.opacity)

    def run_on_image(self, image: np.ndarray) -> Tuple[dict, np.ndarray]:
        """``H x W x 3`` uint8 RGB image -> (``SemSegPredictor`` output, ``H x W x 3`` uint8 RGB picture)."""
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
