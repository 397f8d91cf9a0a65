"""Tests of the DACS building blocks (hrda_d2/engine): EMA teacher, pseudo-labels, ClassMix, strong
augmentation, ImageNet feature distance. Expectations follow docs/hrda_reference.md section 7.2 and are
computed independently (handmade tensors, float64 NumPy, colorsys, separate RNG streams)."""
import colorsys
import math
import random

import kornia
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from timm.layers import DropPath
from torch import nn
from torch.nn.utils import parameters_to_vector

from tests.helpers.tiny_configs import tiny_hrda_cfg
from hrda_d2.uda.class_mix import class_mix_batch, class_mix_masks, mix_with_mask
from hrda_d2.uda.ema import ema_alpha, ema_update_, set_pseudo_label_mode
from hrda_d2.uda.feature_distance import (
    downscale_label_ratio,
    imnet_feature_distance_loss,
    masked_feature_distance,
)
from hrda_d2.uda.pseudo_labels import pseudo_labels_from_logits
from hrda_d2.uda.strong_augmentation import (
    StrongAugmentation,
    StrongAugmentationDraws,
    gaussian_blur_kernel_size,
)

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


@pytest.fixture(scope="module")
def student_teacher():
    """Two independently initialised tiny HRDA models (mit_b0) built from one config."""
    cfg = tiny_hrda_cfg()
    torch.manual_seed(1)
    student = build_model(cfg)
    torch.manual_seed(2)
    teacher = build_model(cfg)
    return student, teacher


def _buffers(module: nn.Module):
    return {n: b.detach().clone() for n, b in module.named_buffers()}


def _perturb_(module: nn.Module, seed: int) -> None:
    """Stand-in for an optimizer step: add noise to every parameter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.1)


# ----------------------------------------------------------------------------------------------- EMA


def test_ema_alpha_schedule():
    assert ema_alpha(0, 0.999) == 0.0
    assert ema_alpha(1, 0.999) == 0.5
    assert ema_alpha(2, 0.999) == pytest.approx(2 / 3, rel=1e-15)
    assert ema_alpha(500, 0.999) == pytest.approx(500 / 501, rel=1e-15)
    assert ema_alpha(998, 0.999) == pytest.approx(998 / 999, rel=1e-15)
    assert ema_alpha(999, 0.999) == 0.999
    assert ema_alpha(30000, 0.999) == 0.999


def test_ema_update_follows_the_reference_rule(student_teacher):
    student, teacher = student_teacher
    # distinctive teacher buffers (BN running stats) that must survive every update
    with torch.no_grad():
        for name, buf in teacher.named_buffers():
            if buf.is_floating_point() and "running" in name:
                buf.fill_(0.37)
    teacher_buffers = _buffers(teacher)

    # iteration 0: plain copy of every parameter
    ema_update_(teacher, student, iteration=0, alpha=0.999)
    for (name, t), s in zip(teacher.named_parameters(), student.parameters()):
        assert torch.equal(t, s), name
        assert not t.requires_grad, name

    # iteration 1 (alpha 0.5), 2 (alpha 2/3), 5000 (capped at 0.999) after student "steps"
    for iteration, alpha_t in [(1, 0.5), (2, 2 / 3), (5000, 0.999)]:
        _perturb_(student, seed=iteration)
        before = parameters_to_vector(teacher.parameters()).double()
        student_now = parameters_to_vector(student.parameters()).double()
        returned = ema_update_(teacher, student, iteration=iteration, alpha=0.999)
        assert returned == pytest.approx(alpha_t, rel=1e-15)
        expected = alpha_t * before + (1 - alpha_t) * student_now
        torch.testing.assert_close(parameters_to_vector(teacher.parameters()).double(), expected, rtol=1e-6, atol=1e-7)
        assert not any(t.requires_grad for t in teacher.parameters())
        # the update moved the teacher (the test can fail)
        assert not torch.equal(teacher.backbone.patch_embed1.proj.weight, student.backbone.patch_embed1.proj.weight)

    for name, buf in teacher.named_buffers():
        assert torch.equal(buf, teacher_buffers[name]), f"buffer {name} changed"


def test_ema_update_rejects_different_architectures():
    teacher = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    student = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 3))
    with pytest.raises(ValueError, match="does not match"):
        ema_update_(teacher, student, iteration=0, alpha=0.999)
    with pytest.raises(ValueError, match="parameters"):
        ema_update_(nn.Linear(3, 4), nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 3)), iteration=0, alpha=0.9)


def test_pseudo_label_mode_keeps_bn_training_and_disables_dropout(student_teacher):
    _, teacher = student_teacher
    teacher.eval()
    num_switched = set_pseudo_label_mode(teacher)
    dropouts = [m for m in teacher.modules() if isinstance(m, (nn.Dropout, nn.Dropout2d, DropPath))]
    norms = [m for m in teacher.modules() if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm))]
    assert num_switched == len(dropouts) > 0
    assert any(isinstance(m, DropPath) for m in dropouts) and any(isinstance(m, nn.Dropout2d) for m in dropouts)
    assert all(not m.training for m in dropouts)
    assert any(isinstance(m, nn.BatchNorm2d) for m in norms)
    assert all(m.training for m in norms)
    assert teacher.training and teacher.sem_seg_head.training

    # functional check on a small module: BN uses batch statistics, dropout is the identity
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Dropout2d(0.5), DropPath(0.5))
    set_pseudo_label_mode(net)
    x = torch.randn(2, 3, 5, 5)
    out = net(x)
    conv = net[0](x)
    expected = (conv - conv.mean(dim=(0, 2, 3), keepdim=True)) / torch.sqrt(
        conv.var(dim=(0, 2, 3), unbiased=False, keepdim=True) + 1e-5
    )
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert net[1].num_batches_tracked.item() == 1


# ------------------------------------------------------------------------------------- pseudo-labels


def test_pseudo_weight_is_confident_fraction_times_margin_mask():
    # probability of the max class: 5 vs 0,0 -> e^5/(e^5+2) = 0.98670 >= 0.968; 2 vs 0,0 -> 0.7869 < 0.968
    confident = {(0, 0, 0): 2, (0, 1, 2): 0, (1, 0, 1): 1, (1, 1, 1): 2, (1, 1, 2): 0}
    argmax_of_unconfident = {
        (0, 0, 1): 1, (0, 0, 2): 2, (0, 1, 0): 0, (0, 1, 1): 1, (1, 0, 0): 2, (1, 0, 2): 0, (1, 1, 0): 1,
    }
    logits = torch.zeros(2, 3, 2, 3)
    expected_label = torch.zeros(2, 2, 3, dtype=torch.long)
    for (n, y, x), c in confident.items():
        logits[n, c, y, x] = 5.0
        expected_label[n, y, x] = c
    for (n, y, x), c in argmax_of_unconfident.items():
        logits[n, c, y, x] = 2.0
        expected_label[n, y, x] = c
    # sanity of the handmade numbers
    assert math.exp(5) / (math.exp(5) + 2) >= 0.968 > math.exp(2) / (math.exp(2) + 2)

    label, weight = pseudo_labels_from_logits(logits, threshold=0.968)
    assert torch.equal(label, expected_label)
    assert weight.shape == (2, 2, 3) and weight.dtype == torch.float32
    torch.testing.assert_close(weight, torch.full((2, 2, 3), 5 / 12))

    margin = torch.tensor([[[0, 1, 1], [1, 1, 0]], [[1, 1, 1], [0, 0, 1]]], dtype=torch.float32)
    _, weight = pseudo_labels_from_logits(logits, threshold=0.968, valid_pseudo_mask=margin)
    torch.testing.assert_close(weight, 5 / 12 * margin)
    _, weight = pseudo_labels_from_logits(logits, threshold=0.968, valid_pseudo_mask=margin[:, None])
    torch.testing.assert_close(weight, 5 / 12 * margin)

    _, weight = pseudo_labels_from_logits(logits, threshold=0.968, ignore_top=1)
    torch.testing.assert_close(weight[:, 0], torch.zeros(2, 3))
    torch.testing.assert_close(weight[:, 1], torch.full((2, 3), 5 / 12))
    _, weight = pseudo_labels_from_logits(logits, threshold=0.968, ignore_bottom=1)
    torch.testing.assert_close(weight[:, 1], torch.zeros(2, 3))
    torch.testing.assert_close(weight[:, 0], torch.full((2, 3), 5 / 12))
    with pytest.raises(ValueError, match="margin"):
        pseudo_labels_from_logits(logits, threshold=0.968, ignore_top=1, valid_pseudo_mask=margin)
    with pytest.raises(ValueError, match="valid_pseudo_mask"):
        pseudo_labels_from_logits(logits, threshold=0.968, valid_pseudo_mask=margin[:, :1])


# ------------------------------------------------------------------------------------------ ClassMix


def _source_labels():
    """Sample 0 holds classes {0, 1, 2, 255}, sample 1 holds {3, 255}; whole batch: [0, 1, 2, 3, 255]."""
    labels = torch.tensor(
        [
            [[0, 0, 1, 1], [2, 2, 255, 255], [0, 1, 2, 0], [255, 0, 1, 2]],
            [[3, 3, 3, 3], [255, 3, 3, 255], [3, 3, 3, 3], [3, 255, 255, 3]],
        ],
        dtype=torch.long,
    )
    return labels[:, None]  # N x 1 x H x W


class _RecordingChoice:
    """Stand-in NumPy RNG that records choice() calls and returns prescribed index arrays."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = []

    def choice(self, n, k, replace=True):
        self.calls.append((n, k, replace))
        return np.array(self.answers.pop(0))


def test_class_mix_masks_candidates_from_whole_batch_and_ceil_half():
    labels = _source_labels()
    candidates = [0, 1, 2, 3, 255]  # torch.unique of the whole batch, 255 included
    # sample 0 picks classes {1, 3, 255}; sample 1 picks {0, 2, 3}
    rng = _RecordingChoice([[1, 3, 4], [0, 2, 3]])
    masks = class_mix_masks(labels, rng=rng)
    assert rng.calls == [(5, 3, False), (5, 3, False)]  # k = ceil(5 / 2) = 3, drawn per sample
    assert masks.shape == (2, 1, 4, 4) and masks.dtype == torch.long
    chosen = [{candidates[i] for i in (1, 3, 4)}, {candidates[i] for i in (0, 2, 3)}]
    for n in range(2):
        for y in range(4):
            for x in range(4):
                assert masks[n, 0, y, x].item() == int(labels[n, 0, y, x].item() in chosen[n])

    # even number of candidates: k = n / 2; N x H x W input accepted
    rng = _RecordingChoice([[0, 1], [2, 3]])
    class_mix_masks(torch.tensor([[[0, 1], [2, 3]], [[0, 0], [1, 1]]]), rng=rng)
    assert rng.calls == [(4, 2, False), (4, 2, False)]


def test_class_mix_masks_use_the_global_numpy_stream():
    labels = _source_labels()
    np.random.seed(123)
    masks = class_mix_masks(labels)
    stream = np.random.RandomState(123)
    candidates = np.array([0, 1, 2, 3, 255])
    for n in range(2):
        chosen = candidates[stream.choice(5, 3, replace=False)]
        expected = np.isin(labels[n, 0].numpy(), chosen).astype(np.int64)
        assert np.array_equal(masks[n, 0].numpy(), expected)


def test_class_mix_batch_takes_chosen_source_classes_and_target_elsewhere():
    labels = _source_labels()
    mask = class_mix_masks(labels, rng=_RecordingChoice([[1, 3, 4], [0, 2, 3]]))
    src_img = torch.randn(2, 3, 4, 4)
    trg_img = torch.randn(2, 3, 4, 4)
    pseudo = torch.randint(0, 19, (2, 4, 4))
    pseudo_weight = torch.full((2, 4, 4), 0.3)
    img, lbl, weight = class_mix_batch(mask, src_img, trg_img, labels, pseudo, pseudo_weight)
    assert img.shape == (2, 3, 4, 4) and lbl.shape == (2, 4, 4) and weight.shape == (2, 4, 4)
    assert lbl.dtype == torch.long
    chosen = [{1, 3, 255}, {0, 2, 3}]
    num_from_source = 0
    for n in range(2):
        for y in range(4):
            for x in range(4):
                from_source = labels[n, 0, y, x].item() in chosen[n]
                num_from_source += from_source
                if from_source:
                    assert torch.equal(img[n, :, y, x], src_img[n, :, y, x])
                    assert lbl[n, y, x].item() == labels[n, 0, y, x].item()  # source 255 kept
                    assert weight[n, y, x].item() == 1.0
                else:
                    assert torch.equal(img[n, :, y, x], trg_img[n, :, y, x])
                    assert lbl[n, y, x].item() == pseudo[n, y, x].item()
                    assert weight[n, y, x].item() == pytest.approx(0.3)
    assert 0 < num_from_source < 32
    assert (lbl == 255).any()
    with pytest.raises(ValueError, match="differ in shape"):
        mix_with_mask(mask, src_img, trg_img[:, :2])


# ----------------------------------------------------------------------------- strong augmentation


def _augmentation(**kwargs):
    return StrongAugmentation(pixel_mean=MEAN, pixel_std=STD, **kwargs)


def _normalized_images(n, h, w):
    unit = torch.rand(n, 3, h, w) * 0.9 + 0.05
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (unit * 255 - mean) / std


def test_strong_augmentation_config_and_draw_order(monkeypatch):
    cfg = tiny_hrda_cfg()
    aug = StrongAugmentation(cfg)
    assert aug.color_jitter_skip_threshold == 0.2 and aug.color_jitter_strength == 0.2 and aug.blur
    torch.testing.assert_close(aug.normalizer.pixel_mean.flatten(), torch.tensor(MEAN))

    values = iter([0.3, 0.7])
    calls = []

    def fake_uniform(a, b):
        calls.append((a, b))
        return next(values)

    monkeypatch.setattr(random, "uniform", fake_uniform)
    draws = aug.draw()
    assert draws == StrongAugmentationDraws(color_jitter=0.3, blur=0.7)
    assert calls == [(0, 1), (0, 1)]
    monkeypatch.undo()

    random.seed(11)
    reference = random.Random(11)
    assert aug.draw() == StrongAugmentationDraws(reference.uniform(0, 1), reference.uniform(0, 1))
    # blur disabled: a single draw
    random.seed(11)
    reference = random.Random(11)
    assert _augmentation(blur=False).draw() == StrongAugmentationDraws(reference.uniform(0, 1), 0.0)


def test_color_jitter_applied_iff_draw_exceeds_threshold():
    aug = _augmentation()
    images = _normalized_images(2, 8, 8)
    unchanged = aug(images, StrongAugmentationDraws(color_jitter=0.2, blur=0.5))
    assert torch.equal(unchanged, images)
    changed = aug(images, StrongAugmentationDraws(color_jitter=0.2001, blur=0.0))
    assert (changed - images).abs().max() > 1e-3
    strict = _augmentation(color_jitter_skip_threshold=0.9)
    assert not strict.applies_color_jitter(StrongAugmentationDraws(0.85, 0))
    assert strict.applies_color_jitter(StrongAugmentationDraws(0.95, 0))


def test_color_jitter_equals_direct_kornia_call():
    aug = _augmentation()
    images = _normalized_images(2, 8, 8)
    torch.manual_seed(7)
    out = aug(images, StrongAugmentationDraws(color_jitter=0.5, blur=0.0))
    torch.manual_seed(7)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    for i in range(2):
        jiggle = kornia.augmentation.ColorJiggle(0.2, 0.2, 0.2, 0.2, p=1.0)
        expected = (jiggle((images[i : i + 1] * std + mean) / 255) * 255 - mean) / std
        torch.testing.assert_close(out[i : i + 1], expected)


def _rgb_to_hsv_apply(pixel, fn):
    h, s, v = colorsys.rgb_to_hsv(*pixel)
    return colorsys.hsv_to_rgb(*fn(h, s, v))


def test_kornia_color_jiggle_matches_kornia_0_5_semantics():
    """kornia 0.9 ColorJiggle with given factors/order vs the reference's description of kornia 0.5:
    additive brightness, multiplicative contrast (both clamped), HSV saturation scale, hue shift."""
    x = torch.rand(1, 3, 3, 4) * 0.9 + 0.05
    jiggle = kornia.augmentation.ColorJiggle(0.2, 0.2, 0.2, 0.2, p=1.0)
    params = jiggle.forward_parameters(x.shape)
    factors = {"brightness_factor": 1.15, "contrast_factor": 0.85, "saturation_factor": 1.18, "hue_factor": -0.13}
    for key, value in factors.items():
        params[key] = torch.tensor([value])
    params["order"] = torch.tensor([2, 0, 3, 1])  # saturation, brightness, hue, contrast
    out = jiggle(x, params=params)

    def hand(pixel):
        for op in (2, 0, 3, 1):
            if op == 0:
                pixel = tuple(min(max(c + (1.15 - 1), 0.0), 1.0) for c in pixel)
            elif op == 1:
                pixel = tuple(min(max(c * 0.85, 0.0), 1.0) for c in pixel)
            elif op == 2:
                pixel = _rgb_to_hsv_apply(pixel, lambda h, s, v: (h, min(s * 1.18, 1.0), v))
            else:
                pixel = _rgb_to_hsv_apply(pixel, lambda h, s, v: ((h - 0.13) % 1.0, s, v))
        return pixel

    expected = torch.zeros_like(x)
    for y in range(3):
        for xx in range(4):
            expected[0, :, y, xx] = torch.tensor(hand(tuple(float(c) for c in x[0, :, y, xx])))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_blur_kernel_size():
    assert gaussian_blur_kernel_size(1024) == 103
    assert gaussian_blur_kernel_size(512) == 51
    assert gaussian_blur_kernel_size(64) == 7  # ceil(6.4) = 7, odd
    assert gaussian_blur_kernel_size(96) == 9  # ceil(9.6) = 10, even -> 9


def test_blur_equals_direct_kornia_call_with_same_sigma():
    aug = _augmentation()
    images = _normalized_images(2, 64, 96)
    np.random.seed(5)
    out = aug(images, StrongAugmentationDraws(color_jitter=0.1, blur=0.51))
    sigmas = np.random.RandomState(5).uniform(0.15, 1.15, size=2)
    for i in range(2):
        expected = kornia.filters.gaussian_blur2d(
            images[i : i + 1], (7, 9), (float(sigmas[i]), float(sigmas[i])), border_type="reflect"
        )
        torch.testing.assert_close(out[i : i + 1], expected)
    # no blur at draw 0.5 (strict >) and when blur is disabled
    assert torch.equal(aug(images, StrongAugmentationDraws(0.1, 0.5)), images)
    assert torch.equal(_augmentation(blur=False)(images, StrongAugmentationDraws(0.1, 0.9)), images)


def test_jitter_then_blur_per_sample():
    aug = _augmentation()
    images = _normalized_images(2, 16, 16)
    torch.manual_seed(3)
    np.random.seed(4)
    out = aug(images, StrongAugmentationDraws(color_jitter=0.9, blur=0.9))
    torch.manual_seed(3)
    np.random.seed(4)
    for i in range(2):
        jittered = aug.color_jitter(images[i : i + 1])
        expected = aug.gaussian_blur(jittered, float(np.random.uniform(0.15, 1.15)))
        torch.testing.assert_close(out[i : i + 1], expected)


# ------------------------------------------------------------------------------ feature distance


def _fd_labels():
    """1 x 1 x 20 x 30 labels, 2 x 3 cells of 10 x 10 pixels.

    cell (0,0): 76 px car(13) + 24 px road(0)      -> 13 (0.76 >= 0.75)
    cell (0,1): 74 px car(13) + 26 px sidewalk(1)  -> 255 (0.74 < 0.75)
    cell (0,2): 76 px ignore + 24 px person(11)    -> 255 (ignore dominates)
    cell (1,0): 80 px person(11) + 20 px ignore    -> 11
    cell (1,1): 100 px road(0)                     -> 0 (not an FD class)
    cell (1,2): 50 px ignore + 50 px bus(15)       -> 255 (< 0.75; tie)
    """

    def cell(major, n_major, minor):
        values = np.full(100, minor, dtype=np.int64)
        values[:n_major] = major
        return values.reshape(10, 10)

    rows = [
        [cell(13, 76, 0), cell(13, 74, 1), cell(255, 76, 11)],
        [cell(11, 80, 255), cell(0, 100, 0), cell(255, 50, 15)],
    ]
    labels = np.block(rows)
    return torch.from_numpy(labels)[None, None]


def test_downscale_label_ratio_handmade():
    down = downscale_label_ratio(_fd_labels(), scale_factor=10, min_ratio=0.75, num_classes=19)
    assert down.shape == (1, 1, 2, 3) and down.dtype == torch.long
    assert down[0, 0].tolist() == [[13, 255, 255], [11, 0, 255]]
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        downscale_label_ratio(torch.full((1, 1, 4, 4), 30), 2, 0.75, 19)


def test_feature_distance_loss_equals_hand_computation():
    labels = torch.cat([_fd_labels(), _fd_labels().flip(-1)], dim=0)  # 2 x 1 x 20 x 30
    features = torch.randn(2, 5, 2, 3, requires_grad=True)
    imnet = torch.randn(2, 5, 2, 3)
    classes = [6, 7, 11, 12, 13, 14, 15, 16, 17, 18]
    loss, num_selected = imnet_feature_distance_loss(
        features, imnet, labels, classes, num_classes=19, min_ratio=0.75, loss_weight=0.005
    )
    # selected cells: sample 0 -> (0,0) car, (1,0) person; sample 1 (mirrored) -> (0,2), (1,2)
    selected = [(0, 0, 0), (0, 1, 0), (1, 0, 2), (1, 1, 2)]
    assert num_selected == 4
    f = features.detach().double().numpy()
    g = imnet.double().numpy()
    distances = [np.sqrt(((f[n, :, y, x] - g[n, :, y, x]) ** 2).sum()) for n, y, x in selected]
    assert loss.item() == pytest.approx(0.005 * np.mean(distances), rel=1e-5)
    loss.backward()
    grad_norm = features.grad.abs().sum(dim=1)
    selected_mask = torch.zeros(2, 2, 3, dtype=torch.bool)
    for n, y, x in selected:
        selected_mask[n, y, x] = True
    assert (grad_norm[selected_mask] > 0).all()
    assert (grad_norm[~selected_mask] == 0).all()


def test_feature_distance_empty_mask_is_finite_zero_with_zero_grads():
    labels = torch.zeros(2, 1, 20, 30, dtype=torch.long)  # road only
    features = torch.randn(2, 5, 2, 3, requires_grad=True)
    loss, num_selected = imnet_feature_distance_loss(
        features, torch.randn(2, 5, 2, 3), labels, [11, 13], num_classes=19, min_ratio=0.75, loss_weight=0.005
    )
    assert num_selected == 0
    assert torch.isfinite(loss) and loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(features.grad, torch.zeros_like(features))
    # equal features (zero distance) do not produce NaN gradients either
    same = torch.randn(1, 4, 2, 2, requires_grad=True)
    distance, _ = masked_feature_distance(same, same.detach().clone(), torch.ones(1, 1, 2, 2, dtype=torch.bool))
    distance.backward()
    assert torch.isfinite(same.grad).all()


def test_feature_distance_rejects_mismatched_label_size():
    with pytest.raises(ValueError, match="downscaled"):
        imnet_feature_distance_loss(
            torch.randn(1, 4, 2, 3), torch.randn(1, 4, 2, 3), torch.zeros(1, 1, 40, 30, dtype=torch.long),
            [13], num_classes=19, min_ratio=0.75, loss_weight=0.005,
        )
