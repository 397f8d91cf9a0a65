"""demo/demo.py on inputs that take long: one warning with the size and the memory to expect, and progress lines
while an image is predicted (issue 14, item 9). The thresholds are lowered so that a small image triggers them."""

import cv2
import numpy as np
import pytest

from tests.helpers.run_helpers import captured_log
from tests.helpers.paths import REPO_ROOT
from tests.helpers.scripts import import_script

REPO = REPO_ROOT
CONFIG = REPO / "configs" / "demo_hrda.yaml"


@pytest.fixture(scope="module")
def demo():
    return import_script(REPO / "demo" / "demo.py", "demo_script")


def test_large_image_warns_once_and_reports_progress(demo, tmp_path, monkeypatch):
    height, width = 96, 160
    rng = np.random.default_rng(0)
    images = []
    for i in range(2):
        path = tmp_path / f"big_{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        images.append(str(path))
    # 4 copies of the 19 x H x W float32 prediction (the documented estimate), just above the lowered threshold
    expected_bytes = 4 * 19 * height * width * 4
    monkeypatch.setattr(demo, "LARGE_IMAGE_BYTES", expected_bytes - 1)
    monkeypatch.setattr(demo, "PROGRESS_INTERVAL_S", 0.02)
    with captured_log("demo") as messages:
        status = demo.main(["--config-file", str(CONFIG), "--input"] + images + ["--output", str(tmp_path / "out"),
                            "--opts", "MODEL.DEVICE", "cpu", "INPUT.TEST.SCALE", "[128, 64]",
                            "TEST.SLIDE.CROP_SIZE", "[64, 64]", "TEST.SLIDE.STRIDE", "[64, 64]"])
    assert status == 0
    warnings = [m for m in messages if "megapixels" in m]
    assert warnings == [f"{images[0]} is {width}x{height} ({height * width / 1e6:.1f} megapixels): its full-size "
                        f"prediction needs about {expected_bytes / 1e9:.1f} GB of memory and may take minutes on a "
                        f"CPU; downscale very large images first if memory is short (warned once)"]
    # keep-ratio rescale of 160x96 into (128, 64): factor min(128/160, 64/96) = 2/3 -> 107x64; 64x64 windows at
    # stride 64 -> (107 - 64 + 63) // 64 + 1 = 2 windows (mmseg slide grid)
    what = f"predicting {images[0]} ({width}x{height}, 2 slide window(s) on the 107x64 test scale)"
    assert any(m.startswith(f"{what}: still running after ") for m in messages), messages
    assert any(m.startswith(f"{what}: done in ") for m in messages), messages
