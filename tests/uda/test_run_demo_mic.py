"""`make demo DEMO_ARGS=--mic`: the demo with a third run, MIC(HRDA), in its table, results and pictures."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


@pytest.mark.slow  # three short training runs in subprocesses
def test_run_demo_with_mic(repo_root, tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "tools/run_demo.py", "--output", str(out), "--iters", "3", "--num-train", "8",
         "--num-val", "2", "--num-pictures", "1", "--mic"],
        cwd=repo_root, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    header = next(line for line in proc.stdout.splitlines() if "class (target val)" in line)
    assert "source-only" in header and "HRDA" in header and "MIC(HRDA)" in header and "gain MIC(HRDA)" in header
    assert "MIC(HRDA) vs source-only" in proc.stdout
    results = json.loads((out / "results.json").read_text())["results"]
    assert set(results) == {"source_only", "hrda", "mic"} and 0.0 <= results["mic"]["mIoU"] <= 100.0
    with open(out / "mic" / "metrics.json") as f:
        assert any("loss_masked_sem_seg" in json.loads(line) for line in f if line.strip())
    pictures = out / "pictures"
    overlay = np.asarray(Image.open(next(pictures.glob("*_mic_overlay.png"))))
    comparison = np.asarray(Image.open(pictures / "comparison_target_image_gt_sourceonly_hrda_mic.png"))
    assert comparison.shape[1] == 5 * overlay.shape[1]  # image | ground truth | source-only | HRDA | MIC
