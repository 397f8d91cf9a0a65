"""demo/demo.py --exported DIR: the exported model (hrda_d2_deploy.DeployPredictor) for images, folders and videos,
with the pictures and output names of the eager demo and its predictions (issue 27).

One ONNX export of the tiny demo HRDA (the seeded weights of test_demo_predict.py, INPUT.TEST.SCALE [128, 64]: one
64x128 window of 3 HR tiles per image) is shared by the module. The demo runs in this process (its main()), eager
and exported on the same weights; pictures at --opacity 1 are palette images, decoded back to class ids.
"""
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from hrda_d2 import load_config
from hrda_d2.checkpoint import load_model_weights
from hrda_d2.export import export_model, sample_image
from hrda_d2.utils.visualization import sem_seg_overlay
from hrda_d2_deploy import DeployPredictor, RuntimeOptions
from tests.demo.test_demo_predict import (CONFIG, DEMO, REPO, TEST_OPTS, clip, image_folder,  # noqa: F401
                                          palette_ids, read_frames, read_rgb, weights)
from tests.helpers.scripts import import_script

class_ids = import_script(REPO / "demo" / "predictor.py", "hrda_demo_exported_predictor").class_ids
MIN_AGREEMENT = 0.9999  # argmax of the exported demo vs the eager demo


@pytest.fixture(scope="module")
def demo():
    return import_script(DEMO, "hrda_demo_exported_script")


@pytest.fixture(scope="module")
def exported(weights, tmp_path_factory) -> Path:
    """The demo model with ``weights`` exported to ONNX (graphs tiles + window, config.yaml beside them)."""
    cfg = load_config(str(CONFIG), ["MODEL.WEIGHTS", weights] + TEST_OPTS)
    model = build_model(cfg).eval()
    load_model_weights(model, weights, cfg.TEST.WEIGHTS_SOURCE)
    folder = tmp_path_factory.mktemp("exported") / "demo_hrda_onnx"
    with torch.no_grad():
        export_model(model, cfg, str(folder), "onnx", image=sample_image(cfg))
    return folder


@pytest.fixture(scope="module")
def nested_inputs(image_folder, tmp_path_factory) -> Path:
    """The generated images with one in a subfolder (its output keeps the relative name)."""
    root = tmp_path_factory.mktemp("nested") / "inputs"
    shutil.copytree(image_folder, root)
    (root / "sub").mkdir()
    shutil.move(str(root / "scene2.png"), root / "sub" / "scene2.png")
    return root


def relative_files(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_exported_folder_equals_the_eager_demo(demo, exported, weights, nested_inputs, tmp_path, capsys):
    eager_out, exported_out = tmp_path / "eager", tmp_path / "exported"
    assert demo.main(["--config-file", str(CONFIG), "--input", str(nested_inputs), "--output", str(eager_out),
                      "--opacity", "1", "--opts", "MODEL.WEIGHTS", weights] + TEST_OPTS) == 0
    # no --config-file: the folder's config.yaml names and colours the classes
    assert demo.main(["--exported", str(exported), "--input", str(nested_inputs), "--output", str(exported_out),
                      "--opacity", "1", "--threads", "1", "--ort-opt-level", "extended"]) == 0
    assert f"wrote 4 of 4 picture(s) (fused) to {exported_out}" in capsys.readouterr().out
    names = relative_files(exported_out)
    assert names == relative_files(eager_out) == ["scene0.png", "scene1.png", "small.png", "sub/scene2.png"]
    same = total = 0
    for name in names:
        eager_ids, exported_ids = (palette_ids(read_rgb(out / name)) for out in (eager_out, exported_out))
        assert exported_ids.shape == read_rgb(nested_inputs / name).shape[:2]
        same += int((eager_ids == exported_ids).sum())
        total += eager_ids.size
    assert len(np.unique(eager_ids)) >= 3  # a prediction with several classes, not a constant
    assert same / total >= MIN_AGREEMENT, f"{total - same} of {total} pixels differ"


def test_exported_single_image_overlay(demo, exported, image_folder, tmp_path):
    """One image to a file name, default opacity: the overlay of the deploy predictor's numpy logits."""
    target = tmp_path / "overlay.png"
    assert demo.main(["--exported", str(exported), "--input", str(image_folder / "scene1.png"),
                      "--output", str(target), "--ort-opt-level", "basic"]) == 0
    rgb = read_rgb(image_folder / "scene1.png")
    logits = DeployPredictor(str(exported), RuntimeOptions(opt_level="disable"))(rgb, input_format="RGB")["sem_seg"]
    assert isinstance(logits, np.ndarray) and logits.shape == (19, 64, 128)
    assert np.array_equal(class_ids(torch.from_numpy(logits)), class_ids(logits))  # the drawing takes both
    expected = sem_seg_overlay(rgb, logits.argmax(0), MetadataCatalog.get("cityscapes_fine_sem_seg_val"), 0.5)
    assert np.array_equal(read_rgb(target), expected)


def test_exported_video_equals_the_eager_video(demo, exported, weights, clip, tmp_path, capsys):
    eager_out, exported_out = tmp_path / "eager", tmp_path / "exported"
    assert demo.main(["--config-file", str(CONFIG), "--video-input", str(clip), "--output", str(eager_out),
                      "--opacity", "1", "--opts", "MODEL.WEIGHTS", weights] + TEST_OPTS) == 0
    assert demo.main(["--exported", str(exported), "--video-input", str(clip), "--output", str(exported_out),
                      "--opacity", "1"]) == 0
    assert f"wrote 3 frame(s) (fused) to {exported_out / 'clip.avi'}" in capsys.readouterr().out
    eager_frames, exported_frames = read_frames(eager_out / "clip.avi"), read_frames(exported_out / "clip.avi")
    assert len(exported_frames) == len(eager_frames) == 3
    for eager_frame, exported_frame in zip(eager_frames, exported_frames):
        assert exported_frame.shape == (64, 128, 3)
        # the same palette pictures through the same (lossy) MJPG encoder
        assert np.abs(eager_frame.astype(int) - exported_frame.astype(int)).mean() < 0.5


def damaged_copy(exported: Path, folder: Path) -> Path:
    """``exported`` with its tiles graph cut to 500 bytes (the other files linked)."""
    folder.mkdir()
    for path in exported.iterdir():
        os.symlink(path, folder / path.name)
    os.unlink(folder / "tiles.onnx")
    (folder / "tiles.onnx").write_bytes((exported / "tiles.onnx").read_bytes()[:500])
    return folder


def test_bad_exported_folders_are_one_line_naming_them(demo, exported, image_folder, tmp_path):
    def refusal(*args: str) -> str:
        with pytest.raises(SystemExit) as e:
            demo.main(list(args) + ["--input", str(image_folder), "--output", str(tmp_path / "out")])
        return e.value.code  # a string: printed on stderr, exit status 1 (as the demo's other input errors)

    missing = tmp_path / "missing"
    assert refusal("--exported", str(missing)) == (
        f"demo: --exported {missing}: no such folder; give the --output folder of tools/deploy/export_model.py")
    damaged = damaged_copy(exported, tmp_path / "damaged")
    message = refusal("--exported", str(damaged))
    assert message.startswith(f"demo: {damaged / 'tiles.onnx'}: onnxruntime cannot load it (")
    assert message.endswith("the file is damaged or incomplete: export the model again with "
                            "tools/deploy/export_model.py") and "\n" not in message
    no_config = tmp_path / "no_config"
    shutil.copytree(damaged, no_config, symlinks=True)
    os.unlink(no_config / "config.yaml")
    assert refusal("--exported", str(no_config)) == (
        f"demo: {no_config / 'config.yaml'}: missing (the exporter writes it for the class names and colours); "
        f"give the model's --config-file, or export again with tools/deploy/export_model.py")
    assert refusal("--exported", str(exported), "--hrda-out", "attention") == (
        "demo: --hrda-out attention needs the eager model (the exported graphs compute the fused prediction only); "
        "leave out --exported, or use --hrda-out fused")
    assert refusal("--config-file", str(CONFIG), "--providers", "CPUExecutionProvider") == (
        "demo: --providers sets the runtime of an exported model; add --exported DIR, or leave --providers out")
    assert not (tmp_path / "out").exists()
