"""The paper experiments: the original generators' ids 40, 41, 42, 43, 44, 49 (HRDA), ``mic80`` / ``mic81`` (MIC's
ids 80 / 81) and this project's ``dinov2`` and ``vfm_uda`` (docs/experiments.md §1).

Each id lists its run configurations in the original generator's order (the seed loop innermost, seeds 0, 1, 2), so
that the runs, their names and their count are those of the original (lhoyer/HRDA ``experiments.py``, lhoyer/MIC
``seg/experiments.py``, ``generate_experiment_cfgs``). Paper numbers are given where a stored source states them;
every other cell says "not reported".
"""
from typing import Callable, Dict, List, Optional

from .runs import NOT_REPORTED, Expected, HRDAToken, MaskSpec, OriginalRow, PaperItem, Reference, RunConfig

__all__ = ["EXPERIMENT_IDS", "experiment", "find_config"]

TITAN_RTX, RTX_2080_TI = "NVIDIATITANRTX", "NVIDIAGeForceRTX2080Ti"  # the original's gpu_model values
FINAL_HRDA = HRDAToken(512, 0.1)


def _dacs_hr(**fields) -> OriginalRow:
    """DAFormer self-training on GTA (2560x1440) -> Cityscapes (2048x1024), 1024 crops, RCS (T 0.01, min crop 2.0),
    plcrop v2, slide inference: the setting of every HRDA experiment unless it says otherwise."""
    defaults = dict(source="gtaHR", target="cityscapesHR", crop=1024, uda="dacs_a999_fdthings", rcs_temperature=0.01,
                    rcs_min_crop=2.0, plcrop="v2", inference="slide")
    return OriginalRow(**{**defaults, **fields})


def _dacs_lr(**fields) -> OriginalRow:
    """The same at half resolution (GTA 1280x720 -> Cityscapes 1024x512, 512 crops, RCS min crop 0.5)."""
    return _dacs_hr(**{"source": "gta", "target": "cityscapes", "crop": 512, "rcs_min_crop": 0.5, **fields})


def _config(exp: str, row: OriginalRow, item: PaperItem, label: str, gpu: str, expected: Expected = NOT_REPORTED,
            metric: str = "mIoU", x: Optional[float] = None, series: str = "") -> RunConfig:
    return RunConfig(exp=exp, item=item, label=label, row=row, expected=expected, metric=metric, original_gpu=gpu,
                     x=x, series=series)


# ------------------------------------------------------------------------------------------------ HRDA 40
_TABLE1 = PaperItem("hrda_table1", "HRDA Table 1: HRDA (MiT-B5) on GTA->Cityscapes and Synthia->Cityscapes (val)")


def _exp40() -> List[RunConfig]:
    return [
        _config("40", _dacs_hr(hrda=FINAL_HRDA), _TABLE1, "GTA->Cityscapes", TITAN_RTX,
                Expected(73.8, "HRDA README, abstract; released checkpoint 73.79")),
        _config("40", _dacs_hr(source="synthiaHR", hrda=FINAL_HRDA), _TABLE1, "Synthia->Cityscapes", TITAN_RTX,
                Expected(65.8, "mIoU16; HRDA README, abstract"), metric="mIoU16"),
    ]


# ------------------------------------------------------------------------------------------------ HRDA 41
_TABLE2 = PaperItem("hrda_table2", "HRDA Table 2: HRDA with other UDA methods (DeepLabV2 ResNet-101, GTA->Cityscapes, "
                                   "whole-image inference)")


def _exp41() -> List[RunConfig]:
    configs = []
    sgd = dict(opt="sgd", lr=0.0025, pmult=False)
    methods = [("AdvSeg", "advseg", "gtaCAug", sgd, {}), ("MinEnt", "minent", "gtaCAug", sgd, {}),
               ("DACS", "dacs", "gta", {}, {}),
               ("DAFormer self-training", "dacs_a999_fdthings", "gta", {}, dict(rcs_temperature=0.01, plcrop="v2"))]
    for label, uda, source, opt, extra in methods:
        for hr in (False, True):
            row = OriginalRow(
                source=source + ("HR" if hr else ""), target="cityscapesHR" if hr else "cityscapes",
                crop=1024 if hr else 512, uda=uda, decoder="dlv2red", backbone="r101v1c",
                hrda=FINAL_HRDA if hr else None, rcs_min_crop=2.0 if hr and extra else 0.5, **opt, **extra)
            configs.append(_config("41", row, _TABLE2, f"{label}{' + HRDA' if hr else ''}",
                                   TITAN_RTX if hr else RTX_2080_TI))
    return configs


# ---------------------------------------------------------------------------------------------- HRDA 42, 43
_FIG4_UDA = PaperItem("hrda_fig4_uda", "HRDA Fig. 4 (left): crop size of DAFormer self-training at low (LR) and high "
                                       "(HR) resolution", figure="crop_size", x_label="relative crop size")
_FIG4_ORACLE = PaperItem("hrda_fig4_oracle", "HRDA Fig. 4 (right): crop size of the target-only oracle (Cityscapes "
                                             "train, supervised)", figure="crop_size", x_label="relative crop size")
_LR, _HR = "LR (Cityscapes 1024x512)", "HR (Cityscapes 2048x1024)"


def _exp42() -> List[RunConfig]:
    configs = []
    for hr, syncs in ((False, (128, 256, 384, None)), (True, (256, 512, 768))):
        full = 1024 if hr else 512
        for sync in syncs:
            row = (_dacs_hr if hr else _dacs_lr)(sync_crop=sync, batched_slide=not (hr and sync == 256))
            relative = (sync or full) / full
            configs.append(_config("42", row, _FIG4_UDA, f"{'HR' if hr else 'LR'} crop {sync or full} "
                                   f"({relative:g})", TITAN_RTX if (sync or full) >= 768 else RTX_2080_TI,
                                   x=relative, series=_HR if hr else _LR))
    return configs


def _exp43() -> List[RunConfig]:
    configs = []
    for hr, crops in ((False, (128, 256, 384, 512)), (True, (256, 512, 768))):
        full = 1024 if hr else 512
        for crop in crops:
            row = OriginalRow(source="", target="cityscapesHR" if hr else "cityscapes", crop=crop, uda="target-only",
                              inference="slide")
            configs.append(_config("43", row, _FIG4_ORACLE, f"{'HR' if hr else 'LR'} crop {crop} ({crop / full:g})",
                                   TITAN_RTX if crop >= 768 else RTX_2080_TI, x=crop / full,
                                   series=_HR if hr else _LR))
    return configs


# ------------------------------------------------------------------------------------------------ HRDA 44
_STEM_40_GTA = _dacs_hr(hrda=FINAL_HRDA).stem
_STEM_TABLE7_ROW5 = _dacs_hr(hrda=HRDAToken(512, 0.0)).stem
_STEM_TABLE3_ROW1 = _dacs_hr(hrda=FINAL_HRDA, sync_crop=512).stem
_TABLE3 = PaperItem("hrda_table3", "HRDA Table 3: context crop size (LR = context, HR = detail, relative to the "
                                   "1024 crop)")
_TABLE4 = PaperItem("hrda_table4", "HRDA Table 4: detail crop size")
_TABLE5 = PaperItem("hrda_table5", "HRDA Table 5: comparison with a naive HR crop of the same size")
_TABLE6 = PaperItem("hrda_table6", "HRDA Table 6: where the detail crop comes from")
_TABLE7 = PaperItem("hrda_table7", "HRDA Table 7: component ablation (detail loss weight 0 unless stated)",
                    references=(Reference("row 6: full HRDA (exp 40)", "40", _STEM_40_GTA),),
                    note="rows 1-2 are single-resolution runs of exp 42 (which ones: not recorded)")
_FIG_S1 = PaperItem("hrda_figS1", "HRDA Fig. S1: detail loss weight lambda_d", figure="hr_loss_weight",
                    x_label="detail loss weight lambda_d",
                    references=(Reference("lambda_d 0 (Table 7 row 5)", "44", _STEM_TABLE7_ROW5, x=0.0),
                                Reference("lambda_d 0.1 (exp 40)", "40", _STEM_40_GTA, x=0.1)))
_TABLE_S1 = PaperItem("hrda_tableS1", "HRDA Table S1: context crop resolution s_c (context scale 1/s_c, 512 "
                                      "synchronized crops)",
                      references=(Reference("s_c 2 (Table 3 LR0.5+HR0.5)", "44", _STEM_TABLE3_ROW1),))


def _exp44() -> List[RunConfig]:
    def add(item: PaperItem, label: str, row: OriginalRow, x: Optional[float] = None) -> None:
        configs.append(_config("44", row, item, label, TITAN_RTX, x=x, series="HRDA" if x is not None else ""))

    configs: List[RunConfig] = []
    add(_TABLE3, "LR0.5+HR0.5", _dacs_hr(hrda=FINAL_HRDA, sync_crop=512))
    add(_TABLE3, "LR0.75+HR0.5", _dacs_hr(hrda=FINAL_HRDA, sync_crop=768))
    add(_TABLE4, "LR1.0+HR0.25", _dacs_hr(hrda=HRDAToken(256, 0.1)))
    add(_TABLE4, "LR1.0+HR0.375", _dacs_hr(hrda=HRDAToken(384, 0.1)))
    add(_TABLE5, "LR0.75+HR0.375", _dacs_hr(hrda=HRDAToken(384, 0.1), sync_crop=768))
    add(_TABLE6, "LR1.0+LR0.5 (samescale, 512 crops)", _dacs_lr(hrda=HRDAToken(256, 0.1, ("samescale",))))
    add(_TABLE6, "LR1.0+Up-LR0.5 (blurred detail crop)", _dacs_hr(hrda=HRDAToken(512, 0.1, ("blurhr",))))
    add(_TABLE7, "row 3: fixed attention 0.5, no overlapping tiles",
        _dacs_hr(hrda=HRDAToken(512, 0.0, ("fixedatt", "nooverlap"))))
    add(_TABLE7, "row 4: no overlapping tiles", _dacs_hr(hrda=HRDAToken(512, 0.0, ("nooverlap",))))
    add(_TABLE7, "row 5: learned attention, overlapping tiles", _dacs_hr(hrda=HRDAToken(512, 0.0)))
    for weight in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
        add(_FIG_S1, f"lambda_d {weight:g}", _dacs_hr(hrda=HRDAToken(512, weight)), x=weight)
    add(_TABLE_S1, "s_c 4 (context scale 0.25)", _dacs_hr(hrda=HRDAToken(512, 0.1, ("sc0.25",)), sync_crop=512))
    add(_TABLE_S1, "s_c 1.33 (context scale 0.75)", _dacs_hr(hrda=HRDAToken(512, 0.1, ("sc0.75",)), sync_crop=512))
    return configs


# ------------------------------------------------------------------------------------------------ HRDA 49
_EXTENSION = PaperItem("hrda_acdc_darkzurich", "HRDA on Cityscapes->ACDC and Cityscapes->Dark Zurich (HRDA README; "
                                               "extension paper arXiv 2304.13615). Paper: test server; runs: val")


def _exp49() -> List[RunConfig]:
    test_server = "test server (this run reports val); HRDA README"
    return [
        _config("49", _dacs_hr(source="cityscapesHR", target="acdcHR", plcrop=False, hrda=FINAL_HRDA), _EXTENSION,
                "Cityscapes->ACDC", TITAN_RTX, Expected(68.0, test_server)),
        _config("49", _dacs_hr(source="cityscapesHR", target="darkzurichHR", plcrop=False, hrda=FINAL_HRDA),
                _EXTENSION, "Cityscapes->Dark Zurich", TITAN_RTX, Expected(55.9, test_server)),
    ]


# ------------------------------------------------------------------------------------------------- MIC 80
_MIC_TABLE2 = PaperItem("mic_table2", "MIC Table 2: MIC(HRDA) (MiT-B5) on four benchmarks")


def _exp_mic80() -> List[RunConfig]:
    def mic(source: str, target: str, mode: str, plcrop) -> OriginalRow:
        return _dacs_hr(source=source, target=target, plcrop=plcrop, hrda=FINAL_HRDA, mask=MaskSpec(mode, 64),
                        repo="mic")

    return [
        _config("mic80", mic("gtaHR", "cityscapesHR", "separatetrgaug", "v2"), _MIC_TABLE2, "GTA->Cityscapes",
                TITAN_RTX, Expected(75.9, "MIC README, abstract")),
        _config("mic80", mic("synthiaHR", "cityscapesHR", "separatetrgaug", "v2"), _MIC_TABLE2,
                "Synthia->Cityscapes", TITAN_RTX, Expected(None, "mIoU16; not found in the stored sources"),
                metric="mIoU16"),
        _config("mic80", mic("cityscapesHR", "acdcHR", "separate", False), _MIC_TABLE2, "Cityscapes->ACDC", TITAN_RTX,
                Expected(70.4, "test server; a third-party page only, unverified; this run reports val")),
        _config("mic80", mic("cityscapesHR", "darkzurichHR", "separate", False), _MIC_TABLE2,
                "Cityscapes->Dark Zurich", TITAN_RTX, Expected(None, "test server; not found in the stored sources")),
    ]


# ------------------------------------------------------------------------------------------------- MIC 81
_MIC_TABLE1 = PaperItem("mic_table1", "MIC Table 1: MIC with other UDA methods (GTA->Cityscapes)",
                        references=(Reference("MIC(HRDA), MiT-B5 (mic80)", "mic80",
                                                      _dacs_hr(hrda=FINAL_HRDA, mask=MaskSpec("separatetrgaug", 64),
                                                               repo="mic").stem),))


def _exp_mic81() -> List[RunConfig]:
    lr = dict(source="gta", target="cityscapes", crop=512, mask=MaskSpec("separatetrgaug", 32), repo="mic")
    dlv2 = dict(decoder="dlv2red", backbone="r101v1c")
    sgd = dict(opt="sgd", lr=0.0025, pmult=False)
    rows = [
        ("AdvSeg + MIC", OriginalRow(uda="advseg", **lr, **dlv2, **sgd)),
        ("MinEnt + MIC", OriginalRow(uda="minent", **lr, **dlv2, **sgd)),
        ("DACS + MIC", OriginalRow(uda="dacs", **lr, **dlv2)),
        ("DAFormer self-training + MIC", OriginalRow(uda="dacs_a999_fdthings", rcs_temperature=0.01, plcrop=True,
                                                     **lr, **dlv2)),
        ("HRDA + MIC", _dacs_hr(hrda=FINAL_HRDA, mask=MaskSpec("separatetrgaug", 64), repo="mic", **dlv2)),
        ("DAFormer (MiT-B5) + MIC", OriginalRow(uda="dacs_a999_fdthings", rcs_temperature=0.01, plcrop=True, **lr)),
    ]
    return [_config("mic81", row, _MIC_TABLE1, label, TITAN_RTX if row.hrda else RTX_2080_TI) for label, row in rows]


# ------------------------------------------------------------------------------------------ this project
_DINOV2 = PaperItem("ours_dinov2", "This project: HRDA and MIC(HRDA) with DINOv2 encoders on GTA->Cityscapes (not "
                                   "a published experiment)")
_DINOV2_CONFIGS = ("gtaHR2csHR_hrda_dinov2_vitb", "gtaHR2csHR_hrda_dinov2_vitl", "gtaHR2csHR_mic_hrda_dinov2_vitb",
                   "gtaHR2csHR_mic_hrda_dinov2_vitl")


def _exp_dinov2() -> List[RunConfig]:
    labels = {"hrda": "HRDA", "mic_hrda": "MIC(HRDA)"}
    configs = []
    for stem in _DINOV2_CONFIGS:
        method = "mic_hrda" if "_mic_" in stem else "hrda"
        encoder = "DINOv2 ViT-" + stem[-1].upper() + "/14"
        configs.append(RunConfig(exp="dinov2", item=_DINOV2, label=f"{labels[method]}, {encoder}",
                                 project_config=stem, gpus=4,
                                 expected=Expected(None, "no published number for this combination")))
    return configs


# ------------------------------------------------------------------------------- the VFM recipes (this project's id)
_VFM_UDA = PaperItem("vfm_uda", "VFM-UDA (CVPRW'24) and VFM-UDA++ (arXiv 2503.10685): DINOv2 recipes, Cityscapes val / "
                                "Dark Zurich val (configs/vfm_uda/; the published numbers are the originals' READMEs' "
                                "re-trained checkpoints)")
_VFM_README, _VFM_PP_README = "tue-mps/vfm-uda README, re-trained checkpoint", "tue-mps/vfm-uda-plusplus README, " \
                                                                              "re-trained checkpoint"
_VFM_CONFIGS = (
    ("gta2cs_vfm_uda_vitb", "VFM-UDA, ViT-B/14, GTA->Cityscapes", Expected(77.1, f"{_VFM_README}; WildDash 2: 60.8")),
    ("gta2cs_vfm_uda_vitl", "VFM-UDA, ViT-L/14, GTA->Cityscapes", Expected(78.4, f"{_VFM_README}; WildDash 2: 64.7")),
    ("gta2cs_vfm_uda_pp_vits", "VFM-UDA++, ViT-S/14, GTA->Cityscapes",
     Expected(None, "no config or number of the original stored here (its ViT-B config with ViT-S)")),
    ("gta2cs_vfm_uda_pp_vitb", "VFM-UDA++, ViT-B/14, GTA->Cityscapes",
     Expected(None, "the paper's number is not in a source stored here")),
    ("gta2cs_vfm_uda_pp_vitl", "VFM-UDA++, ViT-L/14, GTA->Cityscapes",
     Expected(79.8, f"{_VFM_PP_README}; WildDash 2: 69.0")),
    ("synthia2cs_vfm_uda_pp_vitb", "VFM-UDA++, ViT-B/14, Synthia->Cityscapes",
     Expected(69.7, f"{_VFM_PP_README}; WildDash 2: 56.1")),
    ("cs2dzur_vfm_uda_pp_vitl", "VFM-UDA++, ViT-L/14, Cityscapes->Dark Zurich",
     Expected(68.7, f"{_VFM_PP_README} (its 'Cityscapes (miou)' column of this row); WildDash 2: 70.3")),
)


def _exp_vfm_uda() -> List[RunConfig]:
    return [RunConfig(exp="vfm_uda", item=_VFM_UDA, label=label, project_config=stem, config_folder="vfm_uda", gpus=4,
                      expected=expected) for stem, label, expected in _VFM_CONFIGS]


_BUILDERS: Dict[str, Callable[[], List[RunConfig]]] = {
    "40": _exp40, "41": _exp41, "42": _exp42, "43": _exp43, "44": _exp44, "49": _exp49,
    "mic80": _exp_mic80, "mic81": _exp_mic81, "dinov2": _exp_dinov2, "vfm_uda": _exp_vfm_uda,
}
EXPERIMENT_IDS = tuple(_BUILDERS)


def experiment(exp: str) -> List[RunConfig]:
    """The run configurations of experiment ``exp`` in the original generator's order."""
    if exp not in _BUILDERS:
        raise KeyError(f"unknown experiment id {exp!r}; known ids: {', '.join(EXPERIMENT_IDS)} "
                       f"(HRDA experiments.py ids, MIC ids as mic80 / mic81, this project's dinov2 and vfm_uda)")
    return _BUILDERS[exp]()


def find_config(exp: str, stem: str) -> RunConfig:
    """The run configuration ``stem`` of experiment ``exp`` (for a paper item's references)."""
    for config in experiment(exp):
        if config.stem == stem:
            return config
    raise KeyError(f"experiment {exp} has no run configuration {stem!r}")
