"""Exact HR tile reuse in slide inference (docs/method.md §4.4-4.5).

The tile plan is checked against boxes written out by hand from the §4.4/§4.5 formulas; the model output with
shared tiles is checked against the per-window computation (REUSE_HR_TILES False, the path that
tests/test_hrda_reference.py pins to the original) on a tiny MiT-b0 HRDA in eval mode.
"""
import pytest
import torch
from detectron2.modeling import build_model
from tests.helpers.tiny_configs import small_input_hrda_cfg

from hrda_d2_deploy.geometry import shared_tile_plan


def windows(h, w, win, stride):
    """§4.5 window boxes, written out independently of crop_utils."""
    out = []
    for hi in range(max(h - win[0] + stride[0] - 1, 0) // stride[0] + 1):
        for wi in range(max(w - win[1] + stride[1] - 1, 0) // stride[1] + 1):
            y2, x2 = min(hi * stride[0] + win[0], h), min(wi * stride[1] + win[1], w)
            out.append((max(y2 - win[0], 0), y2, max(x2 - win[1], 0), x2))
    return out


def test_cityscapes_plan_has_21_distinct_of_27_tiles():
    wins = windows(1024, 2048, (1024, 1024), (512, 512))
    assert [b[2] for b in wins] == [0, 512, 1024]
    plan = shared_tile_plan(wins, (512, 512), (256, 256))
    assert plan.num_tile_passes == 27 and len(plan.tiles) == 21
    expected = {(y, y + 512, x, x + 512) for y in (0, 256, 512) for x in range(0, 1537, 256)}
    assert set(plan.tiles) == expected
    for (wy1, _, wx1, _), entries in zip(wins, plan.window_tiles):
        rel = [r for _, r in entries]
        assert rel == [(y, y + 512, x, x + 512) for y in (0, 256, 512) for x in (0, 256, 512)]  # row-major
        for i, r in entries:
            assert plan.tiles[i] == (wy1 + r[0], wy1 + r[1], wx1 + r[2], wx1 + r[3])


def test_unaligned_windows_share_only_identical_boxes():
    # 1080 x 1920 (ACDC): windows y1 in {0, 56}, x1 in {0, 512, 896}; the shifted ones are off the tile grid
    wins = windows(1080, 1920, (1024, 1024), (512, 512))
    plan = shared_tile_plan(wins, (512, 512), (256, 256))
    every = [(wins[w][0] + r[0], wins[w][0] + r[1], wins[w][2] + r[2], wins[w][2] + r[3])
             for w, entries in enumerate(plan.window_tiles) for _, r in entries]
    assert plan.num_tile_passes == 54 and sorted(set(every)) == sorted(plan.tiles)
    # x: {0,256,512} + {512,768,1024} + {896,1152,1408} -> 8 distinct columns; y: {0,256,512} + {56,312,568}
    assert len(plan.tiles) == 6 * 8
    # a window smaller than the tile grid shrinks: one tile per window, shared where identical
    small = shared_tile_plan(windows(60, 200, (64, 128), (32, 64)), (64, 64), (32, 32))
    assert all(len({i for i, _ in e}) == len(e) for e in small.window_tiles)


def _randomise_bn(model):
    """Non-trivial running statistics, so that eval-mode BN is not the identity."""
    g = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("hw", [(128, 256), (150, 230)])  # on the tile grid / shifted last windows
def test_shared_tiles_equal_per_window_computation(batched, hw):
    model = build_model(small_input_hrda_cfg(**{"TEST.SLIDE.BATCHED": batched})).eval()
    _randomise_bn(model)
    images = torch.randn(2, 3, *hw)
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        assert model.tiles_can_be_shared
        shared = model.slide_inference(images)
        shared_rows = sum(calls)
        calls.clear()
        model.reuse_hr_tiles = False
        assert not model.tiles_can_be_shared
        plain = model.slide_inference(images)
        plain_rows = sum(calls)
    wins = windows(*hw, (128, 128), (64, 64))
    plan = shared_tile_plan(wins, (64, 64), (32, 32))
    # backbone rows: LR windows + tiles; shared runs each distinct tile once
    assert plain_rows == 2 * (len(wins) + plan.num_tile_passes)
    assert shared_rows == 2 * (len(wins) + len(plan.tiles)) < plain_rows
    diff = (shared - plain).abs().max().item()
    assert diff <= 1e-5, f"max |shared - per-window| = {diff:.3g}"


def test_no_reuse_with_train_mode_batch_norm_or_blur():
    model = build_model(small_input_hrda_cfg()).train()
    assert not model.tiles_can_be_shared  # BN on batch statistics: tiles depend on their batch
    model.eval()
    assert model.tiles_can_be_shared
    model.blur_hr_crop = True
    assert not model.tiles_can_be_shared
    assert build_model(small_input_hrda_cfg(**{"TEST.SLIDE.REUSE_HR_TILES": False})).eval().tiles_can_be_shared is False
