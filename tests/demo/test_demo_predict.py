"""demo/demo.py and the predictor / visualisation behind it (hrda_d2/engine/predictor.py, demo/predictor.py,
hrda_d2/utils/visualization.py).

Model: the tiny MiT-b0 HRDA of configs/demo_hrda.yaml with seeded random weights saved as a checkpoint (its
class and attention logits are scaled up so that the pictures show several classes and a spread attention).
Images: generated Cityscapes-like street scenes of 64x128 (+ one 48x96 image that the test rescale enlarges)
with INPUT.TEST.SCALE [128, 64], so a 64x128 image is one 64x128 test window (the 128x128 window shrinks to the
image) holding 3 HR tiles of 64x64 (stride 32). Expected predictions are computed here from the model's
modules (backbone, heads) with the operations of the reference (4.4, 4.5, 5.3, 5.5, 10.2), not through the
predictor; the demo's pictures are decoded back to class ids through the palette.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import Metadata, MetadataCatalog
from detectron2.modeling import build_model
from PIL import Image
from torch.nn import functional as F

from hrda_d2 import add_hrda_config
from hrda_d2.data.datasets.cityscapes_classes import stuff_colors
from hrda_d2.data.synthetic import generate_synthetic_datasets
from hrda_d2.engine.predictor import SemSegPredictor
from hrda_d2.utils.visualization import check_sem_seg_metadata, sem_seg_overlay
from tests.helpers.scripts import import_script
from tests.helpers.paths import REPO_ROOT

REPO = REPO_ROOT
DEMO = REPO / "demo" / "demo.py"
VisualizationDemo = import_script(REPO / "demo" / "predictor.py", "hrda_demo_predictor").VisualizationDemo
CONFIG = REPO / "configs" / "demo_hrda.yaml"
PALETTE = np.asarray(stuff_colors(), dtype=np.int64)  # 19 x 3, reference 9.3
TEST_OPTS = ["INPUT.TEST.SCALE", "[128, 64]", "MODEL.DEVICE", "cpu"]


# ------------------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------------------
def demo_cfg(weights: str = ""):
    cfg = add_hrda_config(get_cfg())
    cfg.merge_from_file(str(CONFIG))
    cfg.merge_from_list(["MODEL.WEIGHTS", weights] + TEST_OPTS)
    return cfg


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    torch.manual_seed(123)
    model = build_model(demo_cfg())
    with torch.no_grad():
        model.sem_seg_head.head.conv_seg.weight.mul_(5.0)
        model.sem_seg_head.scale_attention.conv_seg.weight.mul_(200.0)
    path = tmp_path_factory.mktemp("weights") / "demo_model.pth"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def model(weights):
    """The model of the saved weights, loaded independently of the predictor."""
    m = build_model(demo_cfg())
    DetectionCheckpointer(m).load(weights)
    return m.eval()


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """3 generated 64x128 scenes + one 48x96 crop of a scene (enlarged to 64x128 by the test rescale)."""
    root = tmp_path_factory.mktemp("generated")
    generate_synthetic_datasets(str(root), num_train=0, num_val=3, height=64, width=128)
    folder = root / "images"
    folder.mkdir()
    scenes = sorted((root / "cityscapes" / "leftImg8bit" / "val").glob("*/*.png"))
    for i, scene in enumerate(scenes):
        shutil.copy(scene, folder / f"scene{i}.png")
    small = np.asarray(Image.open(scenes[0]).convert("RGB"))[8:56, 16:112]
    Image.fromarray(small).save(folder / "small.png")
    return folder


def read_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def run_demo(args: List[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DEMO), "--config-file", str(CONFIG)] + args,
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def load_demo_module():
    return import_script(DEMO, "hrda_demo_script")


def palette_ids(picture: np.ndarray) -> np.ndarray:
    """Class ids of a palette picture; asserts every pixel colour is a palette colour."""
    match = (picture[:, :, None, :].astype(np.int64) == PALETTE[None, None]).all(-1)  # H x W x 19
    assert match.any(-1).all(), f"{(~match.any(-1)).sum()} pixels are not palette colours"
    return match.argmax(-1)


# ------------------------------------------------------------------------------------------------------------
# independent expectations (reference 4.4 / 4.5 / 5.3 / 5.5 / 10.2)
# ------------------------------------------------------------------------------------------------------------
def bilinear(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def window_outputs(model, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """One test window ``1 x 3 x h x w`` (normalised), h = 64: LR = window x0.5; HR tiles of 64 at stride 32
    along x (y has one tile); all maps resized to the window size."""
    h, w = x.shape[-2:]
    lr_feats = model.backbone(F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False))
    lr = model.sem_seg_head.head(lr_feats)                               # stride 8 of the window
    att = torch.sigmoid(model.sem_seg_head.scale_attention(lr_feats))
    hr = torch.zeros(1, lr.shape[1], h // 4, w // 4)
    count = torch.zeros(1, 1, h // 4, w // 4)
    for x1 in range(0, w - 64 + 1, 32):                                  # w - 64 is a multiple of 32 here
        hr[..., x1 // 4:(x1 + 64) // 4] += model.sem_seg_head.head(model.backbone(x[..., x1:x1 + 64]))
        count[..., x1 // 4:(x1 + 64) // 4] += 1
    hr = hr / count
    up = lambda t: F.interpolate(t, scale_factor=2.0, mode="bilinear", align_corners=False)  # noqa: E731
    fused = up(att) * hr + up((1 - att) * lr)
    attention = (up(att) * torch.softmax(fused, dim=1)).sum(1, keepdim=True)
    return {"fused": bilinear(fused, (h, w)), "lr": bilinear(up(lr), (h, w)), "hr": bilinear(hr, (h, w)),
            "attention": bilinear(attention, (h, w))}


def expected_outputs(model, rgb: np.ndarray) -> Dict[str, torch.Tensor]:
    """Test windows of 128x128 at stride 64 (they shrink to a 64-row image), averaged where they overlap."""
    x = model.normalize(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None])
    w = x.shape[-1]
    starts = sorted({min(i * 64, max(w - 128, 0)) for i in range(max(w - 128 + 63, 0) // 64 + 1)})
    with torch.no_grad():
        outs = [(s, window_outputs(model, x[..., s:s + 128])) for s in starts]
    result = {}
    for key in outs[0][1]:
        total = torch.zeros(1, outs[0][1][key].shape[1], x.shape[-2], w)
        count = torch.zeros(1, 1, x.shape[-2], w)
        for s, out in outs:
            total[..., s:s + out[key].shape[-1]] += out[key]
            count[..., s:s + out[key].shape[-1]] += 1
        result[key] = (total / count)[0]
    return result


def expected_argmax_rescaled(model, rgb: np.ndarray) -> np.ndarray:
    """mmcv imrescale to (128, 64) (OpenCV bilinear), the fused prediction, logits resized back, argmax."""
    h, w = rgb.shape[:2]
    f = min(128 / max(h, w), 64 / min(h, w))
    resized = cv2.resize(rgb, (int(w * f + 0.5), int(h * f + 0.5)), interpolation=cv2.INTER_LINEAR)
    logits = expected_outputs(model, resized)["fused"][None]
    return bilinear(logits, (h, w))[0].argmax(0).numpy()


# ------------------------------------------------------------------------------------------------------------
# demo/demo.py as a subprocess
# ------------------------------------------------------------------------------------------------------------
def test_folder_with_a_corrupt_file_palette_pictures(weights, model, image_folder, tmp_path):
    inputs = tmp_path / "inputs"
    shutil.copytree(image_folder, inputs)
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    out = tmp_path / "out"
    proc = run_demo(["--input", str(inputs), "--output", str(out), "--opacity", "1",
                     "--opts", "MODEL.WEIGHTS", weights] + TEST_OPTS, tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log
    assert "broken.png" in log and "could not be decoded" in log
    assert "wrote 4 of 5" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["scene0.png", "scene1.png", "scene2.png", "small.png"]
    for name in ("scene0", "scene1", "scene2", "small"):
        rgb = read_rgb(inputs / f"{name}.png")
        picture = read_rgb(out / f"{name}.png")
        assert picture.shape == rgb.shape
        ids = palette_ids(picture)
        expected = expected_argmax_rescaled(model, rgb)
        assert (ids == expected).mean() >= 0.999, name
        assert len(np.unique(ids)) >= 3  # the test can tell a wrong channel order or a wrong model apart
        swapped = expected_argmax_rescaled(model, np.ascontiguousarray(rgb[:, :, ::-1]))
        assert (swapped != expected).mean() > 0.05


@pytest.fixture(scope="module")
def clip(image_folder, tmp_path_factory) -> Path:
    """A 3-frame MJPG video of the generated scenes."""
    video = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (128, 64))
    assert writer.isOpened()
    for i in range(3):
        writer.write(cv2.imread(str(image_folder / f"scene{i}.png")))
    writer.release()
    return video


def read_frames(path: Path) -> List[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def test_video_same_frame_count(weights, image_folder, clip, tmp_path):
    out = tmp_path / "out"
    proc = run_demo(["--video-input", str(clip), "--output", str(out),
                     "--opts", "MODEL.WEIGHTS", weights] + TEST_OPTS, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = out / "clip.avi"
    assert f"wrote 3 frame(s) (fused) to {result}" in proc.stdout
    frames = read_frames(result)
    assert len(frames) == 3 and all(f.shape == (64, 128, 3) for f in frames)
    assert np.abs(frames[0].astype(int) - cv2.imread(str(image_folder / "scene0.png")).astype(int)).mean() > 5


@pytest.mark.slow  # a demo.py start on a video (~13 s)
def test_video_output_file_name_of_another_container_is_the_file(weights, clip, tmp_path):
    out = tmp_path / "v.mkv"
    proc = run_demo(["--video-input", str(clip), "--output", str(out),
                     "--opts", "MODEL.WEIGHTS", weights] + TEST_OPTS, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.is_file() and f"wrote 3 frame(s) (fused) to {out}" in proc.stdout  # not a folder v.mkv/clip.avi
    assert len(read_frames(out)) == 3


def test_unreadable_video_input_is_one_line_naming_it(weights, tmp_path):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(bytes(range(256)) * 4)
    args = ["--video-input", str(garbage), "--output", str(tmp_path / "out"), "--opts", "MODEL.WEIGHTS", weights]
    proc = run_demo(args + TEST_OPTS, tmp_path)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.startswith("demo:")]
    assert lines == [f"demo: --video-input '{garbage}' is not a readable video (OpenCV decodes no frame from it); "
                     f"give a video file (e.g. .mp4, .avi), or images with --input"], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and "codec" not in proc.stderr  # the input is to blame
    assert not (tmp_path / "out").exists()
    debug = run_demo(args[:4] + ["--debug"] + args[4:] + TEST_OPTS, tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "is not a readable video" in debug.stderr


def test_video_output_names_the_extensions_it_can_write():
    demo_module = load_demo_module()
    assert demo_module.video_output("in/clip.avi", "out") == os.path.join("out", "clip.avi")
    assert demo_module.video_output("in/clip.flv", "out") == os.path.join("out", "clip.mp4")
    assert demo_module.video_output("in/clip.avi", "v.webm") == "v.webm"
    with pytest.raises(OSError, match=r"--output 'v.gif': cannot write a '.gif' video; give a file name ending in "
                                      r"\.mp4, \.mkv, \.mov, \.avi, \.webm, or a folder"):
        demo_module.video_output("in/clip.avi", "v.gif")


# ------------------------------------------------------------------------------------------------------------
# the same script in this process (its main()), for the other modes
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["attention", "lr", "hr"])
def test_hrda_out_pictures(mode, weights, model, image_folder, tmp_path, capsys):
    demo = load_demo_module()
    target = tmp_path / "scene0_out.png"
    status = demo.main(["--config-file", str(CONFIG), "--input", str(image_folder / "scene0.png"),
                        "--output", str(target), "--hrda-out", mode, "--opacity", "1",
                        "--opts", "MODEL.WEIGHTS", weights] + TEST_OPTS)
    assert status == 0 and f"wrote 1 of 1 picture(s) ({mode})" in capsys.readouterr().out
    rgb = read_rgb(image_folder / "scene0.png")
    picture = read_rgb(target)
    assert picture.shape == rgb.shape
    expected = expected_outputs(model, rgb)
    if mode == "attention":
        assert (picture[..., 0] == picture[..., 1]).all() and (picture[..., 0] == picture[..., 2]).all()
        grey = np.rint(255 * expected["attention"][0].numpy())
        assert np.abs(picture[..., 0] - grey).max() <= 1
        assert picture.std() > 10  # a spread attention, not a constant image
    else:
        ids = palette_ids(picture)
        assert (ids == expected[mode].argmax(0).numpy()).mean() >= 0.999
        assert (ids != expected["fused"].argmax(0).numpy()).mean() > 0.01  # lr/hr differ from the fusion


def test_single_image_overlay_blends_the_palette(weights, model, image_folder, tmp_path, capsys):
    demo = load_demo_module()
    target = tmp_path / "overlay.png"
    assert demo.main(["--config-file", str(CONFIG), "--input", str(image_folder / "scene1.png"),
                      "--output", str(target), "--opts", "MODEL.WEIGHTS", weights] + TEST_OPTS) == 0
    rgb = read_rgb(image_folder / "scene1.png")
    picture = read_rgb(target).astype(np.float64)
    assert picture.shape == rgb.shape
    ids = expected_argmax_rescaled(model, rgb)
    blend = 0.5 * rgb + 0.5 * PALETTE[ids]  # default opacity 0.5
    # Region outlines and the class names (10 px text on dark boxes) cover much of a 64x128 picture; inside
    # the regions (one class in the 5x5 neighbourhood) many pixels are still the blend (random colours: ~0 %)
    kernel = np.ones((5, 5), np.uint8)
    interior = cv2.erode(ids.astype(np.uint8), kernel) == cv2.dilate(ids.astype(np.uint8), kernel)
    close = np.abs(picture - blend).max(-1) <= 2
    assert interior.mean() > 0.2 and close[interior].mean() >= 0.2


# ------------------------------------------------------------------------------------------------------------
# predictor and visualisation API
# ------------------------------------------------------------------------------------------------------------
def test_predictor_outputs_two_test_windows(weights, model):
    """A 64x192 image is two overlapping test windows (x1 = 0 and 64); BGR input is flipped to RGB."""
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (64, 192, 3), dtype=np.uint8)
    rgb[:, :, 0] = np.linspace(0, 255, 192, dtype=np.uint8)[None]
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    expected = expected_outputs(model, rgb)
    cfg = demo_cfg(weights)
    cfg.INPUT.TEST.SCALE = [192, 64]  # no rescale
    for mode in ("fused", "lr", "hr", "attention"):
        predictor = SemSegPredictor(cfg, mode)
        got = predictor(bgr, input_format="BGR")
        key = "attention" if mode == "attention" else "sem_seg"
        assert set(got) == {key}
        assert got[key].shape == expected[mode].shape == ((1,) if mode == "attention" else (19,)) + rgb.shape[:2]
        torch.testing.assert_close(got[key], expected[mode], rtol=1e-4, atol=1e-4, msg=mode)
        assert torch.equal(predictor(rgb, input_format="RGB")[key], got[key])


def test_predictor_rejects_bad_arguments(weights):
    cfg = demo_cfg(weights)
    with pytest.raises(ValueError, match="hrda_out='ATT'"):
        SemSegPredictor(cfg, "ATT")
    single = cfg.clone()
    single.MODEL.HRDA.SCALES = [1.0]
    with pytest.raises(ValueError, match="two-scale"):
        SemSegPredictor(single, "lr")
    predictor = SemSegPredictor(cfg)
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        predictor(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="input_format"):
        predictor(np.zeros((8, 8, 3), np.uint8), input_format="YUV")


def test_overlay_colours_come_from_the_metadata():
    meta = MetadataCatalog.get("cityscapes_fine_sem_seg_val")
    image = np.full((64, 128, 3), 100, np.uint8)
    sem_seg = np.zeros((64, 128), np.int64)
    sem_seg[:, 64:] = 10  # road | sky
    exact = sem_seg_overlay(image, sem_seg, meta, 1.0)
    assert (exact[:, :64] == PALETTE[0]).all() and (exact[:, 64:] == PALETTE[10]).all()
    half = sem_seg_overlay(image, sem_seg, meta, 0.5).astype(np.float64)
    # corners: away from the outlines and from the class names written at the region centres
    assert np.abs(half[3:8, 3:8] - (50 + 0.5 * PALETTE[0])).max() <= 2
    assert np.abs(half[3:8, 120:125] - (50 + 0.5 * PALETTE[10])).max() <= 2
    other = Metadata(name="my_split", stuff_classes=meta.stuff_classes,
                     stuff_colors=[[i, 255 - i, 7] for i in range(19)])
    assert (sem_seg_overlay(image, sem_seg, other, 1.0)[:, 64:] == [10, 245, 7]).all()
    assert (sem_seg_overlay(image, sem_seg, meta, 0.0) == image).all()
    with pytest.raises(ValueError, match="opacity"):
        sem_seg_overlay(image, sem_seg, meta, 1.5)


def test_metadata_without_colours_is_rejected(weights):
    with pytest.raises(ValueError, match="'no_colours_split' has none stuff_colors"):
        check_sem_seg_metadata(Metadata(name="no_colours_split", stuff_classes=["a"] * 19), 19)
    MetadataCatalog.get("hrda_demo_test_no_colours").set(stuff_classes=["a"] * 19)
    with pytest.raises(ValueError, match="'hrda_demo_test_no_colours' has none stuff_colors"):
        VisualizationDemo(demo_cfg(weights), metadata_name="hrda_demo_test_no_colours")
    with pytest.raises(ValueError, match="opacity"):
        VisualizationDemo(demo_cfg(weights), opacity=2.0)
