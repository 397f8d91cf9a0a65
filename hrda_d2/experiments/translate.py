"""An original generator row -> this project's config: the paper config it starts from and the keys that define it.

Each field of :class:`~.rows.OriginalRow` maps to the keys that do its job here (docs/experiments.md §3 lists the
mapping with the original fields; the behaviour of each key is docs/method.md's). :func:`row_overrides` returns
every defining key, also those equal to the base config's value; the generator writes only the differences.

Keys that this checkout may not have yet are written under the names agreed with the work on DeepLabV2 / AdvSeg /
MinEnt / SGD / target-only training (the constants below); :mod:`.requirements` reports a run that needs a missing
key instead of writing it.
"""
from collections import OrderedDict
from typing import Any, Dict, Tuple

from .rows import OriginalRow

__all__ = ["DLV2_BACKBONE", "DLV2_HEAD", "DLV2_WEIGHTS", "UDA_METHOD_KEY", "PHOTOMETRIC_KEY", "base_config",
           "row_overrides"]

# names for the DeepLabV2 (ResNet-101 v1c, reduced DLV2 head) rows of HRDA Table 2 / MIC Table 1
DLV2_BACKBONE = "build_resnet_v1c_backbone"
DLV2_HEAD = "DLV2Head"
DLV2_BASE = "Base-DeepLabV2.yaml"  # head inputs (res5) and dilations (6, 12) of the original's dlv2red
DLV2_WEIGHTS = "pretrained/resnet101_v1c_d2.pth"  # the converted ImageNet ResNet-101 v1c
UDA_METHOD_KEY = "UDA.METHOD"  # dacs | advseg | minent | source_only | target_only
PHOTOMETRIC_KEY = "INPUT.SOURCE.PHOTOMETRIC_DISTORTION"  # mmseg PhotoMetricDistortion on the source images
TARGET_PHOTOMETRIC_KEY = "INPUT.TARGET.PHOTOMETRIC_DISTORTION"  # ... on the target-only oracle's images
FD_ALL_SCALES_KEY = "UDA.FD.ALL_SCALES"  # the original's feature_scale='all' (docs/method.md §7.2 step 5)

# generator dataset name -> (split, keep-ratio rescale [long, short]) [docs/method.md §10.1 table; facts of the
# dataset base files]; "CAug" = the same data with PhotoMetricDistortion
_DATASETS: Dict[str, Tuple[str, Tuple[int, int]]] = {
    "gta": ("gta_train", (1280, 720)),
    "gtaHR": ("gta_train", (2560, 1440)),
    "synthiaHR": ("synthia_train", (2560, 1520)),
    "cityscapes": ("cityscapes_fine_sem_seg_train", (1024, 512)),
    "cityscapesHR": ("cityscapes_fine_sem_seg_train", (2048, 1024)),
    "acdcHR": ("acdc_train", (1920, 1080)),
    "darkzurichHR": ("darkzurich_train", (1920, 1080)),
}
_VAL_SPLITS = {"cityscapes_fine_sem_seg_train": "cityscapes_fine_sem_seg_val", "acdc_train": "acdc_val",
               "darkzurich_train": "darkzurich_val"}

# (labelled, unlabelled) domain pair (CAug stripped, HR kept) -> the paper config the run starts from
_BASE_CONFIGS = {
    ("gtaHR", "cityscapesHR"): "gtaHR2csHR_hrda.yaml",
    ("synthiaHR", "cityscapesHR"): "synthiaHR2csHR_hrda.yaml",
    ("cityscapesHR", "acdcHR"): "csHR2acdcHR_hrda.yaml",
    ("cityscapesHR", "darkzurichHR"): "csHR2dzurHR_hrda.yaml",
    ("gta", "cityscapes"): "gta2cs_daformer.yaml",
    ("", "cityscapes"): "gta2cs_daformer.yaml",  # target-only at Cityscapes' half resolution
    ("", "cityscapesHR"): "gtaHR2csHR_hrda.yaml",  # target-only at full resolution
}
_MIC_BASE_CONFIGS = {
    ("gtaHR", "cityscapesHR"): "gtaHR2csHR_mic_hrda.yaml",
    ("synthiaHR", "cityscapesHR"): "synthiaHR2csHR_mic_hrda.yaml",
    ("cityscapesHR", "acdcHR"): "csHR2acdcHR_mic_hrda.yaml",
    ("cityscapesHR", "darkzurichHR"): "csHR2dzurHR_mic_hrda.yaml",
}
_METHODS = {"advseg": "advseg", "minent": "minent", "target-only": "target_only"}
_PLCROP_V2_MARGINS = [30, 240, 30, 30]  # docs/method.md §10.3
_PLCROP_V1_IGNORE = (15, 120)  # rows of the pseudo-label weight ignored at the top / bottom (legacy plcrop True)


def _domain(name: str) -> str:
    return name.replace("CAug", "")


def base_config(row: OriginalRow) -> str:
    """File name (in ``configs/``) of the paper config that ``row`` starts from."""
    if row.decoder == "dlv2red":  # the reduced DeepLabV2 head on ResNet-101 V1c, every dataset pair
        return DLV2_BASE
    pair = (_domain(row.source), row.target)
    if row.mask is not None and row.hrda is not None and pair in _MIC_BASE_CONFIGS:
        return _MIC_BASE_CONFIGS[pair]
    if pair not in _BASE_CONFIGS:
        raise ValueError(f"no paper config for the datasets {row.source!r} -> {row.target!r}; add one to "
                         f"hrda_d2/experiments/translate.py _BASE_CONFIGS")
    return _BASE_CONFIGS[pair]


def _data(row: OriginalRow, out: Dict[str, Any]) -> None:
    crop = [row.crop, row.crop]
    target_split, target_scale = _DATASETS[row.target]
    if row.uda == "target-only":  # supervised on the target's labelled train split
        labelled_split, labelled_scale = target_split, target_scale
    else:
        labelled_split, labelled_scale = _DATASETS[_domain(row.source)]
    out["DATASETS.SOURCE"] = [labelled_split]
    out["DATASETS.TARGET"] = [target_split]
    out["DATASETS.TEST"] = [_VAL_SPLITS[target_split]]
    out["INPUT.SOURCE.SCALE"] = list(labelled_scale)
    out["INPUT.SOURCE.CROP_SIZE"] = crop
    out["INPUT.SOURCE.CAT_MAX_RATIO"] = 0.75
    if "CAug" in row.source:
        out[PHOTOMETRIC_KEY] = True
    out["INPUT.TARGET.SCALE"] = list(target_scale)
    out["INPUT.TARGET.CROP_SIZE"] = crop
    if row.uda == "target-only":  # the oracle trains on the target stream with its labels (docs/method.md §18.8)
        out["INPUT.TARGET.CAT_MAX_RATIO"] = 0.75
        out[TARGET_PHOTOMETRIC_KEY] = True
    out["INPUT.TEST.SCALE"] = list(target_scale)
    out["INPUT.SYNC_CROP_SIZE"] = [row.sync_crop] * 2 if row.is_dacs and row.sync_crop else []
    rcs = row.is_dacs and row.rcs_temperature is not None
    out["DATASETS.RCS.ENABLED"] = rcs
    if rcs:
        out["DATASETS.RCS.CLASS_TEMP"] = float(row.rcs_temperature)
        out["DATASETS.RCS.MIN_PIXELS"] = 3000
        out["DATASETS.RCS.MIN_CROP_RATIO"] = float(row.rcs_min_crop)


def _model(row: OriginalRow, out: Dict[str, Any]) -> None:
    if row.backbone == "r101v1c":
        out["MODEL.BACKBONE.NAME"] = DLV2_BACKBONE
        out["MODEL.RESNETS.DEPTH"] = 101
        out["MODEL.WEIGHTS"] = DLV2_WEIGHTS
        out["SOLVER.BACKBONE_NORM_DECAY_MULTIPLIER"] = 1.0  # the 'norm' decay_mult 0 is added for MiT only
    elif row.backbone != "mitb5":
        raise ValueError(f"unknown backbone {row.backbone!r} (mitb5 or r101v1c)")
    if row.decoder == "dlv2red":
        out["MODEL.SEM_SEG_HEAD.NAME"] = DLV2_HEAD
    elif row.decoder != "daformer_sepaspp":
        raise ValueError(f"unknown decoder {row.decoder!r} (daformer_sepaspp or dlv2red)")
    token = row.hrda
    if token is None:
        out["MODEL.HRDA.SCALES"] = [1.0]
        return
    # docs/method.md §5.4 (generator rule): an outer crop equal to the detail crop trains the context logits too
    # (LR loss weight = HR loss weight) and, with the feature distance, compares the features of every scale
    same_crop = row.outer_crop == token.hr_crop
    all_scales = same_crop and "_fd" in row.uda  # feature_scale='all': the FD on every scale (UDA.FD.ALL_SCALES)
    context = token.context_scale
    feature_scale: Any = 1.0 if token.has("samescale") else (0.5 if context in (0.5, 1.0) else context)
    if all_scales:
        feature_scale = context  # unused by the FD on all scales; any scale of MODEL.HRDA.SCALES
    out[FD_ALL_SCALES_KEY] = all_scales
    out["MODEL.HRDA.SCALES"] = [1.0, context]
    out["MODEL.HRDA.HR_CROP_SIZE"] = [token.hr_crop, token.hr_crop]
    out["MODEL.HRDA.HR_LOSS_WEIGHT"] = float(token.hr_loss_weight)
    out["MODEL.HRDA.LR_LOSS_WEIGHT"] = float(token.hr_loss_weight) if same_crop else 0.0
    out["MODEL.HRDA.FEATURE_SCALE"] = feature_scale
    out["MODEL.HRDA.FIXED_ATTENTION"] = 0.5 if token.has("fixedatt") else None
    out["MODEL.HRDA.HR_SLIDE_OVERLAPPING"] = not token.has("nooverlap")
    out["MODEL.HRDA.BLUR_HR_CROP"] = token.has("blurhr")
    out["MODEL.HRDA.ATTENTION_CLASSWISE"] = not token.has("singleatt")


def _method(row: OriginalRow, out: Dict[str, Any]) -> None:
    if row.uda in _METHODS:
        out[UDA_METHOD_KEY] = _METHODS[row.uda]
    elif row.uda == "dacs":  # DACS without DAFormer's additions [facts: configs/_base_/uda/dacs.py]
        out["UDA.ALPHA"] = 0.99
        out["UDA.FD.LAMBDA"] = 0.0
    elif row.uda != "dacs_a999_fdthings":  # the defaults (docs/method.md §14)
        raise ValueError(f"unknown UDA method {row.uda!r}")
    # the pseudo-label crop applies to DACS (and MIC) runs only: v2 = margin mask, v1 = ignored weight rows
    applies = row.is_dacs or row.mask is not None
    out["INPUT.TARGET.PSEUDO_MARGINS"] = list(_PLCROP_V2_MARGINS) if applies and row.plcrop == "v2" else []
    if applies:
        top, bottom = _PLCROP_V1_IGNORE if row.plcrop is True or row.plcrop == "v1" else (0, 0)
        out["UDA.PSEUDO_WEIGHT_IGNORE_TOP"] = top
        out["UDA.PSEUDO_WEIGHT_IGNORE_BOTTOM"] = bottom
    out["UDA.MIC.ENABLED"] = row.mask is not None
    if row.mask is not None:
        out["UDA.MIC.MODE"] = row.mask.mode
        out["UDA.MIC.BLOCK_SIZE"] = int(row.mask.block_size)
        out["UDA.MIC.MASK_RATIO"] = float(row.mask.ratio)
        out["UDA.MIC.LAMBDA"] = float(row.mask.lam)


def _test(row: OriginalRow, out: Dict[str, Any]) -> None:
    out["TEST.MODE"] = row.inference
    if row.inference == "slide":  # the window of the training (sync) crop, stride half of it
        window = row.outer_crop
        out["TEST.SLIDE.CROP_SIZE"] = [window, window]
        out["TEST.SLIDE.STRIDE"] = [window // 2, window // 2]
        out["TEST.SLIDE.BATCHED"] = bool(row.batched_slide)


def _solver(row: OriginalRow, out: Dict[str, Any]) -> None:
    if row.opt == "sgd":  # [facts: configs/_base_/schedules/sgd.py] momentum 0.9 (Detectron2's default), wd 5e-4
        out["SOLVER.OPTIMIZER"] = "SGD"
        out["SOLVER.WEIGHT_DECAY"] = 0.0005
    elif row.opt == "adamw":
        out["SOLVER.OPTIMIZER"] = "ADAMW"
    else:
        raise ValueError(f"unknown optimizer {row.opt!r} (adamw or sgd)")
    out["SOLVER.BASE_LR"] = float(row.lr)
    out["SOLVER.HEAD_LR_MULTIPLIER"] = 10.0 if row.pmult else 1.0


def row_overrides(row: OriginalRow) -> "OrderedDict[str, Any]":
    """Every config key that defines ``row`` (the seed and OUTPUT_DIR aside), in a stable order."""
    out: "OrderedDict[str, Any]" = OrderedDict()
    _data(row, out)
    _model(row, out)
    _method(row, out)
    _test(row, out)
    _solver(row, out)
    return out
