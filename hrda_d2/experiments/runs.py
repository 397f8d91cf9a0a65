"""What a run is (docs/experiments.md §1-3): a configuration of the original generator in its own words
(:class:`OriginalRow`), from which its name, the paper config it starts from and its config keys follow; a paper
item it belongs to; its seeds.

The HRDA / MIC ``experiments.py`` describe a run by a handful of variables (datasets, crop, UDA method string,
architecture string such as ``hrda1-512-0.1-fixedatt_daformer_sepaspp``, rare class sampling, synchronized crop,
pseudo-label crop, inference, optimizer, MIC mask). :class:`OriginalRow` holds exactly these (the seed aside); its
:attr:`~OriginalRow.stem` is the original's run name and :func:`row_overrides` the keys that do its job here, named
through the shared table of the original's settings (:mod:`hrda_d2.checkpoint.original_keys`).
"""
import functools
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from ..checkpoint.original_keys import ORIGINAL_OPTIMIZERS, original_key, uda_method_key
from ..config import MIC_MODE_NAMES

__all__ = ["Expected", "HRDAToken", "MaskSpec", "NOT_REPORTED", "OriginalRow", "PaperItem", "Reference", "Run",
           "RunConfig", "SEEDS", "base_config", "row_overrides"]

SEEDS = (0, 1, 2)  # every paper number is the mean over these three seeds
HRDA_OPTIONS = ("fixedatt", "nooverlap", "singleatt", "blurhr", "samescale")  # "sc<x>" is parsed apart (§2.2)
MIC_MODE_CODES = dict(zip(MIC_MODE_NAMES, ("sep", "spa", "sps", "spsa", "spt", "spta")))  # mask_mode -> run names
DEFAULT_LR = 6e-5


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------- the original's words
@dataclass(frozen=True)
class HRDAToken:
    """The ``hrda1-<hr crop>-<hr loss weight>[-<option>...]`` part of an architecture string."""

    hr_crop: int
    hr_loss_weight: float
    options: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for option in self.options:
            if option not in HRDA_OPTIONS and not (option.startswith("sc") and _is_number(option[2:])):
                raise ValueError(f"unknown HRDA architecture option {option!r}; known: {HRDA_OPTIONS} and sc<scale>")

    def __str__(self) -> str:
        return "-".join(["hrda1", str(self.hr_crop), f"{self.hr_loss_weight:g}", *self.options])

    def has(self, option: str) -> bool:
        return option in self.options

    @property
    def context_scale(self) -> float:
        """The context (LR) scale: 1.0 with ``samescale``, x with ``sc<x>``, else 0.5."""
        scale = 1.0 if self.has("samescale") else 0.5
        for option in self.options:
            if option.startswith("sc") and _is_number(option[2:]):
                scale = float(option[2:])
        return scale


@dataclass(frozen=True)
class MaskSpec:
    """MIC's masking of a run: ``mask_mode``, ``mask_block_size``, ``mask_ratio``, ``mask_lambda`` (teacher and
    pseudo-label threshold 'same' in every paper run)."""

    mode: str
    block_size: int
    ratio: float = 0.7
    lam: float = 1.0


@dataclass(frozen=True)
class OriginalRow:
    """A configuration of the original generator (one run per seed).

    Attributes (the generator's variables):
        source, target: dataset names (``gtaHR``, ``gta``, ``gtaCAug``, ``synthiaHR``, ``cityscapesHR``, ``acdcHR``,
            ``darkzurichHR``, ``cityscapes``; ``source=""`` for target-only runs).
        crop: side of the square training crop (512 is the "no crop tag" size of the names).
        uda: ``dacs_a999_fdthings`` (DAFormer's self-training), ``dacs``, ``advseg``, ``minent``, ``target-only``.
        decoder, backbone: ``daformer_sepaspp`` / ``mitb5`` or ``dlv2red`` / ``r101v1c``.
        hrda: the HRDA token, or None for a single-scale model.
        rcs_temperature, rcs_min_crop: rare class sampling (None = off) and its min crop ratio.
        sync_crop: side of the synchronized crop (None = off).
        plcrop: pseudo-label crop: False, True (v1: ignore top 15 / bottom 120 rows) or ``"v2"`` (margin mask).
        inference: ``slide`` or ``whole``; batched_slide: the test windows in one batch.
        opt, lr, pmult: optimizer (``adamw`` / ``sgd``), learning rate, head lr multiplier x10.
        mask: MIC's masking, or None.
        repo: ``hrda`` or ``mic``: the generator whose name replacements apply.
    """

    source: str
    target: str
    crop: int
    uda: str
    decoder: str = "daformer_sepaspp"
    backbone: str = "mitb5"
    hrda: Optional[HRDAToken] = None
    rcs_temperature: Optional[float] = None
    rcs_min_crop: float = 0.5
    sync_crop: Optional[int] = None
    plcrop: Union[bool, str] = False
    inference: str = "whole"
    batched_slide: bool = True
    opt: str = "adamw"
    lr: float = DEFAULT_LR
    pmult: bool = True
    mask: Optional[MaskSpec] = None
    repo: str = "hrda"

    @property
    def is_dacs(self) -> bool:
        """DACS-based self-training (``dacs`` in the method string): RCS, sync crop and plcrop apply."""
        return "dacs" in self.uda

    @property
    def outer_crop(self) -> int:
        """The crop the model is trained on: the synchronized crop if set, else the crop."""
        return self.sync_crop or self.crop

    @property
    def architecture(self) -> str:
        """The original's architecture string, e.g. ``hrda1-512-0.1_daformer_sepaspp``."""
        return f"{self.hrda}_{self.decoder}" if self.hrda else self.decoder

    def _uda_part(self) -> str:
        part = self.uda
        if self.is_dacs and self.rcs_temperature is not None:
            part += f"_rcs{self.rcs_temperature}" + (f"-{self.rcs_min_crop}" if self.rcs_min_crop != 0.5 else "")
        if self.is_dacs and self.sync_crop is not None:
            part += f"_sf{self.sync_crop}x{self.sync_crop}"
        if self.is_dacs or self.mask is not None:
            part += {True: "_cpl", "v1": "_cpl", "v2": "_cpl2"}.get(self.plcrop, "")
        if self.mask is not None:  # mask_alpha / mask_pseudo_threshold 'same' in every paper run: no a<..>/p<..>
            part += f"_m{self.mask.block_size}-{self.mask.ratio}-{MIC_MODE_CODES[self.mask.mode]}"
            part += f"-w{self.mask.lam}" if self.mask.lam != 1 else ""
        return part

    @property
    def stem(self) -> str:
        """The original's run name without ``_s<seed>`` (docs/experiments.md §2.1): the parts, then dots removed
        and ``True``/``False``/dataset names abbreviated (MIC also ``None`` -> ``N``, no brackets or spaces,
        ``,`` -> ``j``); without the timestamp and uuid that ``run_experiments.py`` adds."""
        crop_tag = "" if self.crop == 512 else f"_{self.crop}x{self.crop}"
        architecture = self.architecture + ("_sl" if self.inference == "slide" else "")
        name = f"{self.source}2{self.target}{crop_tag}_{self._uda_part()}_{architecture}_{self.backbone}_poly10warm"
        name += (f"_{self.opt}" if self.opt != "adamw" else "") + (f"_{self.lr}" if self.lr != DEFAULT_LR else "")
        name += f"_pm{self.pmult}" if not self.pmult else ""
        name = name.replace(".", "").replace("True", "T").replace("False", "F")
        if self.repo == "mic":
            name = name.replace("None", "N").replace("[", "").replace("]", "").replace(",", "j").replace(" ", "")
        return name.replace("cityscapes", "cs").replace("synthia", "syn").replace("darkzurich", "dzur")


# ---------------------------------------------------------------------------------------------- -> config keys
DLV2_BASE = "Base-DeepLabV2.yaml"  # the reduced DeepLabV2 head (res5 input, dilations 6, 12) on ResNet-101 V1c
DLV2_BACKBONE = "build_resnet_v1c_backbone"
DLV2_WEIGHTS = "pretrained/resnet101_v1c_d2.pth"  # the converted ImageNet ResNet-101 v1c

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
# the generator's method strings -> the original's uda.type (its configs/_base_/uda/<name>.py); target-only: none
_UDA_TYPES = {"advseg": "AdvSeg", "minent": "MinEnt", "dacs": "DACS", "dacs_a999_fdthings": "DACS"}
_OPTIMIZER_TYPES = {"adamw": "AdamW", "sgd": "SGD"}  # the generator's optimizer names (schedule base files)
_PLCROP_V2_MARGINS = [30, 240, 30, 30]  # docs/method.md §10.3
_PLCROP_V1_IGNORE = (15, 120)  # rows of the pseudo-label weight ignored at the top / bottom (legacy plcrop True)


def _domain(name: str) -> str:
    return name.replace("CAug", "")


def base_config(row: OriginalRow) -> str:
    """File name (in ``configs/``) of the paper config that ``row`` starts from."""
    if row.decoder == "dlv2red":
        return DLV2_BASE
    pair = (_domain(row.source), row.target)
    if row.mask is not None and row.hrda is not None and pair in _MIC_BASE_CONFIGS:
        return _MIC_BASE_CONFIGS[pair]
    if pair not in _BASE_CONFIGS:
        raise ValueError(f"no paper config for the datasets {row.source!r} -> {row.target!r}; add one to "
                         f"hrda_d2/experiments/runs.py _BASE_CONFIGS")
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
    source, target = "data.train.source.pipeline", "data.train.target.pipeline"
    out[original_key(f"{source}.Resize.img_scale")] = list(labelled_scale)
    out[original_key(f"{source}.RandomCrop.crop_size")] = crop
    out[original_key(f"{source}.RandomCrop.cat_max_ratio")] = 0.75
    if "CAug" in row.source:
        out[original_key(f"{source}.PhotoMetricDistortion")] = True
    out[original_key(f"{target}.Resize.img_scale")] = list(target_scale)
    out[original_key(f"{target}.RandomCrop.crop_size")] = crop
    if row.uda == "target-only":  # the oracle trains on the target stream with its labels (docs/method.md §18.8)
        out[original_key(f"{target}.RandomCrop.cat_max_ratio")] = 0.75
        out[original_key(f"{target}.PhotoMetricDistortion")] = True
    out[original_key("data.test.pipeline.MultiScaleFlipAug.img_scale")] = list(target_scale)
    out[original_key("data.train.sync_crop_size")] = [row.sync_crop] * 2 if row.is_dacs and row.sync_crop else []
    rcs = row.is_dacs and row.rcs_temperature is not None
    out["DATASETS.RCS.ENABLED"] = rcs
    if rcs:
        out[original_key("data.train.rare_class_sampling.class_temp")] = float(row.rcs_temperature)
        out[original_key("data.train.rare_class_sampling.min_pixels")] = 3000
        out[original_key("data.train.rare_class_sampling.min_crop_ratio")] = float(row.rcs_min_crop)


def _model(row: OriginalRow, out: Dict[str, Any]) -> None:
    if row.backbone == "r101v1c":
        out["MODEL.BACKBONE.NAME"] = DLV2_BACKBONE
        out[original_key("model.backbone.depth")] = 101
        out["MODEL.WEIGHTS"] = DLV2_WEIGHTS
        # the 'norm' decay_mult 0 is added for MiT only
        out[original_key("optimizer.paramwise_cfg.custom_keys.norm.decay_mult")] = 1.0
    elif row.backbone != "mitb5":
        raise ValueError(f"unknown backbone {row.backbone!r} (mitb5 or r101v1c)")
    if row.decoder == "dlv2red":
        out["MODEL.SEM_SEG_HEAD.NAME"] = "DLV2Head"
    elif row.decoder != "daformer_sepaspp":
        raise ValueError(f"unknown decoder {row.decoder!r} (daformer_sepaspp or dlv2red)")
    token = row.hrda
    if token is None:
        out[original_key("model.scales")] = [1.0]
        return
    # docs/method.md §5.4 (generator rule): an outer crop equal to the detail crop trains the context logits too
    # (LR loss weight = HR loss weight) and, with the feature distance, compares the features of every scale
    same_crop = row.outer_crop == token.hr_crop
    all_scales = same_crop and "_fd" in row.uda  # feature_scale='all': the FD on every scale (UDA.FD.ALL_SCALES)
    context = token.context_scale
    feature_scale: Any = 1.0 if token.has("samescale") else (0.5 if context in (0.5, 1.0) else context)
    if all_scales:
        feature_scale = context  # unused by the FD on all scales; any scale of MODEL.HRDA.SCALES
    out["UDA.FD.ALL_SCALES"] = all_scales
    head = "model.decode_head"
    out[original_key("model.scales")] = [1.0, context]
    out[original_key("model.hr_crop_size")] = [token.hr_crop, token.hr_crop]
    out[original_key(f"{head}.hr_loss_weight")] = float(token.hr_loss_weight)
    out[original_key(f"{head}.lr_loss_weight")] = float(token.hr_loss_weight) if same_crop else 0.0
    out[original_key("model.feature_scale")] = feature_scale
    out[original_key(f"{head}.fixed_attention")] = 0.5 if token.has("fixedatt") else None
    out[original_key("model.hr_slide_overlapping")] = not token.has("nooverlap")
    out[original_key("model.blur_hr_crop")] = token.has("blurhr")
    out[original_key(f"{head}.attention_classwise")] = not token.has("singleatt")


def _method(row: OriginalRow, out: Dict[str, Any]) -> None:
    if row.uda == "target-only":  # no uda dict: supervised on the target stream (docs/method.md §18.8)
        out[original_key("uda.type")] = "target_only"
    elif row.uda in ("advseg", "minent"):
        out[original_key("uda.type")] = uda_method_key(_UDA_TYPES[row.uda])
    elif row.uda == "dacs":  # DACS without DAFormer's additions [facts: configs/_base_/uda/dacs.py]
        out[original_key("uda.alpha")] = 0.99
        out[original_key("uda.imnet_feature_dist_lambda")] = 0.0
    elif row.uda != "dacs_a999_fdthings":  # the defaults (docs/method.md §14)
        raise ValueError(f"unknown UDA method {row.uda!r}")
    # the pseudo-label crop applies to DACS (and MIC) runs only: v2 = margin mask, v1 = ignored weight rows
    applies = row.is_dacs or row.mask is not None
    out[original_key("data.train.target.crop_pseudo_margins")] = (list(_PLCROP_V2_MARGINS) if applies
                                                                  and row.plcrop == "v2" else [])
    if applies:
        top, bottom = _PLCROP_V1_IGNORE if row.plcrop is True or row.plcrop == "v1" else (0, 0)
        out[original_key("uda.pseudo_weight_ignore_top")] = top
        out[original_key("uda.pseudo_weight_ignore_bottom")] = bottom
    out["UDA.MIC.ENABLED"] = row.mask is not None
    if row.mask is not None:
        out[original_key("uda.mask_mode")] = row.mask.mode
        out[original_key("uda.mask_generator.mask_block_size")] = int(row.mask.block_size)
        out[original_key("uda.mask_generator.mask_ratio")] = float(row.mask.ratio)
        out[original_key("uda.mask_lambda")] = float(row.mask.lam)


def _test(row: OriginalRow, out: Dict[str, Any]) -> None:
    out[original_key("model.test_cfg.mode")] = row.inference
    if row.inference == "slide":  # the window of the training (sync) crop, stride half of it
        window = row.outer_crop
        out[original_key("model.test_cfg.crop_size")] = [window, window]
        out[original_key("model.test_cfg.stride")] = [window // 2, window // 2]
        out[original_key("model.test_cfg.batched_slide")] = bool(row.batched_slide)


def _solver(row: OriginalRow, out: Dict[str, Any]) -> None:
    if row.opt not in _OPTIMIZER_TYPES:
        raise ValueError(f"unknown optimizer {row.opt!r} (adamw or sgd)")
    out[original_key("optimizer.type")] = ORIGINAL_OPTIMIZERS[_OPTIMIZER_TYPES[row.opt]]
    if row.opt == "sgd":  # [facts: configs/_base_/schedules/sgd.py] momentum 0.9 (Detectron2's default), wd 5e-4
        out[original_key("optimizer.weight_decay")] = 0.0005
    out[original_key("optimizer.lr")] = float(row.lr)
    out[original_key("optimizer.paramwise_cfg.custom_keys.head.lr_mult")] = 10.0 if row.pmult else 1.0


def row_overrides(row: OriginalRow) -> "OrderedDict[str, Any]":
    """Every config key that defines ``row`` (the seed and OUTPUT_DIR aside), in a stable order."""
    out: "OrderedDict[str, Any]" = OrderedDict()
    for part in (_data, _model, _method, _test, _solver):
        part(row, out)
    return out


# ------------------------------------------------------------------------------------ paper items and runs
@dataclass(frozen=True)
class Expected:
    """The paper's number for a run configuration (``value`` None: not reported / not found)."""

    value: Optional[float] = None
    note: str = ""

    def __str__(self) -> str:
        text = "not reported" if self.value is None else f"{self.value:.1f}"
        return f"{text} ({self.note})" if self.note else text


NOT_REPORTED = Expected()


@dataclass(frozen=True)
class Reference:
    """A row of a table or a point of a figure that another run configuration provides (e.g. HRDA Table 7 row 6
    is the final HRDA of experiment 40)."""

    label: str
    exp: str
    stem: str
    x: Optional[float] = None


@dataclass(frozen=True)
class PaperItem:
    """A table or figure of a paper.

    key: file-name stem of its collected table (``hrda_table7``); title: what it shows; figure: the curve drawn for
    it (``"crop_size"``, ``"hr_loss_weight"``) or None; x_label: the curve's x axis; references: rows it shares
    with other run configurations; note: what is known about rows that are not generated.
    """

    key: str
    title: str
    figure: Optional[str] = None
    x_label: str = ""
    references: Tuple[Reference, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class RunConfig:
    """One configuration of an experiment: a row of its paper item, run once per seed.

    exp: experiment id (``44``, ``mic80``, ``dinov2``); row: the original generator's configuration (None for this
    project's own runs, which are ``project_config``: a file of ``configs/`` (or of its subfolder ``config_folder``)
    without ``.yaml``); label: the row's
    name in the paper item; metric: the number the paper reports (``mIoU`` or ``mIoU16``); original_gpu: the GPU
    the original generator assigned (memory class, docs/experiments.md §6); gpus: GPUs of one run; x, series: the
    point on the paper item's curve.
    """

    exp: str
    item: PaperItem
    label: str
    row: Optional[OriginalRow] = None
    project_config: str = ""
    config_folder: str = ""
    expected: Expected = NOT_REPORTED
    metric: str = "mIoU"
    original_gpu: Optional[str] = None
    gpus: int = 1
    x: Optional[float] = None
    series: str = ""
    seeds: Tuple[int, ...] = SEEDS

    @property
    def stem(self) -> str:
        """The run name without ``_s<seed>``."""
        return self.row.stem if self.row else self.project_config

    @property
    def base(self) -> str:
        """The paper config (``configs/<base>``) the run starts from."""
        return base_config(self.row) if self.row else os.path.join(self.config_folder, f"{self.project_config}.yaml")

    @functools.cached_property
    def overrides(self) -> Mapping[str, Any]:
        """Every key that defines the run beyond its base (this project's runs: none)."""
        return row_overrides(self.row) if self.row else {}

    def runs(self) -> List["Run"]:
        return [Run(self, seed) for seed in self.seeds]


@dataclass(frozen=True)
class Run:
    """A run configuration with its seed; its name is ``<stem>_s<seed>``."""

    config: RunConfig
    seed: int

    @property
    def name(self) -> str:
        return f"{self.config.stem}_s{self.seed}"

    @property
    def exp(self) -> str:
        return self.config.exp

