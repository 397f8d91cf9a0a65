"""A 2-class binary-mask dataset end to end, as datasets/README.md "Your own dataset" says: a split file,
datasets/prepare_split_file.py (masks 0/255 -> train ids, rare-class statistics), tools/train_net.py (train,
evaluate), --eval-only, demo/demo.py (the file's class colours)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from hrda_d2.data.datasets.split_files import SplitFileError, read_split_file
from tests.helpers.training import DEMO_CONFIG, REPO, SMALL_OPTS, TRAIN_NET, subprocess_env

COLORS = [[0, 0, 0], [220, 20, 60]]


def _scene(rng, h=64, w=128, bright_background=False):
    """Image with 1-3 rectangles (the 'object' class) and its 0/255 mask."""
    mask = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(1, 4)):
        y, x = rng.integers(0, h - 16), rng.integers(0, w - 24)
        mask[y:y + rng.integers(12, 28), x:x + rng.integers(16, 40)] = 255
    base = 170 if bright_background else 40
    image = np.where(mask[..., None] > 0, [200, 60, 60], [base, base, base + 10]).astype(np.float64)
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


@pytest.fixture(scope="module")
def split_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("roofs")
    rng = np.random.default_rng(0)
    for split, n, bright in (("source", 6, False), ("target", 6, True), ("val", 2, True)):
        for i in range(n):
            image, mask = _scene(rng, bright_background=bright)
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "images" / split / f"{split}{i}.png")
            Image.fromarray(mask, mode="L").save(root / "masks" / split / f"{split}{i}_mask.png")
    spec = {
        "classes": ["background", "roof"], "colors": COLORS, "label_map": {0: 0, 255: 1},
        "splits": [{"name": f"roofs_{s}", "images": f"images/{s}", "labels": f"masks/{s}",
                    "raw_label_suffix": "_mask.png"} for s in ("source", "val")]
        + [{"name": "roofs_target", "images": "images/target"}],
    }
    path = root / "splits.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run(args, cwd, timeout=300):
    proc = subprocess.run([sys.executable] + [str(a) for a in args], env=subprocess_env(cwd), cwd=str(REPO),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def test_binary_masks_prepare_train_evaluate_and_demo(split_file, tmp_path):
    root = split_file.parent
    run([REPO / "datasets" / "prepare_split_file.py", split_file, "--nproc", "1"], root)
    train_ids = np.asarray(Image.open(root / "masks" / "source" / "source0_labelTrainIds.png"))
    mask = np.asarray(Image.open(root / "masks" / "source" / "source0_mask.png"))
    assert np.array_equal(train_ids, (mask == 255).astype(np.uint8))
    stats = json.loads((root / "rcs_statistics" / "roofs_source" / "sample_class_stats.json").read_text())
    assert len(stats) == 6 and all(set(s) <= {"0", "1", "file"} for s in stats)

    out = tmp_path / "run"
    opts = ["--config-file", DEMO_CONFIG] + SMALL_OPTS + [
        "DATASETS.SPLIT_FILES", f"['{split_file}']", "DATASETS.SOURCE", "('roofs_source',)",
        "DATASETS.TARGET", "('roofs_target',)", "DATASETS.TEST", "('roofs_val',)",
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "2", "UDA.FD.CLASSES", "[1]", "INPUT.TARGET.PSEUDO_MARGINS", "[]",
        "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "3", "TEST.EVAL_PERIOD", "3", "OUTPUT_DIR", out]
    run([TRAIN_NET] + opts, root)
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    losses = [m["total_loss"] for m in metrics if "total_loss" in m]
    assert losses and all(np.isfinite(losses))
    evaluation = next(m for m in metrics if "sem_seg/mIoU" in m)
    assert {"sem_seg/IoU-background", "sem_seg/IoU-roof"} <= set(evaluation)
    assert not any("IoU-road" in k for k in evaluation)

    run([TRAIN_NET, "--eval-only"] + opts + ["MODEL.WEIGHTS", out / "model_final.pth"], root)

    pictures = tmp_path / "pictures"
    run([REPO / "demo" / "demo.py", "--config-file", DEMO_CONFIG, "--input", root / "images" / "val",
         "--output", pictures, "--opacity", "1", "--opts", "DATASETS.SPLIT_FILES", f"['{split_file}']",
         "DATASETS.TEST", "('roofs_val',)", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "2", "UDA.FD.CLASSES", "[1]",
         "INPUT.TEST.SCALE", "[128, 64]", "MODEL.HRDA.HR_CROP_SIZE", "[32, 32]", "TEST.SLIDE.CROP_SIZE", "[64, 64]",
         "TEST.SLIDE.STRIDE", "[64, 64]", "MODEL.WEIGHTS", out / "model_final.pth"], root)
    written = sorted(pictures.glob("*.png"))
    assert len(written) == 2
    colors = {tuple(c) for c in np.asarray(Image.open(written[0]).convert("RGB")).reshape(-1, 3)}
    assert colors <= {tuple(c) for c in COLORS}


def test_split_file_errors_name_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"classes": ["a", "b"], "colors": [[0, 0, 0]], "splits": [{"name": "x",
                                                                                             "images": "i"}]}))
    with pytest.raises(SplitFileError, match=r"bad\.yaml: 'colors' must hold one \[R, G, B\] \(0\.\.255\) per class"):
        read_split_file(str(path))
    path.write_text(yaml.safe_dump({"classes": ["a"], "splits": [{"name": "x", "images": "i", "lables": "l"}]}))
    with pytest.raises(SplitFileError, match=r"splits\[0\] \(x\): unknown keys \['lables'\]"):
        read_split_file(str(path))
    with pytest.raises(SplitFileError, match="does not exist"):
        read_split_file(str(tmp_path / "missing.yaml"))
