"""`make demo` in short: the same script, a few iterations, on a few generated images."""
import json
import subprocess
import sys

import numpy as np
from PIL import Image


def test_run_demo_end_to_end_short(repo_root, tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "tools/run_demo.py", "--output", str(out), "--iters", "2", "--num-train", "4",
         "--num-val", "2", "--num-pictures", "1"],
        cwd=repo_root, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "source-only" in proc.stdout and "HRDA" in proc.stdout and "mIoU" in proc.stdout
    results = json.loads((out / "results.json").read_text())["results"]
    for name in ("source_only", "hrda"):
        assert 0.0 <= results[name]["mIoU"] <= 100.0
        assert (out / name / "model_final.pth").is_file()
        assert (out / name / "metrics.json").is_file()
    pictures = sorted((out / "pictures").glob("*.png"))
    names = [p.name for p in pictures]
    assert any(n.endswith("_hrda_overlay.png") for n in names)
    assert any(n.endswith("_source_only_overlay.png") for n in names)
    assert any(n.endswith("_hrda_lr_hr_fused_attention.png") for n in names)
    comparison = np.asarray(Image.open(out / "pictures" / "comparison_target_image_gt_sourceonly_hrda.png"))
    overlay = np.asarray(Image.open(next(p for p in pictures if p.name.endswith("_hrda_overlay.png"))))
    # image | ground truth | source-only | HRDA, each of the target image's size
    assert comparison.shape[1] == 4 * overlay.shape[1] and comparison.shape[0] == overlay.shape[0]
