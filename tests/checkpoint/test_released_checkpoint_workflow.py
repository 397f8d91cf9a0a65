"""The released-checkpoint workflow of the README on a generated checkpoint in the ORIGINAL layout:

    tools/convert_mmseg_checkpoint.py latest.pth model.pth --config-out hrda.yaml
    tools/train_net.py --config-file hrda.yaml --eval-only MODEL.WEIGHTS model.pth   (Cityscapes val)
    demo/demo.py --config-file hrda.yaml --input IMAGES --output OUT --opts MODEL.WEIGHTS model.pth

The checkpoint is tests/fixtures/hrda_reference's original DACS checkpoint (MiT-b0 HRDA, hr crop 128, test windows
256 at stride 128; make_original_files.py). The Cityscapes val split is a generated replica (DETECTRON2_DATASETS)
of one 256x512 image (with its generated labels) whose picture is replaced by the reference's slide-inference
input, so the predictions of the whole workflow are compared with the ORIGINAL implementation's output for it
(``slide_argmax``, argmax agreement >= 99.99 % as in tests/fixtures/hrda_reference/README.md). INPUT.TEST.SCALE
[512, 256] keeps the 256x512 images at their size, as [2048, 1024] does for real Cityscapes images.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from detectron2.config import get_cfg
from PIL import Image

from hrda_d2 import add_hrda_config
from hrda_d2.data.datasets.cityscapes_classes import stuff_colors
from hrda_d2.data.preparation import prepare_cityscapes
from hrda_d2.data.synthetic import generate_synthetic_datasets
from tests.helpers.paths import REFERENCE_DIR, REPO_ROOT
from tests.fixtures.hrda_reference import make_original_files as mof

REPO = REPO_ROOT
REF = REFERENCE_DIR

PALETTE = np.asarray(stuff_colors(), dtype=np.int64)
# train id -> Cityscapes label id (reference 12.3)
LABEL_ID_OF_TRAIN_ID = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
REFERENCE_IMAGE = "frankfurt_000000_000019_leftImg8bit.png"
TEST_SCALE = ["INPUT.TEST.SCALE", "[512, 256]", "MODEL.DEVICE", "cpu"]


def run(args, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable] + [str(a) for a in args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def reference():
    return np.load(REF / "hrda_mitb0_io.npz")


@pytest.fixture(scope="module")
def workflow(tmp_path_factory, reference):
    """Original checkpoint -> converted weights + YAML; generated Cityscapes root with the reference image."""
    root = tmp_path_factory.mktemp("released")
    _, checkpoint = mof.write_original_files(root / "work_dirs" / "gtaHR2csHR_hrda_246ef")
    weights, config = root / "pretrained" / "hrda_d2.pth", root / "pretrained" / "hrda_d2.yaml"
    proc = run([REPO / "tools" / "convert_mmseg_checkpoint.py", checkpoint, weights, "--config-out", config])
    assert proc.returncode == 0, proc.stderr
    data = generate_synthetic_datasets(str(root / "data"), num_train=0, num_val=1, height=256, width=512)
    prepare_cityscapes(data.cityscapes, nproc=1)
    val = Path(data.cityscapes) / "leftImg8bit" / "val"
    Image.fromarray(reference["slide_image_rgb_uint8"]).save(val / "frankfurt" / REFERENCE_IMAGE)
    env = dict(os.environ, DETECTRON2_DATASETS=str(root / "data"))
    gt = Path(data.cityscapes) / "gtFine" / "val"
    return {"root": root, "weights": weights, "config": config, "val": val, "gt": gt, "env": env}


def eval_only(workflow, output_dir: Path, *opts) -> subprocess.CompletedProcess:
    return run([REPO / "tools" / "train_net.py", "--config-file", workflow["config"], "--eval-only",
                "MODEL.WEIGHTS", workflow["weights"], "DATASETS.TEST", '("cityscapes_fine_sem_seg_val",)',
                "OUTPUT_DIR", output_dir, *TEST_SCALE, *opts], env=workflow["env"])


def miou_percent(pairs) -> float:
    """mmseg mIoU (reference 12.1) over (prediction, ground truth) train-id maps: per-class totals over all
    images of the pixels with gt != 255, IoU = I / (P + G - I), NaN classes left out."""
    inter, union = np.zeros(19), np.zeros(19)
    for pred, gt in pairs:
        keep = gt != 255
        p, g = pred[keep].astype(np.int64), gt[keep].astype(np.int64)
        i = np.bincount(p[p == g], minlength=19)[:19]
        inter += i
        union += np.bincount(p, minlength=19)[:19] + np.bincount(g, minlength=19)[:19] - i
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.nanmean(inter / union) * 100)


# ------------------------------------------------------------------------------------------------------------
def test_config_out_has_the_checkpoint_settings(workflow):
    text = workflow["config"].read_text()
    assert "_BASE_" not in text and yaml.safe_load(text)["MODEL"]["WEIGHTS"] == str(workflow["weights"])
    cfg = add_hrda_config(get_cfg())
    cfg.merge_from_file(str(workflow["config"]))
    # settings of the fixture's original config (tests/fixtures/hrda_reference/README.md, "Model settings")
    assert cfg.MODEL.META_ARCHITECTURE == "HRDA" and cfg.MODEL.MIT.VARIANT == "mit_b0"
    assert cfg.MODEL.MIT.DROP_PATH_RATE == 0.0 and cfg.MODEL.SEM_SEG_HEAD.DROPOUT == 0.0
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 19 and cfg.MODEL.SEM_SEG_HEAD.EMBED_DIM == 256
    assert cfg.MODEL.SEM_SEG_HEAD.FUSION == "aspp" and cfg.MODEL.SEM_SEG_HEAD.ASPP_DILATIONS == [1, 6, 12, 18]
    hrda = cfg.MODEL.HRDA
    assert sorted(hrda.SCALES) == [0.5, 1.0] and hrda.HR_CROP_SIZE == [128, 128] and hrda.HR_SLIDE_INFERENCE
    assert hrda.ATTENTION_CLASSWISE and hrda.FIXED_ATTENTION is None and hrda.FEATURE_SCALE == 0.5
    assert (hrda.HR_LOSS_WEIGHT, hrda.LR_LOSS_WEIGHT, hrda.CROP_COORD_DIVISIBLE) == (0.1, 0.0, 8)
    assert cfg.TEST.MODE == "slide" and cfg.TEST.SLIDE.BATCHED
    assert cfg.TEST.SLIDE.CROP_SIZE == [256, 256] and cfg.TEST.SLIDE.STRIDE == [128, 128]
    assert cfg.INPUT.TEST.SCALE == [2048, 1024] and cfg.TEST.WEIGHTS_SOURCE == "student"
    assert cfg.DATASETS.TEST == ("cityscapes_fine_sem_seg_val",)


def test_eval_only_reproduces_the_original_and_saves_predictions(workflow, reference, tmp_path):
    proc = eval_only(workflow, tmp_path / "eval", "TEST.CITYSCAPES_OFFICIAL_EVAL", "False",
                     "TEST.SAVE_PREDICTIONS", "True")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert re.search(r"\| class\s+\|\s+IoU\s+\|", log) and "| road " in log  # the per-class table
    reported = re.search(r"copypaste: mIoU,fwIoU,mACC,pACC,aAcc\s*\n.*copypaste: ([0-9.]+),", log)
    assert reported, log[-2000:]

    folder = tmp_path / "eval" / "inference" / "cityscapes_fine_sem_seg_val"
    images = sorted(workflow["val"].glob("*/*_leftImg8bit.png"))
    assert [image.name for image in images] == [REFERENCE_IMAGE]
    pairs = []
    for image in images:
        name = image.name[:-4] + ".png"
        color, label_ids = Image.open(folder / "color" / name), Image.open(folder / "labelIds" / name)
        assert color.mode == "P" and label_ids.mode == "P"
        train_ids = np.asarray(color)
        assert train_ids.max() < 19
        assert np.asarray(color.getpalette()[:57]).reshape(19, 3).tolist() == PALETTE.tolist()
        ids = np.asarray(label_ids)
        assert set(np.unique(ids)) <= set(LABEL_ID_OF_TRAIN_ID)
        assert (ids == np.asarray(LABEL_ID_OF_TRAIN_ID)[train_ids]).all()
        assert train_ids.shape == np.asarray(Image.open(image)).shape[:2]
        gt = np.asarray(Image.open(workflow["gt"] / image.parent.name /
                                   image.name.replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")))
        pairs.append((train_ids, gt))
        if image.name == REFERENCE_IMAGE:  # the original implementation's prediction of this image
            assert (train_ids == reference["slide_argmax"]).mean() >= 0.9999
    assert abs(float(reported.group(1)) - miou_percent(pairs)) < 1e-3


def test_eval_only_with_the_official_cityscapes_evaluation(workflow, tmp_path):
    proc = eval_only(workflow, tmp_path / "eval", "TEST.CITYSCAPES_OFFICIAL_EVAL", "True")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "Score Average" in log  # cityscapesscripts' table
    assert "copypaste: mIoU,fwIoU,mACC,pACC,aAcc" in log  # and the mmseg-semantics result
    # both evaluations report the same mean IoU (class IoU is NaN only without ground truth and prediction)
    ours = float(re.search(r"copypaste: mIoU,fwIoU,mACC,pACC,aAcc\s*\n.*copypaste: ([0-9.]+),", log).group(1))
    official = float(re.search(r"copypaste: IoU,iIoU,IoU_sup,iIoU_sup\s*\n.*copypaste: ([0-9.]+),", log).group(1))
    assert abs(ours - official) < 0.01, (ours, official)


def test_demo_predicts_like_the_original(workflow, reference, tmp_path):
    out = tmp_path / "pred.png"
    proc = run([REPO / "demo" / "demo.py", "--config-file", workflow["config"],
                "--input", workflow["val"] / "frankfurt" / REFERENCE_IMAGE, "--output", out, "--opacity", "1",
                "--opts", "MODEL.WEIGHTS", workflow["weights"], *TEST_SCALE])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    picture = np.asarray(Image.open(out).convert("RGB")).astype(np.int64)
    assert picture.shape == reference["slide_image_rgb_uint8"].shape
    match = (picture[:, :, None] == PALETTE[None, None]).all(-1)
    assert match.any(-1).all()  # every pixel a palette colour
    assert (match.argmax(-1) == reference["slide_argmax"]).mean() >= 0.9999
