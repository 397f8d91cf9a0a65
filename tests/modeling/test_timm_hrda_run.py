"""HRDA DACS training with ``build_timm_backbone`` + DINOv2 ViT-S/14 (random weights, the full ViT-S
architecture: 12 blocks, width 384) through ``tools/train_net.py`` on generated data (configs/demo_hrda.yaml
shrunk to 64 x 64 crops, 32 x 32 detail crops, 64 x 64 test windows):

* 4 DACS iterations with the ImageNet feature distance on the ViT's own tokens (``UDA.FD.FEATURE vit_tokens``)
  and drop-path on: every loss term finite;
* ``--eval-only`` slide inference of the final checkpoint reproduces the run's final evaluation;
* resume: 2 iterations, a fresh process continues from ``model_0000001.pth`` to 4; student, teacher,
  ImageNet model and optimizer state equal the uninterrupted run's bit for bit (``torch.equal``).

Three subprocesses of ~20 s each on one core: marked slow.
"""
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from tests.helpers.paths import REPO_ROOT
from tests.helpers.run_helpers import prepared_replicas
from tests.helpers.training import SMALL_OPTS

pytestmark = pytest.mark.slow

REPO = REPO_ROOT
TRAIN_NET = str(REPO / "tools" / "train_net.py")
CONFIG = str(REPO / "configs" / "demo_hrda.yaml")
ITERS = 4
OPTS = SMALL_OPTS + ["TEST.SLIDE.STRIDE", "[32, 32]"] + [  # overlapping test windows
    # the backbone under test
    "MODEL.BACKBONE.NAME", "build_timm_backbone", "MODEL.TIMM.NAME", "vit_small_patch14_dinov2",
    "MODEL.TIMM.DROP_PATH_RATE", "0.1", "MODEL.TIMM.IMG_SIZE", "[32, 32]", "MODEL.TIMM.PYRAMID_CHANNELS", "64",
    "SOLVER.HEAD_LR_PARAM_PREFIXES", "['backbone.simfp_']",
    # the feature distance on the ViT tokens; every class and any majority so that the 2 x 2 token cells count
    "UDA.FD.LAMBDA", "0.005", "UDA.FD.FEATURE", "vit_tokens", "UDA.FD.CLASSES", str(list(range(19))),
    "UDA.FD.SCALE_MIN_RATIO", "0.0", "UDA.DEBUG_IMG_INTERVAL", "0",
    "SOLVER.MAX_ITER", str(ITERS), "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "0",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("timm_data")
    prepared_replicas(root, num_train=4, num_val=2)
    return root


def run(args, data_root, timeout=600) -> str:
    env = dict(os.environ, DETECTRON2_DATASETS=str(data_root), CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, TRAIN_NET, "--config-file", CONFIG] + args, env=env, cwd=str(REPO),
                            capture_output=True, text=True, timeout=timeout)
    text = result.stdout + result.stderr
    assert result.returncode == 0, f"train_net.py failed:\n{text[-6000:]}"
    return text


def final_miou(text: str) -> float:
    return float(re.findall(r"copypaste: ([\d.]+),", text)[-1])


@pytest.fixture(scope="module")
def straight_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    return out, run(OPTS + ["OUTPUT_DIR", str(out)], data_root)


def test_dacs_losses_are_finite(straight_run):
    out, _ = straight_run
    with open(out / "metrics.json") as f:
        records = [json.loads(line) for line in f if line.strip()]
    training = [r for r in records if "total_loss" in r]
    assert [r["iteration"] for r in training][-1] == ITERS - 1
    terms = {"loss_src_sem_seg", "loss_src_sem_seg_hr", "loss_imnet_feat_dist", "loss_mix_sem_seg",
             "loss_mix_sem_seg_hr", "total_loss"}
    for record in training:
        assert terms <= set(record), sorted(record)
        assert all(math.isfinite(record[k]) for k in terms), record
    # the feature distance compared cells of the two (differently initialised) ViTs
    assert all(r["imnet_fd_cells"] > 0 and r["loss_imnet_feat_dist"] > 0 for r in training)


def test_eval_only_slide_inference_reproduces_the_final_evaluation(data_root, straight_run, tmp_path):
    out, text = straight_run
    evaluated = run(["--eval-only"] + OPTS + ["OUTPUT_DIR", str(tmp_path), "MODEL.WEIGHTS",
                                               str(out / "model_final.pth")], data_root)
    assert "| road" in evaluated and "not found in the checkpoint" not in evaluated
    assert final_miou(evaluated) == final_miou(text)


def test_resume_is_bit_exact(data_root, straight_run, tmp_path):
    out, _ = straight_run
    shutil.copy(out / "model_0000001.pth", tmp_path / "model_0000001.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    text = run(["--resume"] + OPTS + ["OUTPUT_DIR", str(tmp_path)], data_root)
    assert "Resumed from" in text and "at iteration 2" in text
    straight = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    resumed = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    for part in ("model", "teacher", "imnet_model"):
        assert straight[part].keys() == resumed[part].keys()
        assert any(k.startswith("backbone.net.vit.blocks.11.") for k in straight[part])
        differing = [k for k in straight[part] if not torch.equal(straight[part][k], resumed[part][k])]
        assert differing == [], f"{part}: {differing[:5]}"
    optimizer = [s["_trainer"]["optimizer"]["state"] for s in (straight["trainer"], resumed["trainer"])]
    assert optimizer[0].keys() == optimizer[1].keys()
    for index in optimizer[0]:
        for name, value in optimizer[0][index].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(optimizer[1][index][name])), (index, name)
