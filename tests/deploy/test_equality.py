"""Exported models equal eager PyTorch (issue 27, "Must show"): |logits diff| <= 1e-4 x max(1, max |eager logit|) (the
exporter's rule; tests/deploy/exports.py) and >= 99.99 % argmax agreement.

(a) ``DeployPredictor(folder)(image)`` vs ``SemSegPredictor(cfg)(image)`` (same checkpoint) on a 512x1024 and a
    333x517 uint8 image (both go through the test rescale and the resize of the logits back);
(b) ``ExportedModel(folder).inference(x)`` vs ``model.inference(model.normalize(x))`` on a 333x517 image (odd, no
    rescale: windows shifted back to the border, tiles not on a multiple of the output stride); fixed-shape graphs
    (ViTs) take it where its windows are their traced window size, else the runtime refuses it with the fix;
and HRDA's runtime variants: TEST.MODE whole (one window's tiles plan), TEST.SLIDE.BATCHED False (window-by-window
tile cache), images smaller than one window (windows and tiles shrink, as eager), TEST.SLIDE.MERGE probabilities.

Default suite: (a) of the demo HRDA model in both formats and of the whole-inference DAFormer in ONNX, (b) of the
DAFormer at 333x517 and of the demo HRDA ONNX on 141x203 and 97x75 (6 windows and one shrunk window instead of the
40 windows of 333x517); the variants run on the demo HRDA ONNX export with the variant written into a copy of its
manifest (the graphs do not depend on these keys). ``slow``: every family x format, (b) at 333x517, and each variant
exported for real. The families: tests/deploy/exports.py.
"""
import json
import os
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model

from hrda_d2.checkpoint import load_model_weights
from hrda_d2_deploy import DeployPredictor, ExportedModel, ExportedModelError
from hrda_d2_deploy.runtime import MANIFEST
from tests.deploy.exports import FAMILIES, FORMATS, assert_equal_to_eager, family_cfg, make_batch, make_image

IMAGE_SIZES = [(512, 1024), (333, 517)]
ODD = (333, 517)


def _matrix(default):
    return [pytest.param(family, fmt, id=f"{family}-{fmt}", marks=() if (family, fmt) in default else pytest.mark.slow)
            for family in FAMILIES for fmt in FORMATS]


def _runs_at(model: ExportedModel, image_hw) -> bool:
    """Whether every graph takes the windows / tiles of an image of ``image_hw`` (fixed-shape graphs: only their
    traced shape; slide windows are the window size for images at least one window large)."""
    if all(g["dynamic"] for g in model.manifest["graphs"].values()):
        return True
    if model.mode == "whole":
        return False
    return all(s >= w for s, w in zip(image_hw, model.window_size))


def _eager_fn(model):
    """``batch -> model.inference(model.normalize(batch))`` as NumPy."""
    def run(batch):
        with torch.no_grad():
            return model.inference(model.normalize(torch.from_numpy(batch))).numpy()
    return run


def _check_inference(what, deployed: ExportedModel, eager_fn, sizes):
    """``deployed.inference`` vs ``eager_fn`` on images of ``sizes`` (``(H, W)`` or ``(H, W, N)`` for a batch of
    N); sizes that a fixed-shape graph does not take must be refused with the fix."""
    for height, width, *n in sizes:
        batch = make_batch(height, width, n=n[0] if n else 1)
        if not _runs_at(deployed, (height, width)):
            with pytest.raises(ExportedModelError, match="--image-size"):
                deployed.inference(batch)
            continue
        assert_equal_to_eager(f"{what} inference {len(batch)}x{height}x{width}", deployed.inference(batch),
                              eager_fn(batch))


def _check_export_inference(exported, sizes, what=None):
    _check_inference(what or f"{exported.family} {exported.fmt}", ExportedModel(exported.folder),
                     exported.eager_inference, sizes)


# ------------------------------------------------------------------------------------------- (a) the predictor
@pytest.mark.parametrize("family,fmt", _matrix({("demo_hrda", "onnx"), ("demo_hrda", "torchscript"),
                                                ("daformer", "onnx")}))
def test_deploy_predictor_equals_eager_predictor(exports, family, fmt):
    exported = exports.get(family, fmt)
    deploy = DeployPredictor(exported.folder)
    for height, width in IMAGE_SIZES:
        image = make_image(height, width)
        ours = deploy(image)["sem_seg"]
        with torch.no_grad():
            eager = exported.eager()(image)["sem_seg"].numpy()
        assert ours.shape == eager.shape == (exported.manifest["num_classes"], height, width)
        assert_equal_to_eager(f"{family} {fmt} predictor {height}x{width}", ours, eager)


# ------------------------------------------------------------------------------------------- (b) the inference
@pytest.mark.parametrize("family,fmt", _matrix({("daformer", "onnx")}))
def test_exported_inference_equals_eager_inference_on_an_odd_size(exports, family, fmt):
    """333 x 517 without rescale (the demo HRDA: 5 x 8 windows of 128, each with 9 tiles)."""
    _check_export_inference(exports.get(family, fmt), [ODD])


@pytest.mark.parametrize("fmt", ["onnx", pytest.param("torchscript", marks=pytest.mark.slow)])
def test_demo_hrda_inference_on_odd_and_small_images_equals_eager(exports, fmt):
    """141 x 203 (a batch of two): 2 x 3 windows, the last ones shifted back to the border (off the tile grid);
    97 x 75: smaller than one 128 x 128 window, so the window and its tiles shrink as in the eager model (and x 2 of
    the context logits does not reach the HR logits' size: the fusion resizes to it)."""
    _check_export_inference(exports.get("demo_hrda", fmt), [(141, 203, 2), (97, 75)])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_demo_hrda_inference_on_an_image_smaller_than_a_window_in_one_axis(exports, fmt):
    _check_export_inference(exports.get("demo_hrda", fmt), [(100, 201), (150, 90)])


# ---------------------------------------------------------------------------------------------- HRDA variants
VARIANTS = {  # name -> (config overrides, what they change in the manifest)
    "whole": (["TEST.MODE", "whole"], {"mode": "whole"}),
    "unbatched": (["TEST.SLIDE.BATCHED", "False"], {"window": {"batched": False}}),
    "probabilities": (["TEST.SLIDE.MERGE", "probabilities"], {"window": {"merge": "probabilities"}}),
}
# each variant on an odd image of 2 x 3 windows (shifted back to the border; TEST.MODE whole: one odd window)
VARIANT_SIZES = [(141, 203)]


def _eager_model(exported, opts):
    cfg = family_cfg(exported.family, list(opts) + ["MODEL.WEIGHTS", exported.cfg.MODEL.WEIGHTS])
    model = build_model(cfg).eval()
    load_model_weights(model, cfg.MODEL.WEIGHTS)
    return model


def _manifest_variant(folder: str, target: Path, changes: dict) -> str:
    """A copy of the exported folder (graph files linked) whose manifest has ``changes`` (nested dicts merged)."""
    target.mkdir()
    with open(os.path.join(folder, MANIFEST), encoding="utf-8") as f:
        manifest = json.load(f)
    for key, value in changes.items():
        if isinstance(value, dict):
            manifest[key].update(value)
        else:
            manifest[key] = value
    for graph in manifest["graphs"].values():
        os.symlink(os.path.join(folder, graph["file"]), target / graph["file"])
    (target / MANIFEST).write_text(json.dumps(manifest))
    return str(target)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hrda_runtime_variants_equal_eager(exports, tmp_path, variant):
    """The demo HRDA ONNX graphs with the variant in the manifest vs the eager model built with the variant."""
    opts, changes = VARIANTS[variant]
    exported = exports.get("demo_hrda", "onnx")
    folder = _manifest_variant(exported.folder, tmp_path / variant, changes)
    model = ExportedModel(folder)
    assert (model.mode, model.batched, model.merge_probabilities) == (
        changes.get("mode", "slide"), changes.get("window", {}).get("batched", True),
        changes.get("window", {}).get("merge") == "probabilities")
    _check_inference(f"demo_hrda onnx {variant} (manifest)", model, _eager_fn(_eager_model(exported, opts)),
                     VARIANT_SIZES)


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hrda_variants_exported_equal_eager(exports, variant):
    """Each variant exported with its config: the manifest records it, the runtime equals eager on odd / small
    images (and 333x517), and the predictor equals the eager predictor."""
    opts, changes = VARIANTS[variant]
    exported = exports.get("demo_hrda", "onnx", opts=opts)
    for key, value in changes.items():
        if isinstance(value, dict):
            assert {k: exported.manifest[key][k] for k in value} == value
        else:
            assert exported.manifest[key] == value
    _check_export_inference(exported, VARIANT_SIZES + [(97, 75), ODD], what=f"demo_hrda onnx {variant} (exported)")
    deploy = DeployPredictor(exported.folder)
    for height, width in IMAGE_SIZES:
        image = make_image(height, width)
        with torch.no_grad():
            eager = exported.eager()(image)["sem_seg"].numpy()
        assert_equal_to_eager(f"demo_hrda onnx {variant} predictor {height}x{width}", deploy(image)["sem_seg"], eager)
