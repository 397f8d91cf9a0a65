"""HRDA meta-architecture: crop boxes, sliding windows, scale fusion and losses checked against independent
NumPy implementations of the reference text (sections 4, 5, 6), and a tiny MiT-b0 HRDA through the
Detectron2 API."""
from typing import Sequence

import numpy as np
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone, build_model
from torch import nn
from torch.nn import functional as F

from hrda_d2.config import config_problems
from hrda_d2.modeling.losses import pixel_weighted_cross_entropy
from hrda_d2.modeling.meta_arch import HRDA, HRDAHead, SingleScaleHead
from hrda_d2.modeling.meta_arch.crop_utils import merge_windows, random_crop_box, scale_box, sliding_window_boxes
from hrda_d2.modeling.meta_arch.scale_fusion import fuse_scales
from tests.helpers.tiny_configs import tiny_hrda_cfg


# ----------------------------------------------------------------------------------------------------------
# independent NumPy helpers (float64)
# ----------------------------------------------------------------------------------------------------------
def np_bilinear(x: np.ndarray, out_hw: Sequence[int]) -> np.ndarray:
    """Bilinear resize of the last two axes, align_corners=False (half-pixel centres, clamped at 0)."""

    def axis_weights(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        lam = src - i0
        m = np.zeros((n_out, n_in))
        m[np.arange(n_out), i0] += 1 - lam
        m[np.arange(n_out), i1] += lam
        return m

    mh = axis_weights(x.shape[-2], out_hw[0])
    mw = axis_weights(x.shape[-1], out_hw[1])
    return np.einsum("ij,...jk,lk->...il", mh, x, mw)


def np_avgpool(x: np.ndarray, k: int) -> np.ndarray:
    *lead, h, w = x.shape
    return x.reshape(*lead, h // k, k, w // k, k).mean(axis=(-3, -1))


def np_ce_all_pixels(logits: np.ndarray, labels: np.ndarray, weight=None, ignore=255) -> float:
    """sum(CE * w) over non-ignored pixels / (B*H*W) (reference 6, quirk 1)."""
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    valid = labels != ignore
    picked = np.take_along_axis(logits, np.where(valid, labels, 0)[:, None], 1)[:, 0]
    ce = np.where(valid, lse - picked, 0.0)
    if weight is not None:
        ce = ce * weight
    return ce.sum() / labels.size


def np_fuse(lr, hr, att, box, os=4, lr_scale=0.5):
    """Reference 5.3 steps 4-8: mask at LR resolution, scale LR, upsample both, insert HR, add."""
    b, _, h, w = lr.shape
    if box is not None:
        mask = np.zeros((b, 1, h, w))
        y1, y2, x1, x2 = (int(c / (os / lr_scale)) for c in box)
        mask[..., y1:y2, x1:x2] = 1
        att = att * mask
    scaled = (1 - att) * lr
    out_hw = (int(h / lr_scale), int(w / lr_scale))
    up = np_bilinear(scaled, out_hw)
    att_up = np_bilinear(att, out_hw)
    if box is not None:
        ins = np.zeros_like(up)
        y1, y2, x1, x2 = (int(c / os) for c in box)
        ins[..., y1:y2, x1:x2] = hr
    else:
        ins = hr
    return att_up * ins + up, att_up, scaled


# ----------------------------------------------------------------------------------------------------------
# crop boxes and windows
# ----------------------------------------------------------------------------------------------------------
def test_scale_box_truncates():
    box = (64, 192, 32, 160)  # the reference training box (input pixels)
    assert scale_box(box, 4) == (16, 48, 8, 40)  # HR logits, stride 4
    assert scale_box(box, 4 / 0.5) == (8, 24, 4, 20)  # LR logits, stride 8
    assert scale_box((3, 130, 5, 7), 4) == (0, 32, 1, 1)  # int() truncation, not rounding
    assert scale_box((504, 1016, 0, 512), 8) == (63, 127, 0, 64)


def test_random_crop_box_divisible_and_last_offset_never_drawn():
    np.random.seed(123)
    boxes = [random_crop_box((1024, 1024), (512, 512), 8) for _ in range(3000)]
    offsets_y = {b[0] for b in boxes}
    offsets_x = {b[2] for b in boxes}
    # randint(0, 513 // 8 = 64) * 8 -> {0, 8, ..., 504}: 512 (the full margin) is never drawn
    assert offsets_y == offsets_x == set(range(0, 505, 8))
    assert all(b[1] - b[0] == 512 and b[3] - b[2] == 512 for b in boxes)


def test_random_crop_box_uses_numpy_global_rng_rows_first():
    np.random.seed(7)
    box = random_crop_box((256, 320), (128, 128), 8)
    np.random.seed(7)
    oh = np.random.randint(0, (128 + 1) // 8) * 8
    ow = np.random.randint(0, (192 + 1) // 8) * 8
    assert box == (oh, oh + 128, ow, ow + 128)
    # a crop equal to the image: the whole image, no RNG draw
    state = np.random.get_state()[1].copy()
    assert random_crop_box((128, 96), (128, 96), 8) == (0, 128, 0, 96)
    assert np.array_equal(np.random.get_state()[1], state)


def test_sliding_windows_of_the_reference():
    # Cityscapes test image, 1024 windows stride 512 (reference 4.5)
    assert sliding_window_boxes((1024, 2048), (1024, 1024), (512, 512)) == [
        (0, 1024, 0, 1024), (0, 1024, 512, 1536), (0, 1024, 1024, 2048)]
    # ACDC / Dark Zurich: y1 in {0, 56}, x1 in {0, 512, 896}
    boxes = sliding_window_boxes((1080, 1920), (1024, 1024), (512, 512))
    assert [(b[0], b[2]) for b in boxes] == [(0, 0), (0, 512), (0, 896), (56, 0), (56, 512), (56, 896)]
    # HR tiles of a 1024 window: 512 crops at stride 256, rows outer -> 9 tiles
    tiles = sliding_window_boxes((1024, 1024), (512, 512), (256, 256))
    assert [(b[0], b[2]) for b in tiles] == [(y, x) for y in (0, 256, 512) for x in (0, 256, 512)]
    # the fixture's windows (hrda_mitb0_ref.json)
    assert sliding_window_boxes((256, 512), (256, 256), (128, 128)) == [(0, 256, 0, 256), (0, 256, 128, 384),
                                                                       (0, 256, 256, 512)]
    # an image smaller than the window: one window = the image, no padding
    assert sliding_window_boxes((100, 150), (256, 256), (128, 128)) == [(0, 100, 0, 150)]


@pytest.mark.parametrize("hw", [(100, 150), (300, 517), (129, 257), (1080, 1920), (37, 1000)])
def test_windows_cover_every_pixel_and_merge_averages(hw):
    window, stride = (128, 256), (64, 96)
    boxes = sliding_window_boxes(hw, window, stride)
    count = np.zeros(hw)
    for y1, y2, x1, x2 in boxes:
        assert 0 <= y1 < y2 <= hw[0] and 0 <= x1 < x2 <= hw[1]
        assert (y2 - y1, x2 - x1) == (min(window[0], hw[0]), min(window[1], hw[1]))
        count[y1:y2, x1:x2] += 1
    assert count.min() >= 1
    # merging window t filled with value t gives the mean of the covering windows' indices
    values = np.zeros(hw)
    for t, (y1, y2, x1, x2) in enumerate(boxes):
        values[y1:y2, x1:x2] += t
    windows = [torch.full((2, 1, y2 - y1, x2 - x1), float(t)) for t, (y1, y2, x1, x2) in enumerate(boxes)]
    merged = merge_windows(windows, boxes, hw)
    assert merged.shape == (2, 1, *hw)
    np.testing.assert_allclose(merged[1, 0].numpy(), values / count, rtol=1e-6)


def test_merge_windows_rejects_uncovered_pixels():
    with pytest.raises(RuntimeError, match="uncovered"):
        merge_windows([torch.ones(1, 1, 4, 4)], [(0, 4, 0, 4)], (4, 8))


# ----------------------------------------------------------------------------------------------------------
# scale fusion
# ----------------------------------------------------------------------------------------------------------
def test_masked_attention_border_is_blurred_at_lr_resolution():
    a, lr_v, hr_v = 0.8, 2.0, -1.0
    lr = torch.full((1, 1, 32, 32), lr_v)
    hr = torch.full((1, 1, 32, 32), hr_v)
    att = torch.full((1, 1, 32, 32), a)
    out = fuse_scales(lr, hr, att, lr_scale=0.5, output_stride=4, crop_box=(64, 192, 32, 160))
    att_up = out.attention[0, 0]
    # box / 4 = rows 16:48, cols 8:40 on the 64 x 64 canvas
    assert att_up[30, 20].item() == pytest.approx(a)
    assert att_up[16, 20].item() == pytest.approx(0.75 * a)  # first row inside: 0.75 * att + 0.25 * 0
    assert att_up[47, 20].item() == pytest.approx(0.75 * a)
    assert att_up[15, 20].item() == pytest.approx(0.25 * a)  # bleeds one row outside the box
    assert att_up[16, 8].item() == pytest.approx(0.5625 * a)
    assert att_up[10, 20].item() == 0
    fused = out.fused[0, 0]
    assert fused[15, 20].item() == pytest.approx(lr_v * (1 - 0.25 * a))  # no HR outside the box
    assert fused[16, 20].item() == pytest.approx(0.75 * a * hr_v + (1 - 0.75 * a) * lr_v)
    assert fused[30, 20].item() == pytest.approx(a * hr_v + (1 - a) * lr_v)
    assert fused[2, 2].item() == pytest.approx(lr_v)


@pytest.mark.parametrize("with_box", [True, False])
def test_fused_formula_and_order(with_box):
    rng = np.random.default_rng(0)
    lr = rng.normal(size=(2, 3, 16, 16))
    att = 1 / (1 + np.exp(-rng.normal(size=(2, 3, 16, 16))))
    box = (16, 80, 8, 72) if with_box else None
    hr = rng.normal(size=(2, 3, 16, 16) if with_box else (2, 3, 32, 32))
    expected, expected_att, expected_scaled = np_fuse(lr, hr, att, box)
    t = lambda a: torch.from_numpy(a).float()
    out = fuse_scales(t(lr), t(hr), t(att), lr_scale=0.5, output_stride=4, crop_box=box)
    np.testing.assert_allclose(out.fused.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(out.attention.numpy(), expected_att, atol=1e-6)
    np.testing.assert_allclose(out.scaled_lr.numpy(), expected_scaled, atol=1e-5)  # (1 - att) * lr at LR size
    # the op order matters: the naive att_up * hr + (1 - att_up) * up(lr) differs near borders
    lr_up = np_bilinear(lr, (32, 32))
    hr_ins = np.zeros_like(lr_up)
    if with_box:
        hr_ins[..., 4:20, 2:18] = hr
    else:
        hr_ins = hr
    naive = expected_att * hr_ins + (1 - expected_att) * lr_up
    assert np.abs(naive - expected).max() > 1e-3


def test_fixed_attention_selects_a_branch():
    lr = torch.randn(1, 2, 8, 8)
    hr = torch.randn(1, 2, 16, 16)
    up_lr = F.interpolate(lr, scale_factor=2.0, mode="bilinear", align_corners=False)
    torch.testing.assert_close(fuse_scales(lr, hr, 0.0, lr_scale=0.5).fused, up_lr)
    torch.testing.assert_close(fuse_scales(lr, hr, 1.0, lr_scale=0.5).fused, hr)
    # with a crop box a fixed attention is masked like a learned one (becomes a tensor)
    out = fuse_scales(lr, torch.randn(1, 2, 8, 8), 1.0, lr_scale=0.5, crop_box=(16, 48, 0, 32))
    assert torch.is_tensor(out.attention) and out.attention[0, 0, 0, 0] == 0


# ----------------------------------------------------------------------------------------------------------
# loss
# ----------------------------------------------------------------------------------------------------------
def test_cross_entropy_divides_by_all_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 6, 7)
    labels = torch.randint(0, 5, (2, 6, 7))
    labels[0, :2] = 255
    weight = torch.rand(2, 6, 7)
    weight[1, 3:] = 0
    expected = np_ce_all_pixels(logits.double().numpy(), labels.numpy(), weight.double().numpy())
    got = pixel_weighted_cross_entropy(logits, labels, weight)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert pixel_weighted_cross_entropy(logits, labels).item() == pytest.approx(
        np_ce_all_pixels(logits.double().numpy(), labels.numpy()), rel=1e-6)


# ----------------------------------------------------------------------------------------------------------
# HRDA with a stub backbone / heads whose outputs are known in closed form
# ----------------------------------------------------------------------------------------------------------
class PoolBackbone(Backbone):
    """``res2`` = 4x4 average pool of the image (3 channels, stride 4)."""

    def forward(self, x):
        return {"res2": F.avg_pool2d(x, 4)}

    def output_shape(self):
        return {"res2": ShapeSpec(channels=3, stride=4)}


class LinearHead(nn.Module):
    """1x1 linear map of ``res2``: logits = W @ f + b."""

    in_features = ["res2"]

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        super().__init__()
        self.weight = nn.Parameter(torch.from_numpy(weight).float())
        self.bias = nn.Parameter(torch.from_numpy(bias).float())

    def forward(self, features):
        return F.conv2d(features["res2"], self.weight[:, :, None, None], self.bias)


def np_head(f, w, b):
    return np.einsum("kc,nchw->nkhw", w, f) + b[None, :, None, None]


C = 4
RNG = np.random.default_rng(42)
W_SEG, B_SEG = RNG.normal(size=(C, 3)), RNG.normal(size=C)
W_ATT, B_ATT = RNG.normal(size=(C, 3)), RNG.normal(size=C)


def stub_hrda(scales=(1.0, 0.5), fixed_attention=None, hr_loss_weight=0.1, lr_loss_weight=0.0, **kwargs) -> HRDA:
    """HRDA of the stub backbone and heads: an ``HRDAHead`` (two scales) or ``SingleScaleHead`` around them (explicit
    arguments)."""
    seg = LinearHead(W_SEG, B_SEG)
    head = SingleScaleHead(head=seg, output_stride=4)
    if len(scales) == 2:
        head = HRDAHead(head=seg, scale_attention=None if fixed_attention is not None else LinearHead(W_ATT, B_ATT),
                        output_stride=4, lr_scale=min(scales), hr_loss_weight=hr_loss_weight,
                        lr_loss_weight=lr_loss_weight, fixed_attention=fixed_attention)
    args = dict(
        backbone=PoolBackbone(),
        sem_seg_head=head,
        scales=list(scales),
        pixel_mean=[0.0, 0.0, 0.0],
        pixel_std=[1.0, 1.0, 1.0],
        hr_crop_size=(32, 32),
        crop_coord_divisible=8,
    )
    args.update(kwargs)
    return HRDA(**args)


@pytest.mark.parametrize("hr_w,lr_w,blur", [(0.1, 0.0, False), (0.1, 0.2, False), (0.1, 0.0, True), (0.0, 0.0, False)])
def test_training_losses_equal_reference_computation(hr_w, lr_w, blur):
    rng = np.random.default_rng(1)
    img = rng.normal(size=(2, 3, 64, 64))
    labels = rng.integers(0, C, size=(2, 64, 64))
    labels[:, 56:] = 255
    weight = rng.uniform(size=(2, 64, 64))
    weight[:, :8] = 0
    box = (16, 48, 8, 40)
    model = stub_hrda(hr_loss_weight=hr_w, lr_loss_weight=lr_w, blur_hr_crop=blur)
    outputs = model.forward_train(
        torch.from_numpy(img).float(), torch.from_numpy(labels), torch.from_numpy(weight).float(), crop_box=box)
    losses = outputs.losses

    lr_img = np_avgpool(img, 2)  # bilinear x0.5 == 2x2 average pool
    hr_img = np_bilinear(lr_img, (64, 64)) if blur else img
    lr_feat = np_avgpool(lr_img, 4)
    lr_logits = np_head(lr_feat, W_SEG, B_SEG)  # 8 x 8
    hr_logits = np_head(np_avgpool(hr_img[..., 16:48, 8:40], 4), W_SEG, B_SEG)  # 8 x 8
    att = 1 / (1 + np.exp(-np_head(lr_feat, W_ATT, B_ATT)))
    fused = np_fuse(lr_logits, hr_logits, att, box)[0]
    ce_fused = np_ce_all_pixels(np_bilinear(fused, (64, 64)), labels, weight)
    ce_hr = np_ce_all_pixels(np_bilinear(hr_logits, (32, 32)), labels[:, 16:48, 8:40], weight[:, 16:48, 8:40])
    expected = {"loss_sem_seg": (1 - hr_w - lr_w) * ce_fused}
    if hr_w > 0:
        expected["loss_sem_seg_hr"] = hr_w * ce_hr
    if lr_w > 0:
        att_m = att.copy()
        att_m[..., :2, :] = att_m[..., 6:, :] = att_m[..., :, :1] = att_m[..., :, 5:] = 0  # box / 8 = 2:6, 1:5
        expected["loss_sem_seg_lr"] = lr_w * np_ce_all_pixels(np_bilinear((1 - att_m) * lr_logits, (64, 64)),
                                                              labels, weight)
    assert set(losses) == set(expected)
    for k, v in expected.items():
        assert losses[k].item() == pytest.approx(v, rel=1e-5), k
    assert outputs.crop_box == box
    np.testing.assert_allclose(outputs.features["res2"].numpy(), lr_feat, atol=1e-5)  # FEATURE_SCALE 0.5
    assert all(not k.startswith("loss") for k in outputs.metrics)


def test_random_detail_box_is_drawn_from_numpy_and_returned():
    model = stub_hrda()
    img, labels = torch.randn(1, 3, 64, 96), torch.zeros(1, 64, 96, dtype=torch.long)
    np.random.seed(11)
    out = model.forward_train(img, labels)
    np.random.seed(11)
    oh, ow = np.random.randint(0, 33 // 8) * 8, np.random.randint(0, 65 // 8) * 8
    assert out.crop_box == (oh, oh + 32, ow, ow + 32)
    assert not any(v == out.crop_box for v in vars(model).values() if isinstance(v, tuple))
    with pytest.raises(ValueError, match="crop_box"):
        model.forward_train(img, labels, crop_box=(0, 16, 0, 32))


@pytest.mark.parametrize("fixed", [0.0, 1.0])
def test_hr_slide_inference_places_tiles_by_box_over_4_and_averages(fixed):
    rng = np.random.default_rng(3)
    img = rng.normal(size=(2, 3, 96, 160))  # 32-crops at stride 16: 5 x 9 tiles per image
    model = stub_hrda(fixed_attention=fixed)
    with torch.no_grad():
        logits = model.whole_inference(torch.from_numpy(img).float())
        scales = model.forward_scales(torch.from_numpy(img).float())
    hr = np_head(np_avgpool(img, 4), W_SEG, B_SEG)  # tiles start at multiples of 4: merged = whole-image HR
    lr_up = np_bilinear(np_head(np_avgpool(np_avgpool(img, 2), 4), W_SEG, B_SEG), (24, 40))
    expected = np_bilinear(hr if fixed == 1.0 else lr_up, (96, 160))
    np.testing.assert_allclose(logits.numpy(), expected, atol=1e-4)
    # forward_scales exposes the branches; attention map = sum_c att_c softmax(fused)_c = the constant
    np.testing.assert_allclose(scales["hr"].numpy(), np_bilinear(hr, (96, 160)), atol=1e-4)
    np.testing.assert_allclose(scales["attention"].numpy(), np.full((2, 1, 96, 160), fixed), atol=1e-6)


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("hw", [(72, 100), (20, 28)])
def test_test_slide_inference_equals_window_average(batched, hw):
    rng = np.random.default_rng(4)
    img = rng.normal(size=(2, 3, *hw))
    model = stub_hrda(scales=(1.0,), test_crop_size=(32, 48), test_stride=(16, 24), test_batched=batched)
    with torch.no_grad():
        got = model.slide_inference(torch.from_numpy(img).float()).numpy()
    # independent: windows per reference 4.5, each = head output resized to the window, count-averaged
    h, w = hw
    preds, count = np.zeros((2, C, h, w)), np.zeros((h, w))
    for hi in range(max(h - 32 + 15, 0) // 16 + 1):
        for wi in range(max(w - 48 + 23, 0) // 24 + 1):
            y2, x2 = min(hi * 16 + 32, h), min(wi * 24 + 48, w)
            y1, x1 = max(y2 - 32, 0), max(x2 - 48, 0)
            win = img[..., y1:y2, x1:x2]
            preds[..., y1:y2, x1:x2] += np_bilinear(np_head(np_avgpool(win, 4), W_SEG, B_SEG), win.shape[-2:])
            count[y1:y2, x1:x2] += 1
    assert count.min() >= 1
    np.testing.assert_allclose(got, preds / count, atol=1e-4)


def _original_probability_merge(crops: torch.Tensor, coords, canvas_hw) -> torch.Tensor:
    """VFM-UDA's rule (training/utils/inference_collection.py, slide_inference_pre_cropped), re-implemented: the
    windows of ONE image as a batch ``W x C x h x w``; each softmaxed over C, added into a ``C x H x W`` canvas,
    divided by the float count matrix of the windows."""
    preds = torch.zeros(crops.shape[1], *canvas_hw)
    count = torch.zeros(1, *canvas_hw)
    for (y1, y2, x1, x2), crop in zip(coords, torch.softmax(crops, dim=1)):
        preds[:, y1:y2, x1:x2] += crop
        count[:, y1:y2, x1:x2] += 1
    return preds / count


@pytest.mark.parametrize("hw", [(70, 100), (32, 48), (20, 120)])
def test_probability_merge_equals_the_original_rule(hw):
    """TEST.SLIDE.MERGE "probabilities" (merge_windows(softmax=True)) = VFM-UDA's per-window softmax average, on
    random windows; the logits merge (default) is unchanged and its argmax can differ where windows overlap."""
    boxes = sliding_window_boxes(hw, (32, 48), (16, 24))
    gen = torch.Generator().manual_seed(5)
    crops = torch.randn(len(boxes), 2, 7, 32, 48, generator=gen) * 4  # window x image x class x h x w
    crops = crops[..., :min(32, hw[0]), :min(48, hw[1])]
    merged = merge_windows(list(crops), boxes, hw, softmax=True)
    for image in range(2):
        expected = _original_probability_merge(crops[:, image], boxes, hw)
        assert torch.equal(merged[image], expected)
    torch.testing.assert_close(merged.sum(dim=1), torch.ones(2, *hw))
    assert torch.equal(merge_windows(list(crops), boxes, hw), merge_windows(list(crops), boxes, hw, softmax=False))


@pytest.mark.parametrize("batched", [True, False])
def test_slide_merge_probabilities_in_the_meta_architecture(batched):
    """``HRDA(slide_merge="probabilities")``: slide inference = the original rule over the windows of the logits
    model's ``whole_inference``; whole mode and the default logits merge unchanged; other values refused."""
    img = torch.from_numpy(np.random.default_rng(6).normal(size=(2, 3, 72, 100))).float()
    kwargs = dict(scales=(1.0,), test_crop_size=(32, 48), test_stride=(16, 24), test_batched=batched)
    logits_model, prob_model = stub_hrda(**kwargs), stub_hrda(slide_merge="probabilities", **kwargs)
    assert logits_model.slide_merge == "logits"
    boxes = sliding_window_boxes((72, 100), (32, 48), (16, 24))
    with torch.no_grad():
        got = prob_model.slide_inference(img)
        windows = torch.stack([logits_model.whole_inference(img[..., y1:y2, x1:x2]) for y1, y2, x1, x2 in boxes])
        default = logits_model.inference(img)
        assert torch.equal(prob_model.whole_inference(img), logits_model.whole_inference(img))
    for image in range(2):
        torch.testing.assert_close(got[image], _original_probability_merge(windows[:, image], boxes, (72, 100)),
                                   atol=1e-6, rtol=0)
    # (batched windows round differently from one-by-one windows: tolerance, not equality)
    torch.testing.assert_close(default, merge_windows(list(windows), boxes, (72, 100)), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="TEST.SLIDE.MERGE"):
        stub_hrda(slide_merge="mean", **kwargs)
    cfg = tiny_hrda_cfg()
    assert cfg.TEST.SLIDE.MERGE == "logits"
    cfg.TEST.SLIDE.MERGE = "probs"
    assert any("TEST.SLIDE.MERGE" in p for p in config_problems(cfg))


# ----------------------------------------------------------------------------------------------------------
# tiny MiT-b0 HRDA through the Detectron2 API
# ----------------------------------------------------------------------------------------------------------
def tiny_cfg(**overrides):
    cfg = tiny_hrda_cfg(embed_dim=32)
    cfg.MODEL.HRDA.ATTENTION_EMBED_DIM = 16
    cfg.MODEL.HRDA.HR_CROP_SIZE = [64, 64]  # MiT needs >= 64 px inputs (sr-ratio-8 conv on the stride-4 map)
    cfg.TEST.SLIDE.CROP_SIZE = [128, 128]
    cfg.TEST.SLIDE.STRIDE = [64, 64]
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    return cfg


@pytest.mark.parametrize("mode,merge", [("whole", "logits"), ("slide", "logits"), ("slide", "probabilities")])
def test_tiny_hrda_inference_through_detectron2_api(mode, merge):
    model = build_model(tiny_cfg(**{"TEST.MODE": mode, "TEST.SLIDE.MERGE": merge})).eval()
    assert isinstance(model, HRDA) and isinstance(model.sem_seg_head, HRDAHead)
    assert model.sem_seg_head.scale_attention is not None
    assert not any(k.startswith("pixel_") for k in model.state_dict())
    inputs = [
        {"image": torch.rand(3, 100, 172) * 255, "height": 200, "width": 344},  # not a multiple of the window
        {"image": (torch.rand(3, 96, 80) * 255).to(torch.uint8)},  # smaller than the window, no height/width
    ]
    with torch.no_grad():
        outputs = model(inputs)
    assert outputs[0]["sem_seg"].shape == (19, 200, 344)
    assert outputs[1]["sem_seg"].shape == (19, 96, 80)
    assert all(torch.isfinite(o["sem_seg"]).all() for o in outputs)
    if merge == "probabilities":  # averaged probabilities, bilinearly resized: still a distribution per pixel
        assert all(torch.allclose(o["sem_seg"].sum(0), torch.ones(())) for o in outputs)


def test_tiny_hrda_training_forward_returns_finite_losses_and_gradients():
    model = build_model(tiny_cfg()).train()
    inputs = [{"image": torch.rand(3, 128, 128) * 255, "sem_seg": torch.randint(0, 19, (128, 128)),
               "weight": torch.rand(128, 128)} for _ in range(2)]
    losses = model(inputs)
    assert set(losses) == {"loss_sem_seg", "loss_sem_seg_hr"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    for part in (model.backbone, model.sem_seg_head.head, model.sem_seg_head.scale_attention):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    # tensor-level call through __call__ (used by the trainer so that DDP sees the forward)
    images = model.normalize(torch.stack([x["image"] for x in inputs]))
    labels = torch.stack([x["sem_seg"] for x in inputs])
    out = model(images=images, sem_seg=labels, crop_box=(0, 64, 64, 128))
    losses = out.losses
    assert set(losses) == {"loss_sem_seg", "loss_sem_seg_hr"} and out.crop_box == (0, 64, 64, 128)
    assert out.features["res5"].shape == (2, 256, 2, 2)  # LR features (FEATURE_SCALE 0.5) of the 128 image
    assert {k: v.shape for k, v in model.extract_features(images).items()} == {
        k: v.shape for k, v in out.features.items()}
    assert set(out.metrics) == {"acc_sem_seg", "acc_sem_seg_hr"}


def test_single_scale_is_plain_daformer():
    cfg = tiny_cfg(**{"MODEL.HRDA.SCALES": [1.0], "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT": 0.5,
                      "MODEL.SEM_SEG_HEAD.DROPOUT": 0.0, "MODEL.MIT.DROP_PATH_RATE": 0.0})
    model = build_model(cfg).train()
    assert type(model.sem_seg_head.head).__name__ == "DAFormerHead"
    assert not any("scale_attention" in k for k in model.state_dict())
    images = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 19, (2, 64, 64))
    labels[:, :5] = 255
    losses = model.forward_train(images, labels).losses
    assert set(losses) == {"loss_sem_seg"}
    with torch.no_grad():
        logits = model.sem_seg_head.head(model.backbone(images))  # same batch -> same BN batch statistics
    logits = F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False)
    expected = 0.5 * np_ce_all_pixels(logits.double().numpy(), labels.numpy())
    assert losses["loss_sem_seg"].item() == pytest.approx(expected, rel=1e-5)
    model.eval()
    with torch.no_grad():
        whole = model.whole_inference(images)
        torch.testing.assert_close(whole, F.interpolate(model.sem_seg_head.head(model.backbone(images)), size=(64, 64),
                                                        mode="bilinear", align_corners=False))


def test_invalid_scale_settings_raise():
    with pytest.raises(ValueError, match="SCALES"):
        build_model(tiny_cfg(**{"MODEL.HRDA.SCALES": [1.0, 0.5, 0.25]}))
    with pytest.raises(ValueError, match="FEATURE_SCALE"):
        build_model(tiny_cfg(**{"MODEL.HRDA.FEATURE_SCALE": 0.25}))
    with pytest.raises(ValueError, match="TEST.MODE"):
        build_model(tiny_cfg(**{"TEST.MODE": "sliding"}))


def test_same_scales_take_the_detail_crop_from_the_same_image_and_fuse_without_upsampling():
    """MODEL.HRDA.SCALES [1, 1] (the original's ``samescale``, HRDA Table 6): context = the whole image at scale 1,
    detail = a crop of that same image, attention mask and HR logits placed at box / 4, no upsampling."""
    rng = np.random.default_rng(5)
    img = rng.normal(size=(2, 3, 64, 64))
    labels = rng.integers(0, C, size=(2, 64, 64))
    box = (16, 48, 8, 40)
    model = stub_hrda(scales=(1.0, 1.0), feature_scale=1.0)
    assert model.scales == [1.0, 1.0] and model.sem_seg_head.lr_scale == 1.0
    outputs = model.forward_train(torch.from_numpy(img).float(), torch.from_numpy(labels), crop_box=box)
    losses = outputs.losses
    lr_feat = np_avgpool(img, 4)  # the whole image, not downscaled: 16 x 16 logits
    lr_logits = np_head(lr_feat, W_SEG, B_SEG)
    hr_logits = np_head(np_avgpool(img[..., 16:48, 8:40], 4), W_SEG, B_SEG)
    att = 1 / (1 + np.exp(-np_head(lr_feat, W_ATT, B_ATT)))
    fused = np_fuse(lr_logits, hr_logits, att, box, lr_scale=1.0)[0]
    assert fused.shape[-2:] == (16, 16)
    expected_fused = 0.9 * np_ce_all_pixels(np_bilinear(fused, (64, 64)), labels)
    expected_hr = 0.1 * np_ce_all_pixels(np_bilinear(hr_logits, (32, 32)), labels[:, 16:48, 8:40])
    assert losses["loss_sem_seg"].item() == pytest.approx(expected_fused, rel=1e-5)
    assert losses["loss_sem_seg_hr"].item() == pytest.approx(expected_hr, rel=1e-5)
    np.testing.assert_allclose(outputs.features["res2"].numpy(), lr_feat, atol=1e-5)  # FEATURE_SCALE 1
    with torch.no_grad():  # inference: whole image at scale 1 + its merged HR tiles (= whole-image HR here)
        logits = model.whole_inference(torch.from_numpy(img).float())
    expected = np_bilinear(att * np_head(np_avgpool(img, 4), W_SEG, B_SEG) + (1 - att) * lr_logits, (64, 64))
    np.testing.assert_allclose(logits.numpy(), expected, atol=1e-4)


def test_same_scales_build_from_the_config_and_train():
    cfg = tiny_cfg(**{"MODEL.HRDA.SCALES": [1.0, 1.0], "MODEL.HRDA.FEATURE_SCALE": 1.0})
    assert config_problems(cfg) == []
    model = build_model(cfg).train()
    inputs = [{"image": torch.rand(3, 128, 128) * 255, "sem_seg": torch.randint(0, 19, (128, 128))} for _ in range(2)]
    losses = model(inputs)
    assert set(losses) == {"loss_sem_seg", "loss_sem_seg_hr"} and torch.isfinite(sum(losses.values()))
    model.eval()
    with torch.no_grad():
        assert model([{"image": torch.rand(3, 128, 256) * 255}])[0]["sem_seg"].shape == (19, 128, 256)
