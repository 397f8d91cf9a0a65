"""hrda_d2_deploy.numerics (NumPy) against the PyTorch operations of the eager model it replaces: F.interpolate
bilinear (align_corners=False), crop_utils.merge_windows (logits and softmax) and HRDAHead.merge_tiles on boxes that
are not multiples of the output stride. Random float32 inputs; tolerances are float32 rounding (1e-6 relative)."""
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from torch.nn import functional as F

from hrda_d2.modeling.meta_arch.crop_utils import merge_windows as torch_merge_windows
from hrda_d2_deploy.geometry import sliding_window_boxes
from hrda_d2_deploy.numerics import merge_tiles, merge_windows, resize_bilinear, softmax
from tests.helpers.tiny_configs import small_input_hrda_cfg


def _random(*shape, seed=0, scale=3.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("in_hw,out_hw", [
    ((7, 9), (33, 51)),      # up, odd factors
    ((33, 51), (7, 9)),      # down, odd factors
    ((16, 16), (64, 64)),    # up x4 (logits -> window)
    ((41, 130), (333, 517)),  # up to an odd image size
    ((333, 517), (128, 199)),  # down, not an integer factor
    ((5, 8), (5, 13)),       # one axis unchanged
    ((1, 6), (4, 3)),        # a single source row
])
def test_resize_bilinear_equals_torch_interpolate(in_hw, out_hw):
    x = _random(2, 3, *in_hw)
    ours = resize_bilinear(x, out_hw)
    ref = F.interpolate(torch.from_numpy(x), size=out_hw, mode="bilinear", align_corners=False).numpy()
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


def test_resize_bilinear_same_size_is_the_input():
    x = _random(1, 2, 5, 6)
    assert resize_bilinear(x, (5, 6)) is x


def test_softmax_equals_torch():
    x = _random(2, 19, 5, 7, scale=20.0)
    np.testing.assert_allclose(softmax(x), torch.softmax(torch.from_numpy(x), dim=1).numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("use_softmax", [False, True])
@pytest.mark.parametrize("canvas,window,stride", [((45, 77), (20, 30), (11, 13)), ((19, 23), (32, 32), (16, 16))])
def test_merge_windows_equals_crop_utils(use_softmax, canvas, window, stride):
    boxes = sliding_window_boxes(canvas, window, stride)
    windows = [_random(2, 5, y2 - y1, x2 - x1, seed=i) for i, (y1, y2, x1, x2) in enumerate(boxes)]
    ours = merge_windows(iter(windows), boxes, canvas, use_softmax=use_softmax)
    ref = torch_merge_windows((torch.from_numpy(w) for w in windows), boxes, canvas, softmax=use_softmax).numpy()
    assert ours.shape == ref.shape == (2, 5) + canvas
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


def test_merge_windows_refuses_uncovered_canvas_and_missing_windows():
    with pytest.raises(RuntimeError, match="uncovered"):
        merge_windows([_random(1, 2, 4, 4)], [(0, 4, 0, 4)], (4, 6))
    with pytest.raises(ValueError, match="got 1 window predictions for 2 boxes"):
        merge_windows([_random(1, 2, 4, 4)], [(0, 4, 0, 4), (0, 4, 2, 6)], (4, 6))


@pytest.fixture(scope="module")
def hrda_head():
    return build_model(small_input_hrda_cfg()).sem_seg_head.eval()


@pytest.mark.parametrize("window_hw", [(128, 128), (97, 75), (50, 75), (61, 130), (33, 47)])
def test_merge_tiles_equals_hrda_head(hrda_head, window_hw):
    """Tiles of 64 at stride 32 (shrunk to windows smaller than a tile) with logits of ``ceil(tile / 4)`` px, as
    MiT's stride-4 patch embedding gives: where a side is not a multiple of the output stride 4 the logits are one
    pixel larger than the truncated box ``int(c / 4)`` and both merges resize them to it."""
    stride = hrda_head.output_stride
    boxes = sliding_window_boxes(window_hw, (64, 64), (32, 32))
    tiles = [_random(2, 19, -(-(y2 - y1) // stride), -(-(x2 - x1) // stride), seed=i)
             for i, (y1, y2, x1, x2) in enumerate(boxes)]
    ours = merge_tiles(tiles, boxes, stride)
    with torch.no_grad():
        ref = hrda_head.merge_tiles([torch.from_numpy(t) for t in tiles], boxes).numpy()
    assert ours.shape == ref.shape == (2, 19, window_hw[0] // stride, window_hw[1] // stride)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
