"""Every experiment id generates the original's runs: the count and names of lhoyer/HRDA / lhoyer/MIC
``experiments.py`` (tests/fixtures/experiments/original_runs.json, derived from the original generator's output),
and for every run the values of the fields that define it, the model's structure included (head inputs and their
channels, ASPP dilations, ResNet stages, read from the built backbone); the generated YAMLs load with
``load_config``; a run whose model does not build is refused before anything is written."""
import functools
import json
import os

import pytest
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_backbone

from hrda_d2 import add_hrda_config, load_config
from hrda_d2.experiments import EXPERIMENT_IDS, GenerationError, generate_experiment
from hrda_d2.experiments.configs import CONFIG_DIR
from tests.helpers.paths import REPO_ROOT

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "experiments" / "original_runs.json"
ORIGINAL = json.loads(FIXTURE.read_text())["experiments"]
ORIGINAL_COUNTS = {"40": 6, "41": 24, "42": 21, "43": 21, "44": 54, "49": 6, "mic80": 12, "mic81": 18}

SPLIT_TYPES = {"gta_train": "GTADataset", "synthia_train": "SynthiaDataset", "acdc_train": "ACDCDataset",
               "darkzurich_train": "DarkZurichDataset", "cityscapes_fine_sem_seg_train": "CityscapesDataset",
               "cityscapes_fine_sem_seg_val": "CityscapesDataset", "acdc_val": "ACDCDataset",
               "darkzurich_val": "DarkZurichDataset"}
METHODS = {"advseg": "AdvSeg", "minent": "MinEnt"}
BACKBONES = {"build_mit_backbone": "mit_b5", "build_resnet_v1c_backbone": "ResNetV1c"}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("generated")
    return {exp: generate_experiment(exp, str(root / "configs"), str(root / "work")) for exp in EXPERIMENT_IDS}


@functools.lru_cache(maxsize=None)
def _backbone_outputs(model_yaml: str):
    """``{feature: (channels, stride)}`` of the backbone of the ``MODEL`` config ``model_yaml`` (meta device)."""
    cfg = add_hrda_config(get_cfg())
    cfg.MODEL.merge_from_other_cfg(CfgNode.load_cfg(model_yaml))
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        shapes = build_backbone(cfg).output_shape()
    return {name: (shape.channels, shape.stride) for name, shape in shapes.items()}


class View:
    """Config values of a run (its loaded generated file) and its backbone's outputs."""

    def __init__(self, gen):
        self.cfg = load_config(gen.config_file)
        self.outputs = _backbone_outputs(self.cfg.MODEL.dump())

    def __getitem__(self, key):
        node = self.cfg
        for part in key.split("."):
            node = node[part]
        return node

    def get(self, key, default):
        try:
            return self[key]
        except KeyError:
            return default


def our_fields(view: View) -> dict:
    """``view`` in the fixture's vocabulary (see tests/fixtures/experiments/derive_fixture.py)."""
    method = view.get("UDA.METHOD", "dacs")
    target_only = method == "target_only"
    stream = "TARGET" if target_only else "SOURCE"  # the oracle trains on the labelled target stream
    labelled = {"type": SPLIT_TYPES[view[f"DATASETS.{stream}"][0]], "scale": list(view[f"INPUT.{stream}.SCALE"]),
                "crop": list(view[f"INPUT.{stream}.CROP_SIZE"]),
                "cat_max_ratio": view[f"INPUT.{stream}.CAT_MAX_RATIO"],
                "photometric_distortion": view.get(f"INPUT.{stream}.PHOTOMETRIC_DISTORTION", False)}
    out = {
        "labelled_train": labelled,
        "unlabelled_train": None if target_only else {
            "type": SPLIT_TYPES[view["DATASETS.TARGET"][0]], "scale": list(view["INPUT.TARGET.SCALE"]),
            "crop": list(view["INPUT.TARGET.CROP_SIZE"]), "pseudo_margins": list(view["INPUT.TARGET.PSEUDO_MARGINS"])
            or None},
        "val": {"type": SPLIT_TYPES[view["DATASETS.TEST"][0]], "scale": list(view["INPUT.TEST.SCALE"])},
        "sync_crop_size": list(view["INPUT.SYNC_CROP_SIZE"]) or None,
        "rare_class_sampling": None if not view["DATASETS.RCS.ENABLED"] else {
            "min_pixels": view["DATASETS.RCS.MIN_PIXELS"], "class_temp": view["DATASETS.RCS.CLASS_TEMP"],
            "min_crop_ratio": view["DATASETS.RCS.MIN_CROP_RATIO"]},
        "method": None if target_only else METHODS.get(method, "DACS"),
        "backbone": BACKBONES[view["MODEL.BACKBONE.NAME"]],
        "head": our_head(view),
        "hrda": None,
        "test": {"mode": view["TEST.MODE"]},
        "optimizer": {"type": view["SOLVER.OPTIMIZER"].upper(), "lr": view["SOLVER.BASE_LR"],
                      "weight_decay": view["SOLVER.WEIGHT_DECAY"], "head_lr_mult": view["SOLVER.HEAD_LR_MULTIPLIER"],
                      "norm_decay_mult": view["SOLVER.BACKBONE_NORM_DECAY_MULTIPLIER"]},
        "iters": view["SOLVER.MAX_ITER"], "images_per_batch": view["SOLVER.IMS_PER_BATCH"],
        "eval_interval": view["TEST.EVAL_PERIOD"],
        "mic": None if not view["UDA.MIC.ENABLED"] else {
            "mode": view["UDA.MIC.MODE"], "block_size": view["UDA.MIC.BLOCK_SIZE"],
            "mask_ratio": view["UDA.MIC.MASK_RATIO"], "lambda": view["UDA.MIC.LAMBDA"]},
        "seed": view["SEED"],
    }
    if out["method"] == "DACS":
        out["dacs"] = {"alpha": view["UDA.ALPHA"], "fd_lambda": view["UDA.FD.LAMBDA"],
                       "pseudo_weight_ignore_top": view["UDA.PSEUDO_WEIGHT_IGNORE_TOP"],
                       "pseudo_weight_ignore_bottom": view["UDA.PSEUDO_WEIGHT_IGNORE_BOTTOM"]}
    if view["MODEL.BACKBONE.NAME"] != "build_mit_backbone":
        strides = [stride for _, stride in sorted(view.outputs.values(), key=lambda cs: cs[1])]
        out["resnet"] = {"depth": view["MODEL.RESNETS.DEPTH"], "contract_dilation": view[
            "MODEL.RESNETS.CONTRACT_DILATION"], "dilations": [1, 1, view["MODEL.RESNETS.RES4_DILATION"],
                                                             view["MODEL.RESNETS.RES5_DILATION"]],
                         "strides": [1] + [b // a for a, b in zip(strides, strides[1:])]}
    if len(view["MODEL.HRDA.SCALES"]) == 2:
        out["hrda"] = {"scales": sorted(view["MODEL.HRDA.SCALES"]),
                       "hr_crop_size": list(view["MODEL.HRDA.HR_CROP_SIZE"]),
                       "feature_scale": "all" if view["UDA.FD.ALL_SCALES"] else view["MODEL.HRDA.FEATURE_SCALE"],
                       "hr_loss_weight": view["MODEL.HRDA.HR_LOSS_WEIGHT"],
                       "lr_loss_weight": view["MODEL.HRDA.LR_LOSS_WEIGHT"],
                       "fixed_attention": view["MODEL.HRDA.FIXED_ATTENTION"],
                       "hr_slide_overlapping": view["MODEL.HRDA.HR_SLIDE_OVERLAPPING"],
                       "blur_hr_crop": view["MODEL.HRDA.BLUR_HR_CROP"],
                       "attention_classwise": view["MODEL.HRDA.ATTENTION_CLASSWISE"],
                       "crop_coord_divisible": view["MODEL.HRDA.CROP_COORD_DIVISIBLE"]}
    if out["test"]["mode"] == "slide":
        out["test"].update(crop_size=list(view["TEST.SLIDE.CROP_SIZE"]), stride=list(view["TEST.SLIDE.STRIDE"]),
                           batched=view["TEST.SLIDE.BATCHED"])
    return out


def our_head(view: View) -> dict:
    """The single-scale head in the fixture's vocabulary: the backbone maps it reads (index among the backbone's
    outputs, as the original's ``in_index``: an int for one map) and their channels, its width, ASPP dilations."""
    names = sorted(view.outputs)  # res2 ... res5
    features = list(view["MODEL.SEM_SEG_HEAD.IN_FEATURES"])
    index = [names.index(f) for f in features]
    channels = [view.outputs[f][0] for f in features]
    daformer = view["MODEL.SEM_SEG_HEAD.NAME"] == "DAFormerHead"
    return {"type": view["MODEL.SEM_SEG_HEAD.NAME"], "in_index": index if len(index) > 1 else index[0],
            "in_channels": channels if len(channels) > 1 else channels[0],
            "channels": view["MODEL.SEM_SEG_HEAD.EMBED_DIM"] if daformer else None,
            "dilations": list(view["MODEL.SEM_SEG_HEAD.ASPP_DILATIONS"])}


def original_fields(f: dict, seed: int) -> dict:
    """The fixture's fields in the same layout (the fields of :func:`our_fields`)."""
    labelled = dict(f["labelled_train"])
    labelled.pop("pseudo_margins")
    unlabelled = f["unlabelled_train"] and {k: f["unlabelled_train"][k] for k in ("type", "scale", "crop",
                                                                                   "pseudo_margins")}
    method = f["method"]
    out = {
        "labelled_train": labelled, "unlabelled_train": unlabelled, "val": f["val"],
        "sync_crop_size": f["sync_crop_size"], "rare_class_sampling": f["rare_class_sampling"],
        "method": method and method["type"], "backbone": f["backbone"]["type"], "head": f["head"],
        "hrda": f["hrda"], "test": {k: v for k, v in f["test"].items() if v is not None},
        "optimizer": dict(f["optimizer"], type=f["optimizer"]["type"].upper()), "iters": f["iters"],
        "images_per_batch": f["images_per_batch"], "eval_interval": f["eval_interval"], "mic": f["mic"],
        "seed": seed,
    }
    if method and method["type"] == "DACS":
        out["dacs"] = {k: method[k] for k in ("alpha", "fd_lambda", "pseudo_weight_ignore_top",
                                              "pseudo_weight_ignore_bottom")}
    if f["backbone"]["type"] != "mit_b5":
        out["resnet"] = {k: v for k, v in f["backbone"].items() if k != "type"}
    if out["hrda"] is not None:
        out["hrda"] = dict(out["hrda"], scales=[float(s) for s in out["hrda"]["scales"]])
    return out


@pytest.mark.parametrize("exp", sorted(ORIGINAL_COUNTS))
def test_runs_names_and_defining_fields_are_the_originals(generated, exp):
    runs = generated[exp]
    original = ORIGINAL[exp]
    assert len(runs) == ORIGINAL_COUNTS[exp] == original["count"]
    expected_runs = [(c, seed) for c in original["configs"] for seed in c["seeds"]]
    assert [g.run.name for g in runs] == [f"{c['stem']}_s{seed}" for c, seed in expected_runs]
    for gen, (config, seed) in zip(runs, expected_runs):
        ours, theirs = our_fields(View(gen)), original_fields(config["fields"], seed)
        assert ours == theirs, f"{gen.run.name}: {[k for k in theirs if ours.get(k) != theirs[k]]}"
        assert gen.run.config.original_gpu == config["fields"]["gpu_model"]


@pytest.mark.parametrize("exp", EXPERIMENT_IDS)
def test_generated_files_load_and_start_from_a_paper_config(generated, exp):
    for gen in generated[exp]:
        cfg = load_config(gen.config_file)
        assert cfg.SEED == gen.run.seed and cfg.OUTPUT_DIR == gen.output_dir
        text = open(gen.config_file).read()
        base = text.split("_BASE_: ")[1].splitlines()[0]
        assert os.path.normpath(os.path.join(os.path.dirname(gen.config_file), base)) == os.path.join(
            CONFIG_DIR, gen.run.config.base)


def test_every_paper_row_is_generated_and_mic_extends_advseg_and_minent(generated):
    """Every row of the paper experiments is supported (Table 2 on DeepLabV2, the target-only oracle, the FD on all
    scales, MIC's Table 1 with MIC on AdvSeg / MinEnt)."""
    assert {exp: len(generated[exp]) for exp in ORIGINAL_COUNTS} == ORIGINAL_COUNTS
    mic_methods = {g.run.config.overrides.get("UDA.METHOD", "dacs") for g in generated["mic81"]}
    assert {"advseg", "minent"} <= mic_methods
    for gen in generated["mic81"]:
        cfg = load_config(gen.config_file)
        assert cfg.UDA.MIC.ENABLED and cfg.UDA.MIC.MODE == "separatetrgaug" and cfg.UDA.MIC.MASK_RATIO == 0.7
        if cfg.UDA.METHOD in ("advseg", "minent"):  # MIC's own teacher: the AdvSeg / MinEnt configs' alpha, threshold
            assert (cfg.UDA.ALPHA, cfg.UDA.PSEUDO_THRESHOLD, cfg.UDA.MIC.BLOCK_SIZE) == (0.999, 0.968, 32)
            assert cfg.UDA.PSEUDO_WEIGHT_IGNORE_TOP == cfg.UDA.PSEUDO_WEIGHT_IGNORE_BOTTOM == 0
            assert list(cfg.INPUT.TARGET.PSEUDO_MARGINS) == []
    all_scales = [g.run.config.label for g in generated["44"] if g.run.config.overrides.get("UDA.FD.ALL_SCALES")]
    assert sorted(set(all_scales)) == ["LR0.5+HR0.5", "s_c 1.33 (context scale 0.75)", "s_c 4 (context scale 0.25)"]
    dlv2 = [g for exp in ("41", "mic81") for g in generated[exp] if "dlv2red" in g.run.name]
    assert len(dlv2) == 24 + 15 and all(g.run.config.base == "Base-DeepLabV2.yaml" for g in dlv2)


def test_a_run_whose_model_does_not_build_is_refused_with_its_name_and_nothing_is_written(tmp_path, monkeypatch):
    """The generator builds every distinct model configuration (meta device) before it writes a run: the DeepLabV2
    rows of the old generator (DAFormer's four backbone maps into the one-map DLV2 head) are refused."""
    from hrda_d2.experiments import runs

    monkeypatch.setattr(runs, "DLV2_BASE", "gta2cs_daformer.yaml")  # the old generator's base of these rows
    with pytest.raises(GenerationError) as error:
        generate_experiment("41", str(tmp_path / "configs"), str(tmp_path / "work"))
    message = str(error.value)
    assert "\n" not in message and "run gtaCAug2cs_advseg_dlv2red_r101v1c_poly10warm_sgd_00025_pmF_s0" in message
    assert "MODEL.SEM_SEG_HEAD.IN_FEATURES" in message and "DLV2Head" in message
    assert not list((tmp_path / "configs").rglob("*.yaml"))


def test_dinov2_rows_are_the_projects_configs_with_three_seeds(generated):
    runs = generated["dinov2"]
    assert len(runs) == 12 and {g.run.seed for g in runs} == {0, 1, 2}
    for gen in runs:
        cfg = load_config(gen.config_file)
        assert cfg.MODEL.BACKBONE.NAME == "build_timm_backbone" and "dinov2" in cfg.MODEL.TIMM.NAME
        assert gen.run.name == f"{gen.run.config.base[:-5]}_s{gen.run.seed}"
        assert str(gen.run.config.expected).startswith("not reported")


def test_paper_values_where_a_source_gives_them_and_not_reported_elsewhere(generated):
    expected = {g.run.config.label: g.run.config.expected for exp in ("40", "49", "mic80") for g in generated[exp]}
    assert expected["GTA->Cityscapes"].value == 75.9  # mic80 comes last
    assert [e.value for e in (expected["Synthia->Cityscapes"], expected["Cityscapes->Dark Zurich"])] == [None, None]
    assert {g.run.config.expected.value for g in generated["40"]} == {73.8, 65.8}
    assert {g.run.config.metric for g in generated["40"]} == {"mIoU", "mIoU16"}
    for exp in ("41", "42", "43", "44", "mic81"):
        assert all(str(g.run.config.expected) == "not reported" for g in generated[exp]), exp
