"""Equivalence with the ORIGINAL HRDA implementation (tests/fixtures/hrda_reference, see its README).

The original-layout DACS checkpoint is regenerated from the stored spec, converted with the project's
converter (tools/convert_mmseg_checkpoint.py, student and --teacher), loaded through Detectron2's
checkpointer, and a MiT-b0 HRDA with the fixture settings must reproduce the original's slide-inference
logits, the EMA teacher's pseudo-label logits (train-mode BN) and the training losses for a forced crop box.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from hrda_d2 import add_hrda_config
from tests.helpers.scripts import import_script
from tests.helpers.paths import REFERENCE_DIR, REPO_ROOT
from tests.fixtures.hrda_reference import make_original_files as mof

REF = REFERENCE_DIR
REPO = REPO_ROOT

SOFTMAX_TOL = 1e-4
ARGMAX_AGREEMENT = 0.9999
LOSS_REL_TOL = 1e-4


@pytest.fixture(scope="module")
def io():
    return np.load(REF / "hrda_mitb0_io.npz")


@pytest.fixture(scope="module")
def ref():
    return json.loads((REF / "hrda_mitb0_ref.json").read_text())


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{"student": path, "teacher": path} of Detectron2 checkpoints converted from the original layout."""
    originals = tmp_path_factory.mktemp("original")
    _, ckpt = mof.write_original_files(originals)
    out = tmp_path_factory.mktemp("converted")
    paths = {"student": out / "student.pth", "teacher": out / "teacher.pth"}
    # the command-line tool's main(), run in this process (tools/ is a script folder, not a package)
    tool = import_script(REPO / "tools" / "convert_mmseg_checkpoint.py", "convert_mmseg_checkpoint")
    assert tool.main([str(ckpt), str(paths["student"])]) == 0
    assert tool.main([str(ckpt), str(paths["teacher"]), "--teacher"]) == 0
    return paths


def fixture_cfg():
    """mit_b0 HRDA with the fixture's settings (README "Model settings")."""
    cfg = add_hrda_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.MIT.VARIANT = "mit_b0"
    cfg.MODEL.MIT.DROP_PATH_RATE = 0.0
    cfg.MODEL.SEM_SEG_HEAD.DROPOUT = 0.0
    cfg.MODEL.HRDA.SCALES = [1.0, 0.5]
    cfg.MODEL.HRDA.HR_CROP_SIZE = [128, 128]
    cfg.MODEL.HRDA.CROP_COORD_DIVISIBLE = 8
    cfg.MODEL.HRDA.HR_LOSS_WEIGHT = 0.1
    cfg.TEST.MODE = "slide"
    cfg.TEST.SLIDE.CROP_SIZE = [256, 256]
    cfg.TEST.SLIDE.STRIDE = [128, 128]
    cfg.TEST.SLIDE.BATCHED = True
    return cfg


def load_model(path: Path):
    """Fresh model with the converted weights; asserts zero missing / unexpected / mis-shaped keys."""
    model = build_model(fixture_cfg())
    checkpointer = DetectionCheckpointer(model)
    reports = []
    load_model_weights = checkpointer._load_model  # record what the MODEL.WEIGHTS path reports

    def recording(checkpoint):
        reports.append(load_model_weights(checkpoint))
        return reports[-1]

    checkpointer._load_model = recording
    checkpointer.load(str(path))
    assert len(reports) == 1
    incompatible = reports[0]
    assert not incompatible.missing_keys, incompatible.missing_keys
    assert not incompatible.unexpected_keys, incompatible.unexpected_keys
    assert not incompatible.incorrect_shapes, incompatible.incorrect_shapes
    return model


def assert_logits_match(logits: torch.Tensor, key: str, io) -> None:
    ours = mof.sample_logits(logits, io[f"{key}_idx"]).softmax(1)
    theirs = torch.from_numpy(io[f"{key}_logits_at"]).softmax(1)
    max_diff = (ours - theirs).abs().max().item()
    argmax = logits.argmax(-3).to(torch.uint8).numpy().reshape(io[f"{key}_argmax"].shape)
    agreement = (argmax == io[f"{key}_argmax"]).mean()
    assert max_diff <= SOFTMAX_TOL, f"{key}: max |softmax diff| {max_diff:.3g}"
    assert agreement >= ARGMAX_AGREEMENT, f"{key}: argmax agreement {agreement:.6f}"


@pytest.mark.parametrize("which", ["student", "teacher"])
def test_converted_checkpoint_loads_without_missing_or_unexpected_keys(converted, which):
    model = load_model(converted[which])
    raw = torch.load(converted[which], map_location="cpu", weights_only=False)["model"]
    assert set(raw) == set(model.state_dict())
    assert model.sem_seg_head.scale_attention.conv_seg.weight.shape == (19, 256, 1, 1)


def test_slide_inference_matches_original(converted, io):
    model = load_model(converted["student"]).eval()
    with torch.no_grad():
        logits = model.slide_inference(mof.normalize_uint8(io["slide_image_rgb_uint8"]))
    assert logits.shape == (1, 19, 256, 512)
    assert_logits_match(logits, "slide", io)


def test_teacher_pseudo_labels_match_original_in_train_mode(converted, io):
    teacher = load_model(converted["teacher"]).train()  # BN batch statistics; dropout / drop path are 0
    with torch.no_grad():
        logits = teacher.generate_pseudo_label(mof.normalize_uint8(io["pseudo_image_rgb_uint8"]))
    assert logits.shape == (2, 19, 256, 256)
    assert all(m.training for m in teacher.modules())  # no .eval() inside
    assert_logits_match(logits, "pseudo", io)


@pytest.mark.parametrize("case", [0, 1])
def test_training_losses_match_original(converted, io, ref, case):
    c = ref["train_cases"][case]
    weight = None if c["weight"] is None else mof.weight_from_code(io["train_weight_code"], ref["train_weight_ratio"])
    model = load_model(converted["student"]).train()
    losses = model.forward_train(
        mof.normalize_uint8(io["train_image_rgb_uint8"]),
        torch.from_numpy(io["train_label"]).long(),
        weight=weight,
        crop_box=tuple(ref["train_crop_box"]),
    ).losses
    assert set(losses) == {"loss_sem_seg", "loss_sem_seg_hr"}
    total = sum(losses.values()).item()
    assert abs(total - c["total"]) / abs(c["total"]) <= LOSS_REL_TOL
    for ours, theirs in (("loss_sem_seg", "decode.loss_seg"), ("loss_sem_seg_hr", "decode.hr.loss_seg")):
        assert losses[ours].item() == pytest.approx(c["terms"][theirs], rel=LOSS_REL_TOL), ours
