"""Geometric transforms of the training/test pipelines (reference 10.1 steps 2-4, 7).

Expectations come from the reference text (mmcv imrescale rule and the sizes it lists, the mmseg
RandomCrop draw order and 10-checks-then-unchecked rule) or from direct OpenCV calls, never from the
code under test.
"""
import cv2
import numpy as np
import pytest
from detectron2.data import transforms as T

from hrda_d2.data.transforms import (
    KeepRatioRescale,
    PadBottomRight,
    RandomCropWithCategoryRatio,
    draw_crop_box,
    imrescale_size,
)


@pytest.mark.parametrize(
    "hw, scale, expected_hw",
    [
        ((1052, 1914), (2560, 1440), (1407, 2560)),  # GTA, HRDA (reference 10.1)
        ((760, 1280), (2560, 1520), (1520, 2560)),  # Synthia, HRDA
        ((1024, 2048), (2048, 1024), (1024, 2048)),  # Cityscapes unchanged
        ((1080, 1920), (1920, 1080), (1080, 1920)),  # ACDC / Dark Zurich unchanged
        ((1052, 1914), (1280, 720), (704, 1280)),  # DAFormer-512 GTA
        ((1024, 2048), (1024, 512), (512, 1024)),  # DAFormer-512 Cityscapes
        ((760, 1280), (1280, 760), (760, 1280)),  # DAFormer-512 Synthia
        ((1052, 1914), (1440, 2560), (1407, 2560)),  # tuple order does not matter
    ],
)
def test_imrescale_sizes_from_reference(hw, scale, expected_hw):
    assert imrescale_size(*hw, scale) == expected_hw


def test_imrescale_rounding_rule():
    # f = min(2560/1914, 1440/1052) = 1.33751...; h = int(1052 * f + 0.5) = int(1407.06 + 0.5) = 1407
    h, w = 1052, 1914
    f = min(2560 / 1914, 1440 / 1052)
    assert imrescale_size(h, w, (2560, 1440)) == (int(h * f + 0.5), int(w * f + 0.5))
    # a case where rounding up matters: 3 x 5 with (8, 8) -> f = 8/5 = 1.6: h = int(4.8 + 0.5) = 5
    assert imrescale_size(3, 5, (8, 8)) == (5, 8)


def test_rescale_uses_opencv_linear_for_images_and_nearest_for_labels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    label = rng.integers(0, 19, (30, 50), dtype=np.uint8)
    tfm = KeepRatioRescale((100, 60)).get_transform(image)  # f = 2 -> 60 x 100
    out_img = tfm.apply_image(image)
    out_lbl = tfm.apply_segmentation(label)
    np.testing.assert_array_equal(out_img, cv2.resize(image, (100, 60), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_array_equal(out_lbl, cv2.resize(label, (100, 60), interpolation=cv2.INTER_NEAREST))
    # nearest x2 upscaling of a label repeats every pixel: no new values are invented
    np.testing.assert_array_equal(out_lbl, np.repeat(np.repeat(label, 2, 0), 2, 1))
    # Detectron2's PIL-based resize differs (why the project has its own transform)
    pil = T.ResizeTransform(30, 50, 60, 100).apply_image(image)
    assert not np.array_equal(pil, out_img)


def test_rescale_noop_when_size_unchanged():
    image = np.zeros((1024, 2048, 3), np.uint8)
    assert isinstance(KeepRatioRescale((2048, 1024)).get_transform(image), T.NoOpTransform)


def test_crop_box_draw_order_h_then_w():
    np.random.seed(123)
    box = draw_crop_box(100, 70, (40, 30))
    np.random.seed(123)
    y1 = np.random.randint(0, 100 - 40 + 1)
    x1 = np.random.randint(0, 70 - 30 + 1)
    assert box == (y1, y1 + 40, x1, x1 + 30)


def test_crop_smaller_than_crop_size_when_image_is_smaller():
    box = draw_crop_box(20, 50, (32, 32))
    y1, y2, x1, x2 = box
    assert (y1, y2) == (0, 20) and x2 - x1 == 32 and 0 <= x1 <= 18


def _reference_cat_max_ratio_box(label, crop_size, ratio, ignore=255):
    """Independent re-statement of reference 10.1 step 3; returns (box, number of boxes drawn, checked)."""
    h, w = label.shape

    def draw():
        oy = np.random.randint(0, max(h - crop_size[0], 0) + 1)
        ox = np.random.randint(0, max(w - crop_size[1], 0) + 1)
        return oy, min(oy + crop_size[0], h), ox, min(ox + crop_size[1], w)

    box = draw()
    drawn, checked_ok = 1, False
    for _ in range(10):
        crop = label[box[0] : box[1], box[2] : box[3]].ravel()
        crop = crop[crop != ignore]
        counts = np.bincount(crop)
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max() / counts.sum() < ratio:
            checked_ok = True
            break
        box = draw()
        drawn += 1
    return box, drawn, checked_ok


def _box_of(tfm):
    assert isinstance(tfm, T.CropTransform)
    return tfm.y0, tfm.y0 + tfm.h, tfm.x0, tfm.x0 + tfm.w


def test_cat_max_ratio_matches_reference_and_respects_bound():
    rng = np.random.default_rng(1)
    # mostly road (0) with a few small blobs of other classes and some ignore: many boxes fail 0.75
    label = np.zeros((64, 96), np.uint8)
    for _ in range(10):
        y, x = rng.integers(0, 54), rng.integers(0, 86)
        label[y : y + 10, x : x + 10] = rng.integers(1, 19)
    label[:5] = 255
    image = np.zeros((64, 96, 3), np.uint8)
    aug = RandomCropWithCategoryRatio((24, 24), cat_max_ratio=0.75)
    n_checked_ok = n_unchecked = 0
    for seed in range(200):
        np.random.seed(seed)
        got = _box_of(aug.get_transform(image, label))
        np.random.seed(seed)
        expected, drawn, checked_ok = _reference_cat_max_ratio_box(label, (24, 24), 0.75)
        assert got == expected
        if checked_ok:
            n_checked_ok += 1
            crop = label[got[0] : got[1], got[2] : got[3]]
            crop = crop[crop != 255]
            counts = np.bincount(crop)
            assert counts.max() / counts.sum() < 0.75 and (counts > 0).sum() > 1
        else:
            assert drawn == 11
            n_unchecked += 1
    assert n_checked_ok > 100 and n_unchecked > 0  # both branches were exercised


def test_cat_max_ratio_eleventh_box_unchecked(monkeypatch):
    label = np.full((50, 60), 3, np.uint8)  # one class everywhere: no box can pass
    image = np.zeros((50, 60, 3), np.uint8)
    calls = []
    original = np.random.randint

    def counting_randint(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(np.random, "randint", counting_randint)
    RandomCropWithCategoryRatio((20, 20), cat_max_ratio=0.75).get_transform(image, label)
    assert len(calls) == 22  # 11 boxes, h then w each
    assert calls[0] == (0, 31) and calls[1] == (0, 41)
    calls.clear()
    RandomCropWithCategoryRatio((20, 20), cat_max_ratio=1.0).get_transform(image, None)
    assert len(calls) == 2  # no check: one box, label not needed


def test_cat_max_ratio_strict_bound_and_ignore_excluded(monkeypatch):
    image = np.zeros((2, 2, 3), np.uint8)
    aug_075 = RandomCropWithCategoryRatio((2, 2), cat_max_ratio=0.75)
    aug_076 = RandomCropWithCategoryRatio((2, 2), cat_max_ratio=0.76)
    calls = []
    original = np.random.randint
    monkeypatch.setattr(np.random, "randint", lambda *a: calls.append(a) or original(*a))

    def draws(aug, label):
        calls.clear()
        aug.get_transform(image, label)
        return len(calls)

    three_to_one = np.array([[0, 0], [0, 1]], np.uint8)  # max/sum = 0.75 exactly
    assert draws(aug_075, three_to_one) == 22  # not < 0.75: fails every time
    assert draws(aug_076, three_to_one) == 2  # passes at the first check
    # 255 excluded from the counts: {1: 1, 2: 1, 255: 2} -> 0.5 < 0.75 passes
    assert draws(aug_075, np.array([[255, 255], [1, 2]], np.uint8)) == 2
    # only one class besides 255 -> fails
    assert draws(aug_076, np.array([[255, 255], [255, 4]], np.uint8)) == 22


def test_pad_bottom_right_values():
    image = np.full((5, 7, 3), 9, np.uint8)
    label = np.full((5, 7), 2, np.uint8)
    tfm = PadBottomRight((8, 10)).get_transform(image)
    out_img, out_lbl = tfm.apply_image(image), tfm.apply_segmentation(label)
    assert out_img.shape == (8, 10, 3) and out_lbl.shape == (8, 10)
    assert (out_img[:5, :7] == 9).all() and (out_img[5:] == 0).all() and (out_img[:, 7:] == 0).all()
    assert (out_lbl[:5, :7] == 2).all() and (out_lbl[5:] == 255).all() and (out_lbl[:, 7:] == 255).all()
    assert isinstance(PadBottomRight((5, 7)).get_transform(image), T.NoOpTransform)
