"""Checks of a merged config across keys, at load time: every problem names the key, the value and the fix.

:func:`validate_config` raises :class:`ConfigError` listing every problem found (not only the first):

* the choice keys (:data:`~.choices.CHOICES`) hold one of their values; ``UDA.ENABLED`` is left to ``load_config``'s
  upgrade (a config built in code sets ``UDA.METHOD``);
* class ids in the class lists (``UDA.FD.CLASSES``) within ``0 .. MODEL.SEM_SEG_HEAD.NUM_CLASSES - 1``; the
  Cityscapes default of ``UDA.FD.CLASSES`` kept for another label space (docs/method.md §7.2 step 5) must be
  replaced (or the feature distance switched off with ``UDA.FD.LAMBDA 0``); mIoU16 needs the 19 classes;
* geometry: detail crop <= training crops (the synchronized window ``INPUT.SYNC_CROP_SIZE`` when set, which needs
  equal source / target crops and a fixed SEED), slide stride in ``(0, window]``, positive sizes, context scales whose
  logits the fusion can place (docs/method.md §5.3);
* ratios, probabilities, weights and thresholds in their ranges;
* combinations: MIC without target pseudo-labels (source-only, target-only; a learned and a fixed attention
  at once is impossible by construction), the HR + LR loss weights above 1;
* Detectron2 keys that hrda_d2 does not read, when changed from their default, with the key that does the job
  here (:data:`IGNORED_DETECTRON2_KEYS`), so that a setting never silently has no effect.

The checks read the config only (no model, no data): they run in ``load_config`` and in ``HRDATrainer``.
"""
import functools
import math
import signal
from typing import Any, Dict, List, Optional, Sequence

from detectron2.config import CfgNode, get_cfg

from .choices import CHOICES, MIC_METHODS, MIC_WITH_OWN_TEACHER, SELF_TRAINING, VFM_UDA
from .defaults import add_hrda_config

__all__ = ["CITYSCAPES_FD_CLASSES", "ConfigError", "IGNORED_DETECTRON2_KEYS", "catchable_signal", "check_choice",
           "config_problems", "uda_method", "validate_config"]

# UDA.FD.CLASSES default: the Cityscapes "thing" classes (pole ... bicycle) of the 19-class label space
CITYSCAPES_FD_CLASSES = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)
_CITYSCAPES_NUM_CLASSES = 19

# Detectron2 keys hrda_d2 never reads -> what does that job here
IGNORED_DETECTRON2_KEYS: Dict[str, str] = {
    "DATASETS.TRAIN": "DATASETS.SOURCE (labelled) and DATASETS.TARGET (unlabelled)",
    "INPUT.MIN_SIZE_TRAIN": "INPUT.SOURCE.SCALE / INPUT.TARGET.SCALE (keep-ratio rescale to [long side, short side])",
    "INPUT.MAX_SIZE_TRAIN": "INPUT.SOURCE.SCALE / INPUT.TARGET.SCALE",
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": "INPUT.SOURCE.SCALE / INPUT.TARGET.SCALE",
    "INPUT.MIN_SIZE_TEST": "INPUT.TEST.SCALE",
    "INPUT.MAX_SIZE_TEST": "INPUT.TEST.SCALE",
    "INPUT.RANDOM_FLIP": "INPUT.SOURCE.FLIP_PROB / INPUT.TARGET.FLIP_PROB",
    "INPUT.CROP.ENABLED": "INPUT.SOURCE.CROP_SIZE / INPUT.TARGET.CROP_SIZE (training crops are always taken)",
    "INPUT.CROP.TYPE": "INPUT.SOURCE.CROP_SIZE / INPUT.TARGET.CROP_SIZE (absolute sizes)",
    "INPUT.CROP.SIZE": "INPUT.SOURCE.CROP_SIZE / INPUT.TARGET.CROP_SIZE",
    "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": "INPUT.SOURCE.CAT_MAX_RATIO / INPUT.TARGET.CAT_MAX_RATIO",
    "DATALOADER.SAMPLER_TRAIN": "DATASETS.RCS.* (rare class sampling; the training streams are position-seeded)",
    "DATALOADER.REPEAT_THRESHOLD": "DATASETS.RCS.CLASS_TEMP / DATASETS.RCS.MIN_PIXELS",
    "DATALOADER.ASPECT_RATIO_GROUPING": "nothing: training crops have one size (INPUT.*.CROP_SIZE)",
    "SOLVER.STEPS": "SOLVER.POLY_LR_POWER / SOLVER.POLY_LR_MIN_LR (poly schedule after SOLVER.WARMUP_ITERS)",
    "SOLVER.GAMMA": "SOLVER.POLY_LR_POWER / SOLVER.POLY_LR_MIN_LR",
    "SOLVER.WEIGHT_DECAY_NORM": "SOLVER.BACKBONE_NORM_DECAY_MULTIPLIER (heads' norms decay like the heads)",
    "SOLVER.WEIGHT_DECAY_BIAS": "SOLVER.WEIGHT_DECAY (biases decay like their layers, as in the original)",
    "SOLVER.BIAS_LR_FACTOR": "SOLVER.HEAD_LR_MULTIPLIER / SOLVER.HEAD_LR_PARAM_PREFIXES",
    "TEST.AUG.ENABLED": "TEST.MODE (slide / whole inference; no test-time augmentation)",
    "TEST.PRECISE_BN.ENABLED": "nothing: the trained BatchNorm statistics are used, as in the original",
    "MODEL.SEM_SEG_HEAD.COMMON_STRIDE": "MODEL.SEM_SEG_HEAD.IN_FEATURES (the first map sets the output stride)",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM": "MODEL.SEM_SEG_HEAD.EMBED_DIM",
}


class ConfigError(ValueError):
    """A config that cannot be used: a missing or broken file, an unknown key, or values that contradict each
    other or their ranges; the message names the file / key / value and the fix (every problem, one per line)."""


def _choice_problem(key: str, value: Any) -> Optional[str]:
    """``"is not <what>; use one of <values>"`` for a value outside ``CHOICES[key]``, else None."""
    values, what = CHOICES[key]
    return None if value in values else f"is not {what}; use one of {', '.join(values)}"


def check_choice(key: str, value: Any) -> Any:
    """``value`` if it is one of ``CHOICES[key]`` (:mod:`.choices`), else a :class:`ConfigError` naming the key,
    the value and the valid values: the guard of the constructors that branch on a choice key."""
    problem = _choice_problem(key, value)
    if problem:
        raise ConfigError(f"{key}={value!r}: {problem}")
    return value


def catchable_signal(name: str) -> Optional[signal.Signals]:
    """The signal called ``name`` (``"SIGTERM"``, any case) for ``SOLVER.PREEMPTION_SIGNALS``; None if there is
    none or it cannot be caught (SIGKILL, SIGSTOP)."""
    sig = getattr(signal, str(name).upper(), None)
    return sig if isinstance(sig, signal.Signals) and sig not in (signal.SIGKILL, signal.SIGSTOP) else None


def uda_method(cfg: CfgNode) -> str:
    """``UDA.METHOD`` of ``cfg`` (one of :data:`~.choices.UDA_METHODS`, else a :class:`ConfigError`)."""
    return check_choice("UDA.METHOD", cfg.UDA.METHOD)


def _get(cfg: CfgNode, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _has(cfg: CfgNode, key: str) -> bool:
    try:
        _get(cfg, key)
    except KeyError:
        return False
    return True


class _Problems:
    """Collects ``KEY=value: problem; fix`` lines."""

    def __init__(self, cfg: CfgNode):
        self.cfg = cfg
        self.lines: List[str] = []

    def add(self, key: str, problem: str, fix: str) -> None:
        self.lines.append(f"{key}={_get(self.cfg, key)!r}: {problem}; {fix}")

    def check_range(self, key: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False,
                    fix: str = "") -> None:
        value = _get(self.cfg, key)
        if value is None:
            return
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (isinstance(value, (int, float)) and math.isfinite(value) and above and below):
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            self.add(key, f"must be in {interval}", fix or f"choose a value in {interval}")

    def check_pair(self, key: str, allow_empty: bool = False) -> Optional[Sequence[int]]:
        value = list(_get(self.cfg, key) or [])
        if not value and allow_empty:
            return None
        if len(value) != 2 or any(not isinstance(v, int) or v <= 0 for v in value):
            self.add(key, "must be [height, width] with positive integers", "e.g. [512, 512]")
            return None
        return value


def config_problems(cfg: CfgNode) -> List[str]:
    """Every problem of ``cfg`` (a config with the hrda_d2 keys) as one line: ``KEY=value: problem; fix``."""
    p = _Problems(cfg)
    _check_choices(p, cfg)
    _check_label_space(p, cfg)
    _check_geometry(p, cfg)
    _check_ranges(p, cfg)
    _check_combinations(p, cfg)
    _check_ignored_detectron2_keys(p, cfg)
    return p.lines


def validate_config(cfg: CfgNode, source: str = "config") -> None:
    """Raise :class:`ConfigError` naming every problem of ``cfg`` (see the module docstring)."""
    problems = config_problems(cfg)
    if len(problems) == 1:
        raise ConfigError(f"{source}: {problems[0]}")
    if problems:
        raise ConfigError(f"{source}: {len(problems)} invalid settings:\n  " + "\n  ".join(problems))


# ------------------------------------------------------------------------------------------------------------
def _check_choices(p: _Problems, cfg: CfgNode) -> None:
    for key in CHOICES:
        problem = _choice_problem(key, _get(cfg, key))
        if problem:
            p.lines.append(f"{key}={_get(cfg, key)!r}: {problem}")
    unknown = [name for name in cfg.SOLVER.PREEMPTION_SIGNALS if catchable_signal(name) is None]
    if unknown:
        p.add("SOLVER.PREEMPTION_SIGNALS", f"{unknown} are not signals that can be caught",
              "e.g. ['SIGTERM', 'SIGINT', 'SIGUSR1'], or [] (signals act as usual)")
    if cfg.UDA.ENABLED is not None:  # load_config moves it to UDA.METHOD (loading.py); a config built in code
        p.add("UDA.ENABLED", "is the first release's switch, read only when load_config upgrades a YAML file",
              "set UDA.METHOD 'source_only' (for False) and leave UDA.ENABLED out")


def _method(cfg: CfgNode) -> Optional[str]:
    """``UDA.METHOD`` of ``cfg``, None when it is not a method (reported by :func:`_check_choices`)."""
    return None if _choice_problem("UDA.METHOD", cfg.UDA.METHOD) else cfg.UDA.METHOD


def _check_label_space(p: _Problems, cfg: CfgNode) -> None:
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if not isinstance(num_classes, int) or num_classes < 1:
        p.add("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "must be a positive number of classes", "e.g. 19 for Cityscapes")
        return
    fd_used = _method(cfg) == SELF_TRAINING and cfg.UDA.FD.LAMBDA > 0
    classes = list(cfg.UDA.FD.CLASSES)
    outside = [c for c in classes if not isinstance(c, int) or not 0 <= c < num_classes]
    if outside:
        p.add("UDA.FD.CLASSES", f"class ids {outside} are not classes of MODEL.SEM_SEG_HEAD.NUM_CLASSES="
              f"{num_classes} (ids 0..{num_classes - 1})", "list the thing classes of your label space")
    elif fd_used and num_classes != _CITYSCAPES_NUM_CLASSES and tuple(classes) == CITYSCAPES_FD_CLASSES:
        p.add("UDA.FD.CLASSES", f"is the Cityscapes default (its 19-class 'thing' ids), but the label space has "
              f"MODEL.SEM_SEG_HEAD.NUM_CLASSES={num_classes} classes",
              "set UDA.FD.CLASSES to the thing classes of your label space, or UDA.FD.LAMBDA 0 (no feature distance)")
    if cfg.TEST.REPORT_MIOU16 and num_classes != _CITYSCAPES_NUM_CLASSES:
        p.add("TEST.REPORT_MIOU16", f"mIoU16 is Synthia's 16 of the 19 Cityscapes classes, the model has {num_classes}",
              "set TEST.REPORT_MIOU16 False")
    ignore = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    if isinstance(ignore, int) and 0 <= ignore < num_classes:
        p.add("MODEL.SEM_SEG_HEAD.IGNORE_VALUE", f"is a class id (0..{num_classes - 1})", "use 255")


def _check_geometry(p: _Problems, cfg: CfgNode) -> None:
    crops = {key: p.check_pair(key) for key in ("INPUT.SOURCE.CROP_SIZE", "INPUT.TARGET.CROP_SIZE")}
    sync = _check_sync_crop(p, cfg, crops)
    if sync:  # the model is trained on the synchronized windows (docs/method.md §10.4)
        crops = {"INPUT.SYNC_CROP_SIZE": sync}
    window = p.check_pair("TEST.SLIDE.CROP_SIZE")
    stride = p.check_pair("TEST.SLIDE.STRIDE")
    if window and stride and any(s > w for s, w in zip(stride, window)):
        p.add("TEST.SLIDE.STRIDE", f"is larger than the window TEST.SLIDE.CROP_SIZE {window} (pixels between "
              f"windows would get no prediction)", "use a stride <= the window, e.g. half of it")
    scales = sorted(float(s) for s in cfg.MODEL.HRDA.SCALES)
    if len(scales) not in (1, 2) or any(not 0 < s <= 1 for s in scales) or scales[-1] != 1.0:
        p.add("MODEL.HRDA.SCALES", "must be [1.0] (one scale) or [1.0, s] with 0 < s <= 1 (detail scale 1.0 and "
              "a context scale)", "e.g. [1.0, 0.5] (the paper)")
        return
    if len(scales) == 1:
        return
    hr_crop = p.check_pair("MODEL.HRDA.HR_CROP_SIZE", allow_empty=True)
    divisible = cfg.MODEL.HRDA.CROP_COORD_DIVISIBLE
    if not isinstance(divisible, int) or divisible < 1:
        p.add("MODEL.HRDA.CROP_COORD_DIVISIBLE", "must be a positive integer", "use 8 (the paper)")
    if hr_crop:
        for key, crop in crops.items():
            if crop and any(h > c for h, c in zip(hr_crop, crop)):
                p.add("MODEL.HRDA.HR_CROP_SIZE", f"the detail crop {hr_crop} is larger than the training crop {key} "
                      f"{crop}", f"use a detail crop <= {crop} (the paper: half of it)")
    context = scales[0]
    stride_px = _output_stride(cfg)
    if not hr_crop or stride_px is None or not isinstance(divisible, int) or divisible < 1:
        return
    for key, crop in crops.items():
        for side, detail in zip(crop or (), hr_crop):
            # the fusion upsamples the context logits by 1/s and places the detail logits at box / stride; the
            # farthest detail crop ends at the last divisible offset + the crop (docs/method.md §5.3)
            lr_logits = math.ceil(math.floor(side * context) / stride_px)
            covered = math.floor(lr_logits / context)
            needed = ((side - detail) // divisible * divisible + detail) // stride_px
            if covered < needed:
                p.add("MODEL.HRDA.SCALES", f"the context branch of the {key} side {side} ({math.floor(side * context)}"
                      f" px, {lr_logits} logits at stride {stride_px}) upsampled by 1/{context:g} covers {covered} "
                      f"detail-logit rows, the farthest detail crop ends at row {needed}", "choose a context scale "
                      "s with crop * s divisible by the output stride (0.5, 0.25, 0.75 for 1024 / 512 crops)")
                break


def _check_sync_crop(p: _Problems, cfg: CfgNode, crops: Dict[str, Optional[Sequence[int]]]) -> Optional[Sequence[int]]:
    """``INPUT.SYNC_CROP_SIZE``: [] or a window <= the (equal) source and target crops, with a fixed SEED (both
    streams derive the window of a batch position from it)."""
    sync = p.check_pair("INPUT.SYNC_CROP_SIZE", allow_empty=True)
    if not sync:
        return None
    source, target = crops["INPUT.SOURCE.CROP_SIZE"], crops["INPUT.TARGET.CROP_SIZE"]
    if source and target and list(source) != list(target):
        p.add("INPUT.SYNC_CROP_SIZE", f"cuts one window out of a source and a target crop of the same size, but "
              f"INPUT.SOURCE.CROP_SIZE is {source} and INPUT.TARGET.CROP_SIZE {target}", "use equal crop sizes")
    elif source and any(s > c for s, c in zip(sync, source)):
        p.add("INPUT.SYNC_CROP_SIZE", f"is larger than the training crops {source}",
              f"use a window <= {source}, or [] (off)")
    if cfg.SEED < 0:
        p.add("INPUT.SYNC_CROP_SIZE", f"needs a fixed seed (SEED={cfg.SEED} draws a different random seed per "
              f"stream, so source and target would cut different windows)", "set SEED >= 0")
    return sync


def _output_stride(cfg: CfgNode) -> Optional[int]:
    """Output stride of the single-scale head: that of its first input map (resK = stride 2^K), or None when the
    name does not say (the model then checks the sizes itself)."""
    first = list(cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES)[:1]
    if not first or not first[0].startswith("res") or not first[0][3:].isdigit():
        return None
    return 2 ** int(first[0][3:])


def _check_ranges(p: _Problems, cfg: CfgNode) -> None:
    p.check_range("UDA.ALPHA", 0.0, 1.0)
    p.check_range("UDA.PSEUDO_THRESHOLD", 0.0, 1.0)
    p.check_range("UDA.FD.LAMBDA", 0.0, math.inf, high_open=True, fix="use >= 0 (0 disables the feature distance)")
    p.check_range("UDA.FD.SCALE_MIN_RATIO", 0.0, 1.0)
    p.check_range("UDA.AUG.COLOR_JITTER_STRENGTH", 0.0, math.inf, high_open=True)
    p.check_range("UDA.AUG.COLOR_JITTER_SKIP_THRESHOLD", 0.0, 1.0)
    p.check_range("UDA.MIC.MASK_RATIO", 0.0, 1.0, high_open=True, fix="use a ratio in [0, 1) (the paper: 0.7)")
    p.check_range("UDA.MIC.LAMBDA", 0.0, math.inf, high_open=True)
    p.check_range("UDA.VFM.EMA_ALPHA", 0.0, 1.0)
    p.check_range("UDA.VFM.PSEUDO_THRESHOLD", 0.0, 1.0)
    p.check_range("UDA.VFM.TOKEN_MASK_RATIO", 0.0, 1.0, high_open=True, fix="use a ratio in [0, 1) (0.7; 0 = off)")
    for key in ("UDA.VFM.FD_WEIGHT_SOURCE", "UDA.VFM.FD_WEIGHT_TARGET", "UDA.VFM.AUG_IMG_SIZE"):
        p.check_range(key, 0, math.inf, high_open=True)
    p.check_range("UDA.VFM.FD_SIZE", 0, math.inf, low_open=True, high_open=True, fix="use 406 (29 DINOv2 tokens)")
    p.check_range("UDA.MIC.BLOCK_SIZE", 0, math.inf, low_open=True, high_open=True, fix="use a block side > 0 (64)")
    for side in ("SOURCE", "TARGET"):
        p.check_range(f"INPUT.{side}.CAT_MAX_RATIO", 0.0, 1.0, low_open=True, fix="use 1.0 to disable the check")
        p.check_range(f"INPUT.{side}.FLIP_PROB", 0.0, 1.0)
    margins = list(cfg.INPUT.TARGET.PSEUDO_MARGINS)
    if margins and (len(margins) != 4 or any(not isinstance(m, int) or m < 0 for m in margins)):
        p.add("INPUT.TARGET.PSEUDO_MARGINS", "must be [] or [top, bottom, left, right] with integers >= 0",
              "e.g. [30, 240, 30, 30] (the paper's Cityscapes margins)")
    for key in ("UDA.PSEUDO_WEIGHT_IGNORE_TOP", "UDA.PSEUDO_WEIGHT_IGNORE_BOTTOM", "DATASETS.RCS.MIN_PIXELS"):
        p.check_range(key, 0, math.inf, high_open=True)
    p.check_range("DATASETS.RCS.CLASS_TEMP", 0.0, math.inf, low_open=True, high_open=True,
                  fix="use a temperature > 0 (the paper: 0.01)")
    p.check_range("DATASETS.RCS.MIN_CROP_RATIO", 0.0, math.inf, high_open=True)
    p.check_range("MODEL.HRDA.HR_LOSS_WEIGHT", 0.0, 1.0)
    p.check_range("MODEL.HRDA.LR_LOSS_WEIGHT", 0.0, 1.0)
    p.check_range("MODEL.HRDA.FIXED_ATTENTION", 0.0, 1.0, fix="use None (learned attention) or a value in [0, 1]")
    p.check_range("SOLVER.BASE_LR", 0.0, math.inf, low_open=True, high_open=True)
    p.check_range("SOLVER.WARMUP_FACTOR", 0.0, 1.0)
    p.check_range("SOLVER.LAYER_DECAY", 0.0, math.inf, low_open=True, high_open=True,
                  fix="use 1.0 (off) or e.g. 0.9")
    p.check_range("SOLVER.MAX_ITER", 0, math.inf, low_open=True, high_open=True)
    p.check_range("SOLVER.IMS_PER_BATCH", 0, math.inf, low_open=True, high_open=True)
    p.check_range("SOLVER.METRICS_PERIOD", 1, math.inf, high_open=True)
    p.check_range("SOLVER.WARMUP_ITERS", 0, math.inf, high_open=True)
    p.check_range("SOLVER.CHECKPOINT_PERIOD", 0, math.inf, high_open=True,
                  fix="use 0 for no periodic checkpoints (model_final and pre-emption checkpoints only)")


def _check_combinations(p: _Problems, cfg: CfgNode) -> None:
    hrda = cfg.MODEL.HRDA
    if isinstance(hrda.HR_LOSS_WEIGHT, (int, float)) and isinstance(hrda.LR_LOSS_WEIGHT, (int, float)) and \
            hrda.HR_LOSS_WEIGHT + hrda.LR_LOSS_WEIGHT > 1:
        p.add("MODEL.HRDA.HR_LOSS_WEIGHT", f"+ MODEL.HRDA.LR_LOSS_WEIGHT = {hrda.HR_LOSS_WEIGHT + hrda.LR_LOSS_WEIGHT:g} "
              f"> 1 (the fused loss would get a negative weight)", "keep their sum <= 1 (the paper: 0.1 + 0)")
    defaults = _defaults()
    if cfg.SOLVER.OPTIMIZER == "ADAMW":
        for key in ("SOLVER.MOMENTUM", "SOLVER.NESTEROV"):
            if _get(cfg, key) != _get(defaults, key):
                p.add(key, "is read by SOLVER.OPTIMIZER 'SGD' only, and SOLVER.OPTIMIZER is 'ADAMW'",
                      "set SOLVER.BETAS for AdamW, or SOLVER.OPTIMIZER SGD")
    method = _method(cfg)
    if method is None:
        return
    if cfg.UDA.MIC.ENABLED and method not in MIC_METHODS:
        p.add("UDA.MIC.ENABLED", f"needs a method with target pseudo-labels (MIC trains on a teacher's pseudo-labels: "
              f"DACS's, or its own EMA teacher's with {' / '.join(MIC_WITH_OWN_TEACHER)}), and the method is "
              f"{method!r}", f"set UDA.METHOD to one of {', '.join(MIC_METHODS)}, or UDA.MIC.ENABLED False")
    top, bottom, margins = cfg.UDA.PSEUDO_WEIGHT_IGNORE_TOP, cfg.UDA.PSEUDO_WEIGHT_IGNORE_BOTTOM, \
        list(cfg.INPUT.TARGET.PSEUDO_MARGINS)
    if (method == SELF_TRAINING or cfg.UDA.MIC.ENABLED) and (top or bottom) and margins:  # uda/pseudo_labels.py
        p.add("UDA.PSEUDO_WEIGHT_IGNORE_TOP", f"(and _BOTTOM={bottom!r}) ignores pseudo-label rows while "
              f"INPUT.TARGET.PSEUDO_MARGINS={margins} masks the margins", "use one of the two: the rows 0 or the "
              "margins []")
    if cfg.DATASETS.RCS.ENABLED and method != "target_only" and len(cfg.DATASETS.SOURCE) != 1:  # data/build.py
        p.add("DATASETS.RCS.ENABLED", f"rare class sampling draws from one source split, DATASETS.SOURCE has "
              f"{len(cfg.DATASETS.SOURCE)}", "give one source split, or set DATASETS.RCS.ENABLED False")
    if cfg.UDA.FD.ALL_SCALES and len(cfg.MODEL.HRDA.SCALES) != 2:
        p.add("UDA.FD.ALL_SCALES", "the feature distance on every scale needs the two HRDA scales",
              "set MODEL.HRDA.SCALES [1.0, 0.5], or UDA.FD.ALL_SCALES False")
    if method in ("advseg", "minent") and len(cfg.MODEL.HRDA.SCALES) == 2 and cfg.MODEL.HRDA.FEATURE_SCALE != 0.5:
        p.add("MODEL.HRDA.FEATURE_SCALE", f"UDA.METHOD {method!r} with HRDA adapts the fused prediction resized to "
              f"half the input (the original asserts feature_scale 0.5)", "use 0.5")
    if cfg.UDA.MIC.ENABLED and cfg.UDA.MIC.MASK_TYPE == "tokens" and len(cfg.MODEL.HRDA.SCALES) != 1:
        p.add("UDA.MIC.MASK_TYPE", "token masking runs the backbone once on the whole image (one scale)",
              "set MODEL.HRDA.SCALES [1.0], or UDA.MIC.MASK_TYPE blocks")
    if method == VFM_UDA:
        _check_vfm(p, cfg)
    source_crop, target_crop = list(cfg.INPUT.SOURCE.CROP_SIZE), list(cfg.INPUT.TARGET.CROP_SIZE)
    if method in ("advseg", "minent") and len(cfg.MODEL.HRDA.SCALES) == 2 and not cfg.INPUT.SYNC_CROP_SIZE and \
            source_crop != target_crop:  # the model predicts each batch at its own size (docs/method.md §18.4)
        p.add("INPUT.TARGET.CROP_SIZE", f"{target_crop} differs from INPUT.SOURCE.CROP_SIZE {source_crop}: with HRDA, "
              f"UDA.METHOD {method!r} adapts the target prediction at half the SOURCE crop's size (the original's "
              f"rule), which hrda_d2 implements only for equal crops", "give both streams the same crop size")


def _check_vfm(p: _Problems, cfg: CfgNode) -> None:
    """The VFM-UDA iteration (hrda_d2/uda/vfm_step.py, docs/method.md §22)."""
    vfm = cfg.UDA.VFM
    if len(cfg.MODEL.HRDA.SCALES) != 1:
        p.add("MODEL.HRDA.SCALES", "UDA.METHOD 'vfm_uda' trains a single-scale model", "set MODEL.HRDA.SCALES [1.0]")
    if cfg.UDA.MIC.ENABLED:
        p.add("UDA.MIC.ENABLED", "UDA.METHOD 'vfm_uda' has its own masked pass (UDA.VFM.TOKEN_MASK_RATIO > 0, masking "
              "UDA.MIC.MASK_TYPE)", "set UDA.MIC.ENABLED False")
    if (vfm.FD_WEIGHT_SOURCE > 0) != (vfm.FD_WEIGHT_TARGET > 0):
        p.add("UDA.VFM.FD_WEIGHT_SOURCE", f"and UDA.VFM.FD_WEIGHT_TARGET={vfm.FD_WEIGHT_TARGET!r}: the original builds "
              f"the frozen DINOv2 only when both are > 0", "set both > 0 (VFM-UDA++: 0.1 / 0.1) or both 0")
    for stream in ("SOURCE", "TARGET"):
        if cfg.INPUT[stream].FLIP_PROB > 0:
            p.add(f"INPUT.{stream}.FLIP_PROB", f"{cfg.INPUT[stream].FLIP_PROB!r}: UDA.METHOD 'vfm_uda' flips the batches "
                  f"itself (UDA.VFM.FLIP, docs/method.md §22)", f"set INPUT.{stream}.FLIP_PROB 0.0")
    source_crop, target_crop = list(cfg.INPUT.SOURCE.CROP_SIZE), list(cfg.INPUT.TARGET.CROP_SIZE)
    if source_crop != target_crop or len(set(source_crop)) != 1:
        p.add("INPUT.TARGET.CROP_SIZE", f"{target_crop} with INPUT.SOURCE.CROP_SIZE {source_crop}: VFM-UDA mixes "
              f"square crops of one size (the originals assert h == w)", "give both streams the same square crop")


def _check_ignored_detectron2_keys(p: _Problems, cfg: CfgNode, defaults: Optional[CfgNode] = None) -> None:
    defaults = defaults or _defaults()
    for key, instead in IGNORED_DETECTRON2_KEYS.items():
        if _has(cfg, key) and _has(defaults, key) and _get(cfg, key) != _get(defaults, key):
            p.add(key, f"is a Detectron2 key that hrda_d2 does not read (the default is {_get(defaults, key)!r})",
                  f"use {instead}")


@functools.lru_cache(maxsize=1)
def _defaults() -> CfgNode:
    """``add_hrda_config(get_cfg())`` (built once; read only)."""
    return add_hrda_config(get_cfg())

