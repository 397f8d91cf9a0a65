"""VFM-UDA / VFM-UDA++ iteration (docs/method.md §22): the random decisions against torchvision's transforms built
with the originals' parameters (same seed -> same draws, same pixels), the pseudo-label / mix / EMA / feature
distance rules against their formulas, token masking in MIC, and one iteration of the step on a tiny model."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms as TV

from hrda_d2.uda.feature_distance import DistillFeatureHead, FrozenDINOv2Features, distill_feature_loss
from hrda_d2.uda.masking import token_mask
from hrda_d2.uda.vfm_augmentation import (STRONG, UDA, WEAK, apply_batch_augmentation, apply_flips,
                                          blur_kernel_size, draw_batch_augmentation, draw_flips)
from hrda_d2.uda.ema import ema_alpha
from hrda_d2.uda.vfm_step import (VFMUDAStepTrainer, ema_update_after_step_,
                                  flip_averaged_pseudo_labels, vfm_mix)


def _torchvision_pipeline(name: str, img_size: int) -> TV.Compose:
    """The originals' per-image pipelines, built from torchvision with their parameters."""
    k = blur_kernel_size(img_size)
    if name == "weak":
        return TV.Compose([TV.RandomApply([TV.ColorJitter(32 / 255., 0.5, 0.5, 18 / 360.)], p=0.9)])
    if name == "strong":
        return TV.Compose([TV.RandomApply([TV.ColorJitter(0.8, 0.8, 0.8, 0.4)], p=0.8), TV.RandomGrayscale(p=0.1),
                           TV.RandomApply([TV.GaussianBlur(kernel_size=k, sigma=(0.15, 3.0))], p=0.5)])
    return TV.Compose([TV.RandomApply([TV.ColorJitter(0.2, 0.2, 0.2, 0.2)], p=0.8),
                       TV.RandomApply([TV.GaussianBlur(kernel_size=k, sigma=(0.15, 1.15))], p=0.5)])


def test_blur_kernel_size():
    assert [blur_kernel_size(s) for s in (1024, 512, 56, 1120)] == [103, 51, 5, 111]


@pytest.mark.parametrize("name,spec", [("weak", WEAK), ("strong", STRONG), ("uda", UDA)])
def test_augmentation_equals_torchvision_with_the_same_seed(name, spec):
    images = torch.rand(6, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    pipeline = _torchvision_pipeline(name, 56)
    for seed in range(8):
        torch.manual_seed(seed)
        expected = torch.stack([pipeline(x) for x in images])
        after_expected = torch.rand(1)
        torch.manual_seed(seed)
        decisions = draw_batch_augmentation(spec, images.shape[0])
        after_ours = torch.rand(1)
        got = apply_batch_augmentation(images, decisions, blur_kernel_size(56))
        assert torch.equal(after_expected, after_ours)  # the same number of draws
        assert torch.equal(got, expected), (name, seed)


def test_flips_per_image_and_per_batch():
    x = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).view(2, 3, 2, 4)
    y = torch.arange(2 * 2 * 4).view(2, 2, 4)
    torch.manual_seed(3)
    expected = [bool(torch.rand(1) < 0.5) for _ in range(2)]
    torch.manual_seed(3)
    assert draw_flips(2, per_image=True) == expected
    torch.manual_seed(3)
    one = bool(torch.rand(1) < 0.5)
    torch.manual_seed(3)
    assert draw_flips(2, per_image=False) == [one, one]
    fx, fy = apply_flips([True, False], x, y)
    assert torch.equal(fx[0], x[0].flip(-1)) and torch.equal(fx[1], x[1])
    assert torch.equal(fy[0], y[0].flip(-1)) and torch.equal(fy[1], y[1])


def test_pseudo_labels_flip_averaged_batch_weight_and_margin():
    g = torch.Generator().manual_seed(0)
    logits, flipped = torch.randn(2, 4, 6, 8, generator=g) * 4, torch.randn(2, 4, 6, 8, generator=g) * 4
    valid = torch.ones(2, 6, 8, dtype=torch.uint8)
    valid[:, :1] = 0
    pseudo = flip_averaged_pseudo_labels(logits, flipped, 0.7, valid)
    probs = (logits.softmax(1) + flipped.softmax(1)) / 2
    assert torch.equal(pseudo.label, probs.argmax(1))
    share = torch.mean((probs.max(1)[0] >= 0.7).float()).item()  # the original's .item() then * ones
    expected = share * torch.ones(2, 6, 8)
    expected[valid == 0] = 0
    assert torch.equal(pseudo.weight, expected)


def test_mix_is_one_mix_with_labelled_source_weight():
    g = torch.Generator().manual_seed(0)
    src, trg = torch.rand(2, 3, 5, 5, generator=g), torch.rand(2, 3, 5, 5, generator=g)
    labels = torch.randint(0, 3, (2, 5, 5), generator=g)
    labels[0, 0] = 255
    pseudo = SimpleNamespace(label=torch.randint(0, 3, (2, 5, 5), generator=g), weight=torch.full((2, 5, 5), 0.25))
    masks = (torch.rand(2, 1, 5, 5, generator=g) > 0.5).long()
    images, mixed_labels, weight = vfm_mix(masks, src, trg, labels, pseudo)
    m = masks[:, 0].bool()
    assert torch.equal(images, torch.where(m[:, None], src, trg))
    assert torch.equal(mixed_labels, torch.where(m, labels, pseudo.label))
    assert torch.equal(weight, torch.where(m, (labels != 255).float(), pseudo.weight))


def test_ema_after_step_rule():
    assert [ema_alpha(k, 0.999) for k in (1, 2, 3)] == [0.5, 1 - 1 / 3, 0.75]
    assert ema_alpha(5000, 0.999) == 0.999
    student, teacher = nn.BatchNorm2d(2), nn.BatchNorm2d(2)
    with torch.no_grad():
        student.weight.fill_(2.0)
        student.running_mean.fill_(4.0)
    t0w, t0m = teacher.weight.clone(), teacher.running_mean.clone()
    ema_update_after_step_(teacher, student, 0.5, buffers=False)
    assert torch.equal(teacher.weight, t0w * 0.5 + 0.5 * 2.0) and torch.equal(teacher.running_mean, t0m)
    ema_update_after_step_(teacher, student, 0.5, buffers=True)
    assert torch.equal(teacher.running_mean, t0m * 0.5 + 0.5 * 4.0)
    assert int(teacher.num_batches_tracked) == 0  # integer buffers are not averaged


def test_token_mask_draws():
    torch.manual_seed(0)
    draws = torch.rand((2, 12))
    torch.manual_seed(0)
    mask = token_mask(2, (3, 4), 0.7)
    assert torch.equal(mask, (0.7 > draws).view(2, 3, 4))


def test_distill_loss_and_frozen_features():
    g = torch.Generator().manual_seed(0)
    f, t = torch.randn(2, 8, 3, 3, generator=g), torch.randn(2, 8, 3, 3, generator=g)
    expected = (F.smooth_l1_loss(f, t, reduction="none").mean(1) * 0.1
                + (1 - F.cosine_similarity(f, t, dim=1)) * 0.9).mean()
    assert torch.allclose(distill_feature_loss(f, t), expected, rtol=0, atol=1e-7)
    head = DistillFeatureHead(4, 8)
    assert head(torch.randn(2, 4, 6, 6), (3, 3)).shape == (2, 8, 3, 3)

    class Encoder(nn.Module):  # a DINOv2-like encoder: cls + 2 registers, identity blocks
        patch_size, embed_dim, num_prefix_tokens = 14, 5, 3

        def __init__(self):
            super().__init__()
            self.proj = nn.Conv2d(3, 5, 14, 14)
            self.blocks = nn.ModuleList([nn.Identity()])
            self.norm = nn.LayerNorm(5)

        def prepare_tokens(self, x):
            tokens = self.proj(x).flatten(2).transpose(1, 2)
            return torch.cat([torch.zeros(x.shape[0], 3, 5), tokens], 1)

    frozen = FrozenDINOv2Features(Encoder(), 42).train()
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    out = frozen(torch.rand(2, 3, 30, 30))
    enc = frozen.encoder
    assert out.shape == (2, 5, 3, 3)
    images = torch.rand(1, 3, 30, 30)
    tokens = enc.norm(enc.prepare_tokens(F.interpolate(images, size=(42, 42), mode="bilinear",
                                                       align_corners=False)))[:, 3:]
    assert torch.equal(frozen(images), tokens.transpose(1, 2).reshape(1, 5, 3, 3))


# ------------------------------------------------------------------------------------------ one iteration
class _TinyModel(nn.Module):
    """A stand-in for the single-scale HRDA model: ``model(images=, sem_seg=, weight=, token_mask=)`` -> losses
    (mean CE over labelled pixels, or ``(ce * w).mean()``), ``generate_pseudo_label``, ``backbone.token_grid``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.backbone = SimpleNamespace(token_grid=lambda hw: (hw[0] // 4, hw[1] // 4))
        self.calls = []

    @property
    def device(self):
        return self.conv.weight.device

    def forward(self, images, sem_seg=None, weight=None, token_mask=None):
        self.calls.append((sem_seg is not None, weight is not None, token_mask is not None))
        x = images
        if token_mask is not None:
            x = x * (~token_mask).float().repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None]
        logits = self.conv(x)
        losses = {}
        if sem_seg is not None:
            if weight is None:
                losses["loss_sem_seg"] = F.cross_entropy(logits, sem_seg, ignore_index=255)
            else:
                losses["loss_sem_seg"] = (F.cross_entropy(logits, sem_seg, ignore_index=255, reduction="none")
                                          * weight).mean()
        return SimpleNamespace(losses=losses, metrics={}, logits=logits, features={"vit_tokens": logits})

    def generate_pseudo_label(self, images):
        return self.conv(images)


def test_one_iteration_order_and_ema_after_the_step():
    torch.manual_seed(0)
    student, teacher = _TinyModel(), _TinyModel()
    g = torch.Generator().manual_seed(1)
    source = [{"image": torch.randint(0, 256, (3, 8, 8), generator=g).to(torch.uint8),
               "sem_seg": torch.randint(0, 3, (8, 8), generator=g)} for _ in range(2)]
    target = [{"image": torch.randint(0, 256, (3, 8, 8), generator=g).to(torch.uint8),
               "valid_pseudo_mask": torch.ones(8, 8, dtype=torch.uint8)} for _ in range(2)]
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    step = VFMUDAStepTrainer(student, iter([(source, target)]), optimizer, teacher=teacher, aug_img_size=8,
                             mask_type="tokens", strong_source_aug=True, flip="per_batch")
    assert [n for n, _ in step.pass_plan()] == ["source", "mixed", "masked"]
    before = student.conv.weight.detach().clone()
    step.iter = 0
    from detectron2.utils.events import EventStorage
    with EventStorage(0):
        step.run_step()
    assert student.calls == [(True, False, False), (True, True, False), (True, True, True)]
    after = student.conv.weight.detach()
    assert not torch.equal(before, after)
    assert torch.equal(teacher.conv.weight, before * 0.5 + 0.5 * after)  # copy at iteration 0, alpha 0.5 after


def test_mic_token_masking_passes_the_mask_to_the_model():
    from hrda_d2.uda.masked_consistency import MaskedImageConsistency

    model = _TinyModel()
    mic = MaskedImageConsistency(mode="separatetrg", mask_type="tokens", mask_ratio=0.7)
    images = torch.randn(2, 3, 8, 8)
    pseudo = SimpleNamespace(target_images=images, label=torch.randint(0, 3, (2, 8, 8)),
                             weight=torch.full((2, 8, 8), 0.5))
    source = SimpleNamespace(images=images, labels=pseudo.label)
    torch.manual_seed(0)
    expected = (0.7 > torch.rand((2, 4))).view(2, 2, 2)
    torch.manual_seed(0)
    out = mic.forward(model, source, None, lambda: torch.autocast("cpu", enabled=False), pseudo)
    assert out.batch.mask is None and torch.equal(out.batch.token_mask, expected)
    assert torch.equal(out.batch.images, images) and model.calls == [(True, True, True)]
