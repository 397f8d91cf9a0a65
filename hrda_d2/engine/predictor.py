"""Single-image prediction with the test pipeline (the role of Detectron2's ``DefaultPredictor``, which also
lives in ``detectron2/engine``).

``SemSegPredictor(cfg, hrda_out)`` builds the model of ``cfg``, loads ``MODEL.WEIGHTS`` (the student, or the
EMA teacher with ``TEST.WEIGHTS_SOURCE teacher``) and maps an ``H x W x 3`` uint8 image to a prediction at the
image's own size, through the same steps as ``tools/train_net.py --eval-only``: the keep-ratio rescale of the
``TestMapper`` (``INPUT.TEST.SCALE``), ``TEST.MODE`` inference, bilinear resize of the logits back to ``H x W``.

``hrda_out`` selects what is predicted, like ``--hrda-out`` of the original ``tools/test.py`` (docs/method.md §5.5):

* ``"fused"``: the HRDA prediction (the model's normal output);
* ``"lr"`` / ``"hr"``: the model built with ``MODEL.HRDA.FIXED_ATTENTION`` 0.0 / 1.0, i.e. the upsampled
  context (LR) prediction only / the slide-merged detail (HR) prediction only, through the same sliding
  windows; the scale-attention weights of the checkpoint are not used (the only keys the strict loading
  lets the model lack);
* ``"attention"``: ``sum_c(att_c * softmax(fused)_c)`` of every test window (``HRDA.forward_scales``),
  merged over the windows like the logits, in ``[0, 1]``.
"""
import logging
from typing import Dict

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from torch import Tensor
from torch.nn import functional as F

from hrda_d2_deploy.predictor import rgb_image

from ..checkpoint import load_model_weights
from ..data.dataset_mappers.test_mapper import TestMapper
from ..data.image_io import image_to_chw_tensor

__all__ = ["HRDA_OUTPUTS", "SemSegPredictor", "predictor_config"]

logger = logging.getLogger(__name__)

HRDA_OUTPUTS = ("fused", "lr", "hr", "attention")
# MODEL.HRDA.FIXED_ATTENTION that turns the fused output into the LR-only / HR-only prediction (docs/method.md §5.5)
_FIXED_ATTENTION_OF = {"lr": 0.0, "hr": 1.0}


def predictor_config(cfg: CfgNode, hrda_out: str = "fused") -> CfgNode:
    """A frozen copy of ``cfg`` for ``hrda_out``: with ``MODEL.HRDA.FIXED_ATTENTION`` 0.0 for ``"lr"`` and 1.0
    for ``"hr"`` (the original's ``--hrda-out LR/HR``), unchanged otherwise."""
    if hrda_out not in HRDA_OUTPUTS:
        raise ValueError(f"hrda_out={hrda_out!r} is not one of {HRDA_OUTPUTS}")
    cfg = cfg.clone()
    cfg.defrost()
    if hrda_out != "fused" and len(cfg.MODEL.HRDA.SCALES) != 2:
        raise ValueError(
            f"hrda_out={hrda_out!r} needs the two-scale HRDA model, but MODEL.HRDA.SCALES is "
            f"{list(cfg.MODEL.HRDA.SCALES)} (a plain DAFormer model has no LR/HR branches or attention)"
        )
    if hrda_out in _FIXED_ATTENTION_OF:
        cfg.MODEL.HRDA.FIXED_ATTENTION = _FIXED_ATTENTION_OF[hrda_out]
    cfg.freeze()
    return cfg


class SemSegPredictor:
    """Build, load and run a model of ``cfg`` on single images (see the module docstring).

    Attributes: ``cfg`` (the frozen config actually used), ``hrda_out``, ``model`` (in eval mode),
    ``mapper`` (the ``TestMapper`` whose rescale is applied).
    """

    def __init__(self, cfg: CfgNode, hrda_out: str = "fused"):
        """
        Args:
            cfg: a config with the hrda_d2 keys (``add_hrda_config``); ``MODEL.WEIGHTS`` empty = random weights.
            hrda_out: one of :data:`HRDA_OUTPUTS`.
        """
        self.cfg = predictor_config(cfg, hrda_out)
        self.hrda_out = hrda_out
        self.mapper = TestMapper(self.cfg)
        self.model = build_model(self.cfg)
        self.model.eval()
        weights = self.cfg.MODEL.WEIGHTS
        if weights:
            if hrda_out in _FIXED_ATTENTION_OF:
                logger.info("--hrda-out %s: the model runs with MODEL.HRDA.FIXED_ATTENTION %s, so the checkpoint's "
                            "sem_seg_head.scale_attention.* weights are not used", hrda_out, _FIXED_ATTENTION_OF[hrda_out])
            unused = ("sem_seg_head.scale_attention.",) if hrda_out in _FIXED_ATTENTION_OF else ()
            load_model_weights(self.model, weights, self.cfg.TEST.WEIGHTS_SOURCE, allowed_unexpected=unused)
        else:
            logger.warning("MODEL.WEIGHTS is empty: predicting with randomly initialised weights")

    def __call__(self, image: np.ndarray, input_format: str = "BGR") -> Dict[str, Tensor]:
        """Predict one image.

        Args:
            image: ``H x W x 3`` uint8 array, channels in ``input_format`` order (``"BGR"`` as OpenCV reads
                images and video frames, the Detectron2 predictor convention; or ``"RGB"``).
            input_format: ``"BGR"`` or ``"RGB"``.

        Returns:
            ``{"sem_seg": C x H x W}`` float logits on the model's device (``hrda_out`` fused / lr / hr; averaged
            probabilities with TEST.MODE slide and TEST.SLIDE.MERGE "probabilities"), or
            ``{"attention": 1 x H x W}`` values in ``[0, 1]`` (``hrda_out`` attention); ``H x W`` is the size
            of ``image``.
        """
        rgb = rgb_image(image, input_format)
        height, width = image.shape[:2]
        resized = self.mapper.rescale.get_transform(rgb).apply_image(np.ascontiguousarray(rgb))
        tensor = image_to_chw_tensor(resized)
        with torch.no_grad():
            if self.hrda_out != "attention":
                return self.model([{"image": tensor, "height": height, "width": width}])[0]
            images = self.model.normalize(tensor[None])
            attention = self.model.merge_test_windows(images, lambda x: self.model.forward_scales(x)["attention"])
            attention = F.interpolate(attention, size=(height, width), mode="bilinear", align_corners=False)
            return {"attention": attention[0]}
