"""``--tiny``: any paper run shrunk for a CPU check of the whole pipeline (docs/experiments.md §5).

Every pixel size of the run is divided by :data:`TINY_FACTOR` (8), which maps the paper's image sizes onto the
generated replicas of ``datasets/prepare_synthetic.py ROOT --prepare`` (Cityscapes-like 128x256 = 1024x2048 / 8,
GTA-like 132x239, Synthia-like 95x160, ACDC-like 135x240) and the 1024 crops onto the 128 crops of
``configs/demo_hrda.yaml``. Crop-like sizes stay >= :data:`MIN_SIDE` (32 px, the smallest MiT input), so the
smallest crops of the crop study (128, 256) both become 32. The model becomes the demo's: MiT-b0 (DINOv2 runs:
ViT-S/14) with 64-wide heads, random weights (nothing is downloaded), hence no ImageNet feature distance; a few
iterations, one evaluation at the end, no loader workers, no debug panels. Everything else (method, scales, loss
weights, attention, RCS, margins, MIC, seed) is the run's own.
"""
from collections import OrderedDict
from typing import Any, Dict, List, Sequence

from detectron2.config import CfgNode

__all__ = ["MIN_SIDE", "TINY_FACTOR", "tiny_overrides", "tiny_problems"]

TINY_FACTOR = 8
MIN_SIDE = 32  # MiT's first stage reduces its stride-4 map by 8: inputs below 32 px have no key/value rows

_SCALED = ("INPUT.SOURCE.SCALE", "INPUT.TARGET.SCALE", "INPUT.TEST.SCALE", "INPUT.TARGET.VALID_MASK_SIZE",
           "INPUT.TARGET.PSEUDO_MARGINS")
_CROPS = ("INPUT.SOURCE.CROP_SIZE", "INPUT.TARGET.CROP_SIZE", "INPUT.SYNC_CROP_SIZE", "MODEL.HRDA.HR_CROP_SIZE",
          "MODEL.TIMM.IMG_SIZE")


def _get(cfg: CfgNode, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _scaled(values: Sequence[int]) -> List[int]:
    return [max(0, int(round(v / TINY_FACTOR))) for v in values]


def _crop(values: Sequence[int]) -> List[int]:
    return [max(MIN_SIDE, int(v) // TINY_FACTOR) for v in values]


def tiny_overrides(cfg: CfgNode, iterations: int = 4) -> "OrderedDict[str, Any]":
    """The keys that shrink the loaded full-size run config ``cfg`` (``iterations`` training iterations)."""
    out: "OrderedDict[str, Any]" = OrderedDict()
    for key in _SCALED:
        out[key] = _scaled(_get(cfg, key))
    for key in _CROPS:
        values = list(_get(cfg, key))
        out[key] = _crop(values) if values else []
    window = list(cfg.TEST.SLIDE.CROP_SIZE)
    tiny_window = _crop(window)
    out["TEST.SLIDE.CROP_SIZE"] = tiny_window
    out["TEST.SLIDE.STRIDE"] = [max(1, t * s // w) for t, s, w in zip(tiny_window, cfg.TEST.SLIDE.STRIDE, window)]
    out["UDA.MIC.BLOCK_SIZE"] = max(1, int(cfg.UDA.MIC.BLOCK_SIZE) // TINY_FACTOR)
    # the demo's model (configs/demo_hrda.yaml), random weights
    out["MODEL.DEVICE"] = "cpu"
    out["MODEL.WEIGHTS"] = ""
    if cfg.MODEL.BACKBONE.NAME == "build_mit_backbone":
        out["MODEL.MIT.VARIANT"] = "mit_b0"
        out["MODEL.MIT.DROP_PATH_RATE"] = 0.0
        out["MODEL.MIT.CHECKPOINT_ACTIVATIONS"] = False
    elif cfg.MODEL.BACKBONE.NAME == "build_timm_backbone":
        if "dinov2" in cfg.MODEL.TIMM.NAME:
            out["MODEL.TIMM.NAME"] = "vit_small_patch14_dinov2"
        out["MODEL.TIMM.WEIGHTS"] = ""
        out["MODEL.TIMM.DROP_PATH_RATE"] = 0.0
        out["MODEL.TIMM.CHECKPOINT_ACTIVATIONS"] = False
        out["MODEL.TIMM.PYRAMID_CHANNELS"] = 64
    elif cfg.MODEL.BACKBONE.NAME == "build_resnet_v1c_backbone":  # the DeepLabV2 rows: the smallest V1c ResNet
        out["MODEL.RESNETS.DEPTH"] = 50
    out["MODEL.SEM_SEG_HEAD.EMBED_DIM"] = 64
    out["MODEL.HRDA.ATTENTION_EMBED_DIM"] = 64
    out["UDA.FD.LAMBDA"] = 0.0  # the ImageNet model would be a random network
    out["UDA.DEBUG_IMG_INTERVAL"] = 0
    out["DATASETS.RCS.MIN_PIXELS"] = 10  # as the demo: the replicas' classes are small
    out["DATALOADER.NUM_WORKERS"] = 0
    out["SOLVER.MAX_ITER"] = int(iterations)
    out["SOLVER.IMS_PER_BATCH"] = 2
    out["SOLVER.CHECKPOINT_PERIOD"] = int(iterations)
    out["TEST.EVAL_PERIOD"] = int(iterations)
    out["TEST.CITYSCAPES_OFFICIAL_EVAL"] = False
    return out


def tiny_problems(overrides: Dict[str, Any], cfg: CfgNode) -> List[str]:
    """Why the shrunk run cannot train (inputs of the model below :data:`MIN_SIDE`); empty if it can."""
    scales = sorted(float(s) for s in cfg.MODEL.HRDA.SCALES)
    crop = overrides["INPUT.SYNC_CROP_SIZE"] or overrides["INPUT.SOURCE.CROP_SIZE"]
    context = int(min(crop) * scales[0])
    if len(scales) == 2 and context < MIN_SIDE:
        return [f"--tiny: the context input would be {context} px ({min(crop)} px crop x scale {scales[0]:g}), below "
                f"{MIN_SIDE} px (the smallest MiT input); run this configuration at full size"]
    return []
