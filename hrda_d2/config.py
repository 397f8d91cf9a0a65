"""Config keys of hrda_d2.

``add_hrda_config(cfg)`` adds every key the project reads to a Detectron2 ``CfgNode`` (from
``detectron2.config.get_cfg()``). The defaults are the paper's GTA->Cityscapes HRDA setting
(``configs/gtaHR2csHR_hrda.yaml``), see ``docs``/README "Config reference" for the mapping from the
original mmseg config fields to these keys.

Keys are grouped by the part of the system that reads them:

* ``MODEL.MIT``          MiT backbone (``modeling/backbone/mit.py``)
* ``MODEL.SEM_SEG_HEAD`` DAFormer head (``modeling/heads/daformer_head.py``)
* ``MODEL.HRDA``         multi-resolution meta-architecture (``modeling/meta_arch/hrda.py``)
* ``TEST``               whole / slide inference
* ``INPUT``              dataset mappers (``data/dataset_mappers``)
* ``DATASETS``           source/target splits, rare class sampling (``data/samplers``)
* ``UDA``                DACS self-training (``engine/``)
* ``SOLVER``             AdamW, warm-up + poly schedule, AMP, clipping, checkpoints kept, pre-emption signals
"""
import logging
import os
from typing import Sequence

import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

__all__ = ["add_hrda_config", "load_config"]

logger = logging.getLogger(__name__)


def _add_model_config(cfg: CN) -> None:
    cfg.MODEL.META_ARCHITECTURE = "HRDA"
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    cfg.MODEL.BACKBONE.NAME = "build_mit_backbone"

    cfg.MODEL.MIT = CN()
    cfg.MODEL.MIT.VARIANT = "mit_b5"  # mit_b0 ... mit_b5
    cfg.MODEL.MIT.DROP_PATH_RATE = 0.1
    cfg.MODEL.MIT.OUT_FEATURES = ["res2", "res3", "res4", "res5"]

    # MODEL.SEM_SEG_HEAD exists in Detectron2's defaults; its DAFormer keys are added here
    cfg.MODEL.SEM_SEG_HEAD.NAME = "DAFormerHead"
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 19
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255
    cfg.MODEL.SEM_SEG_HEAD.EMBED_DIM = 256
    cfg.MODEL.SEM_SEG_HEAD.FUSION = "aspp"  # "aspp" (depthwise-separable ASPP) | "conv" (1x1 conv)
    cfg.MODEL.SEM_SEG_HEAD.ASPP_DILATIONS = [1, 6, 12, 18]
    cfg.MODEL.SEM_SEG_HEAD.DROPOUT = 0.1
    cfg.MODEL.SEM_SEG_HEAD.NORM = "BN"
    # loss weight of the plain (single-scale) DAFormer model; HRDA uses its own weights below
    cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 1.0

    cfg.MODEL.HRDA = CN()
    cfg.MODEL.HRDA.SCALES = [1.0, 0.5]  # [1.0] = plain single-scale DAFormer
    cfg.MODEL.HRDA.HR_CROP_SIZE = [512, 512]
    cfg.MODEL.HRDA.CROP_COORD_DIVISIBLE = 8
    cfg.MODEL.HRDA.FEATURE_SCALE = 0.5  # scale whose features feed the ImageNet feature distance
    cfg.MODEL.HRDA.HR_SLIDE_INFERENCE = True
    cfg.MODEL.HRDA.HR_SLIDE_OVERLAPPING = True
    cfg.MODEL.HRDA.ATTENTION_CLASSWISE = True
    cfg.MODEL.HRDA.ATTENTION_EMBED_DIM = 256
    cfg.MODEL.HRDA.HR_LOSS_WEIGHT = 0.1
    cfg.MODEL.HRDA.LR_LOSS_WEIGHT = 0.0
    cfg.MODEL.HRDA.FIXED_ATTENTION = None  # None = learned attention; a float in [0, 1] otherwise
    cfg.MODEL.HRDA.BLUR_HR_CROP = False


def _add_test_config(cfg: CN) -> None:
    cfg.TEST.MODE = "slide"  # "slide" | "whole"
    cfg.TEST.SLIDE = CN()
    cfg.TEST.SLIDE.CROP_SIZE = [1024, 1024]
    cfg.TEST.SLIDE.STRIDE = [512, 512]
    cfg.TEST.SLIDE.BATCHED = True
    # which weights --eval-only evaluates: "student" (as the original test script) or "teacher"
    cfg.TEST.WEIGHTS_SOURCE = "student"
    # also report mIoU16 (Synthia's 16 classes) in evaluations (Synthia-source configs)
    cfg.TEST.REPORT_MIOU16 = False
    # also run the official Cityscapes evaluation (cityscapesscripts) on Detectron2's Cityscapes splits
    cfg.TEST.CITYSCAPES_OFFICIAL_EVAL = True
    cfg.TEST.SAVE_PREDICTIONS = False  # colour PNGs + Cityscapes label-id PNGs under OUTPUT_DIR/inference


def _add_input_config(cfg: CN) -> None:
    cfg.INPUT.FORMAT = "RGB"
    # Source training pipeline: keep-ratio rescale to SCALE (long side, short side) like mmcv imrescale,
    # random crop of CROP_SIZE with cat_max_ratio, horizontal flip, pad with 0 (image) / 255 (label).
    cfg.INPUT.SOURCE = CN()
    cfg.INPUT.SOURCE.SCALE = [2560, 1440]
    cfg.INPUT.SOURCE.CROP_SIZE = [1024, 1024]
    cfg.INPUT.SOURCE.CAT_MAX_RATIO = 0.75
    cfg.INPUT.SOURCE.FLIP_PROB = 0.5
    # Target training pipeline (labels are not used by DACS)
    cfg.INPUT.TARGET = CN()
    cfg.INPUT.TARGET.SCALE = [2048, 1024]
    cfg.INPUT.TARGET.CROP_SIZE = [1024, 1024]
    cfg.INPUT.TARGET.CAT_MAX_RATIO = 1.0
    cfg.INPUT.TARGET.FLIP_PROB = 0.5
    # pseudo-label margins [top, bottom, left, right] on a mask of VALID_MASK_SIZE (H, W) built before
    # resizing and cropping; [] disables the margin mask
    cfg.INPUT.TARGET.PSEUDO_MARGINS = [30, 240, 30, 30]
    cfg.INPUT.TARGET.VALID_MASK_SIZE = [1024, 2048]
    # Test pipeline: keep-ratio rescale to SCALE; predictions are resized back to the original size
    cfg.INPUT.TEST = CN()
    cfg.INPUT.TEST.SCALE = [2048, 1024]


def _add_datasets_config(cfg: CN) -> None:
    cfg.DATASETS.SOURCE = ("gta_train",)
    cfg.DATASETS.TARGET = ("cityscapes_fine_sem_seg_train",)
    cfg.DATASETS.TEST = ("cityscapes_fine_sem_seg_val",)
    cfg.DATASETS.RCS = CN()
    cfg.DATASETS.RCS.ENABLED = True
    cfg.DATASETS.RCS.CLASS_TEMP = 0.01
    cfg.DATASETS.RCS.MIN_PIXELS = 3000
    cfg.DATASETS.RCS.MIN_CROP_RATIO = 2.0
    cfg.DATALOADER.NUM_WORKERS = 1


def _add_uda_config(cfg: CN) -> None:
    cfg.UDA = CN()
    cfg.UDA.ENABLED = True  # False = source-only training in the same loop
    cfg.UDA.ALPHA = 0.999
    cfg.UDA.PSEUDO_THRESHOLD = 0.968
    cfg.UDA.PSEUDO_WEIGHT_IGNORE_TOP = 0
    cfg.UDA.PSEUDO_WEIGHT_IGNORE_BOTTOM = 0
    cfg.UDA.MIX = "class"
    cfg.UDA.FD = CN()
    cfg.UDA.FD.LAMBDA = 0.005  # 0 disables the ImageNet feature distance
    cfg.UDA.FD.CLASSES = [6, 7, 11, 12, 13, 14, 15, 16, 17, 18]
    cfg.UDA.FD.SCALE_MIN_RATIO = 0.75
    cfg.UDA.AUG = CN()
    cfg.UDA.AUG.BLUR = True
    cfg.UDA.AUG.COLOR_JITTER_STRENGTH = 0.2
    # The original applies colour jitter when uniform(0, 1) > color_jitter_probability (0.2), i.e. with
    # probability 0.8. The key states what it is: the threshold a uniform draw must exceed.
    cfg.UDA.AUG.COLOR_JITTER_SKIP_THRESHOLD = 0.2
    cfg.UDA.DEBUG_IMG_INTERVAL = 1000  # 0 disables the debug panels


def _add_solver_config(cfg: CN) -> None:
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BASE_LR = 6e-5
    cfg.SOLVER.BETAS = [0.9, 0.999]
    cfg.SOLVER.WEIGHT_DECAY = 0.01
    cfg.SOLVER.HEAD_LR_MULTIPLIER = 10.0  # every parameter of the decode heads (norms included)
    cfg.SOLVER.BACKBONE_NORM_DECAY_MULTIPLIER = 0.0  # backbone LayerNorms get no weight decay
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"
    cfg.SOLVER.WARMUP_ITERS = 1500
    cfg.SOLVER.WARMUP_FACTOR = 1e-6
    cfg.SOLVER.WARMUP_METHOD = "linear"
    cfg.SOLVER.POLY_LR_POWER = 1.0
    cfg.SOLVER.POLY_LR_MIN_LR = 0.0
    cfg.SOLVER.MAX_ITER = 40000
    cfg.SOLVER.IMS_PER_BATCH = 2  # source images per step (and as many target images)
    cfg.SOLVER.CHECKPOINT_PERIOD = 40000
    # keep only the newest N periodic checkpoints (Detectron2's PeriodicCheckpointer max_to_keep; model_final
    # and pre-emption checkpoints are never deleted); 0 keeps all
    cfg.SOLVER.CHECKPOINT_MAX_KEEP = 0
    # signals that stop training after the current iteration with a checkpoint and exit status 128 + signal
    # (engine/preemption.py; SLURM: --signal=TERM@120); [] lets them act as usual (SIGTERM kills at once)
    cfg.SOLVER.PREEMPTION_SIGNALS = ["SIGTERM", "SIGINT", "SIGUSR1"]
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False
    cfg.SOLVER.AMP.ENABLED = False
    cfg.SOLVER.AMP.DTYPE = "bfloat16"  # "bfloat16" | "float16"
    cfg.TEST.EVAL_PERIOD = 4000
    cfg.SEED = 1


def add_hrda_config(cfg: CN) -> CN:
    """Add every hrda_d2 config key (with the paper's GTA->Cityscapes defaults) to ``cfg`` in place.

    Returns ``cfg`` for chaining. Unknown keys in a YAML file or on the command line are then rejected
    by Detectron2's ``merge_from_file``/``merge_from_list`` with a ``KeyError`` naming the key.
    """
    _add_model_config(cfg)
    _add_test_config(cfg)
    _add_input_config(cfg)
    _add_datasets_config(cfg)
    _add_uda_config(cfg)
    _add_solver_config(cfg)
    return cfg


def _yaml_error_message(error: "yaml.YAMLError", config_file: str) -> str:
    """``<file>, line L, column C: <problem>`` of a YAML parser error, without the parser's traceback."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = "; ".join(str(p) for p in (getattr(error, "context", None), getattr(error, "problem", None)) if p)
    if mark is None:
        return f"Config file {config_file} is not valid YAML: {problem or error}"
    name = mark.name if mark.name and not mark.name.startswith("<") else config_file
    return (f"Config file {name}, line {mark.line + 1}, column {mark.column + 1}: YAML syntax error: "
            f"{problem or error}")


def load_config(config_file: str, opts: Sequence[str] = (), freeze: bool = True) -> CN:
    """Detectron2 config with every hrda_d2 key, merged from ``config_file`` and ``KEY VALUE`` overrides.

    A missing file, a YAML syntax error (file, line and column) or an unknown / ill-typed key raises
    ``SystemExit`` with a message naming it (for the command-line tools). ``MODEL.DEVICE`` falls back to "cpu" (with a warning) when CUDA is not available.
    """
    cfg = add_hrda_config(get_cfg())
    if not os.path.isfile(config_file):
        raise SystemExit(f"Config file '{config_file}' does not exist (configs/ lists the experiments).")
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
    except yaml.YAMLError as e:  # a _BASE_ file may be the broken one: the parser's mark names it
        raise SystemExit(_yaml_error_message(e, config_file)) from None
    except (KeyError, AssertionError, ValueError) as e:
        raise SystemExit(f"Invalid config ({config_file} or command-line overrides): {e}\n"
                         f"Every valid key is defined in hrda_d2/config.py (add_hrda_config).") from e
    import torch  # deferred: keeps `import hrda_d2.config` light

    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: running on the CPU (MODEL.DEVICE cpu).")
        cfg.MODEL.DEVICE = "cpu"
    if freeze:
        cfg.freeze()
    return cfg
