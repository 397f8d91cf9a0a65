"""MIC building blocks (docs/method.md §17): block masking, the masked batch per mode, the masked loss.

Expectations come from the original's formulas (``BlockMaskGenerator``, ``MaskingConsistencyModule``):
grid ``round(H / b) x round(W / b)`` of ``torch.rand`` draws, kept where ``draw > ratio``, nearest upsampling
(output pixel ``y`` takes grid row ``floor(y * gh / H)``), ``masked = image * mask`` on normalised images;
``separate`` = stack(source 0, target 0) with weights (1, pseudo weight 0); the loss = the model's
``forward_train`` on the masked batch with ``mask_lambda`` on the fused term only.
"""
import random

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from hrda_d2.uda import MIC_MODES, MaskedImageConsistency, block_mask, block_mask_grid_shape, build_masked_batch, \
    mask_images
from tests.helpers.tiny_configs import tiny_hrda_cfg

PIXEL_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
PIXEL_STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


def normalised_images(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.randint(0, 256, (n, 3, h, w), generator=g).float()
    return (rgb - PIXEL_MEAN) / PIXEL_STD


def nearest_expected(draws: torch.Tensor, ratio: float, h: int, w: int) -> torch.Tensor:
    """The mask from the grid draws by the nearest-neighbour formula (independent of F.interpolate)."""
    gh, gw = draws.shape[-2:]
    rows = torch.div(torch.arange(h) * gh, h, rounding_mode="floor")
    cols = torch.div(torch.arange(w) * gw, w, rounding_mode="floor")
    kept = (draws > ratio).float()
    return kept[:, :, rows][:, :, :, cols]


# ------------------------------------------------------------------------------------------------ masking
@pytest.mark.parametrize("h,w,block,grid", [
    (1000, 1000, 64, (16, 16)),   # 15.625 -> 16
    (1024, 2048, 64, (16, 32)),
    (160, 96, 64, (2, 2)),        # 2.5 -> 2 (ties to even), 1.5 -> 2
    (128, 128, 8, (16, 16)),
])
def test_grid_shape_rounds_like_python(h, w, block, grid):
    assert block_mask_grid_shape(h, w, block) == grid


def test_mask_of_a_size_not_multiple_of_the_block_is_the_nearest_upsampled_grid():
    torch.manual_seed(3)
    mask = block_mask(2, 1000, 1000, 0.7, 64)
    torch.manual_seed(3)
    draws = torch.rand(2, 1, 16, 16)
    assert mask.shape == (2, 1, 1000, 1000) and mask.dtype == torch.float32
    assert torch.equal(mask, nearest_expected(draws, 0.7, 1000, 1000))
    # blocks of 62 or 63 rows: 1000 = 8 x 62 + 8 x 63
    heights = torch.bincount(torch.div(torch.arange(1000) * 16, 1000, rounding_mode="floor"))
    assert sorted(set(heights.tolist())) == [62, 63] and int(heights.sum()) == 1000


def test_mask_is_blocky_for_multiples_of_the_block():
    mask = block_mask(3, 256, 512, 0.5, 64)
    blocks = mask.view(3, 1, 4, 64, 8, 64)
    assert torch.equal(blocks.amin(dim=(3, 5)), blocks.amax(dim=(3, 5)))  # constant inside every block
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("ratio", [0.3, 0.7, 0.9])
def test_kept_fraction_is_one_minus_the_ratio(ratio):
    mask = block_mask(64, 256, 256, ratio, 16)  # 16384 independent blocks: std of the mean < 0.004
    assert abs(float(mask.mean()) - (1 - ratio)) < 0.02


def test_ratio_zero_keeps_everything_and_one_masks_everything():
    assert bool((block_mask(4, 64, 64, 0.0, 8) == 1).all())  # P(draw == 0) is negligible
    assert bool((block_mask(4, 64, 64, 1.0, 8) == 0).all())  # draws are < 1


def test_masked_pixels_are_exactly_zero_in_normalised_space_ie_the_mean_colour():
    images = normalised_images(2, 128, 192)
    masked, mask = mask_images(images, 0.7, 32)
    dropped = (mask == 0).expand_as(images)
    assert dropped.any() and (~dropped).any()
    assert bool((masked[dropped] == 0).all())
    assert torch.equal(masked[~dropped], images[~dropped])
    colour = masked * PIXEL_STD + PIXEL_MEAN
    assert torch.allclose(colour.permute(0, 2, 3, 1)[mask[:, 0] == 0], PIXEL_MEAN.view(3))


def test_too_large_blocks_are_refused_with_the_key():
    with pytest.raises(ValueError, match="UDA.MIC.BLOCK_SIZE"):
        block_mask_grid_shape(20, 64, 64)


# ------------------------------------------------------------------------------------------ masked batch
def _dacs_tensors(n=2, h=32, w=48):
    src = normalised_images(n, h, w, seed=1)
    trg = normalised_images(n, h, w, seed=2)
    src_labels = torch.randint(0, 19, (n, h, w))
    pseudo_label = torch.randint(0, 19, (n, h, w))
    pseudo_weight = torch.full((n, h, w), 0.6)
    pseudo_weight[:, :3] = 0  # a margin
    return src, src_labels, trg, pseudo_label, pseudo_weight


def test_separate_stacks_source_0_and_target_0_with_weight_1_for_the_source():
    src, src_labels, trg, pseudo_label, pseudo_weight = _dacs_tensors()
    images, labels, weight = build_masked_batch("separate", src, src_labels, trg, pseudo_label, pseudo_weight)
    assert images.shape == (2, 3, 32, 48) and labels.shape == weight.shape == (2, 32, 48)
    assert torch.equal(images[0], src[0]) and torch.equal(images[1], trg[0])
    assert torch.equal(labels[0], src_labels[0]) and torch.equal(labels[1], pseudo_label[0])
    assert bool((weight[0] == 1).all()) and torch.equal(weight[1], pseudo_weight[0])


@pytest.mark.parametrize("mode", ["separatetrgaug", "separatetrg"])
def test_target_modes_use_the_target_batch_pseudo_labels_and_weights(mode):
    src, src_labels, trg, pseudo_label, pseudo_weight = _dacs_tensors()
    images, labels, weight = build_masked_batch(mode, src, src_labels, trg, pseudo_label, pseudo_weight)
    assert torch.equal(images, trg) and torch.equal(labels, pseudo_label) and torch.equal(weight, pseudo_weight)


def test_source_modes_use_the_source_batch_without_weights():
    src, src_labels, trg, pseudo_label, pseudo_weight = _dacs_tensors()
    images, labels, weight = build_masked_batch("separatesrc", src, src_labels, trg, pseudo_label, pseudo_weight)
    assert torch.equal(images, src) and torch.equal(labels, src_labels) and weight is None


def test_unknown_mode_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"UDA.MIC.MODE='separatetarget'.*separate,.*separatetrgaug"):
        MaskedImageConsistency(mode="separatetarget")
    assert set(MIC_MODES) == {"separate", "separateaug", "separatesrc", "separatesrcaug", "separatetrg",
                              "separatetrgaug"}


def _mic_from_cfg(**mic):
    cfg = tiny_hrda_cfg()
    cfg.UDA.AUG.BLUR = False  # MIC draws and applies its blur regardless (the original's MIC module)
    for key, value in mic.items():
        cfg.UDA.MIC[key] = value
    return MaskedImageConsistency(cfg)


def _seed_with_draws(wanted):
    """A Python seed whose first two uniform(0, 1) draws satisfy ``wanted(jitter, blur)``."""
    for seed in range(1000):
        rng = random.Random(seed)
        if wanted(rng.uniform(0, 1), rng.uniform(0, 1)):
            return seed
    raise AssertionError("no seed found")


def test_trgaug_draws_jitter_then_blur_and_skips_both_below_their_thresholds():
    mic = _mic_from_cfg(MODE="separatetrgaug", MASK_RATIO=0.5, BLOCK_SIZE=8)
    src, src_labels, trg, pseudo_label, pseudo_weight = _dacs_tensors()
    # jitter draw <= 0.2 (COLOR_JITTER_SKIP_THRESHOLD) and blur draw <= 0.5: only the mask is applied
    random.seed(_seed_with_draws(lambda j, b: j <= 0.2 and b <= 0.5))
    expected_python_state = (random.uniform(0, 1), random.uniform(0, 1), random.getstate())[-1]
    random.seed(_seed_with_draws(lambda j, b: j <= 0.2 and b <= 0.5))
    torch.manual_seed(5)
    batch = mic.masked_batch(src, src_labels, trg, pseudo_label, pseudo_weight)
    assert random.getstate() == expected_python_state  # exactly two draws from Python's random
    torch.manual_seed(5)
    expected_mask = nearest_expected(torch.rand(2, 1, 4, 6), 0.5, 32, 48)
    assert torch.equal(batch.mask, expected_mask) and torch.equal(batch.images, trg * expected_mask)
    # blur draw > 0.5: blurred although UDA.AUG.BLUR is False; the masked blocks stay exactly 0
    random.seed(_seed_with_draws(lambda j, b: j <= 0.2 and b > 0.5))
    batch = mic.masked_batch(src, src_labels, trg, pseudo_label, pseudo_weight)
    kept = (batch.mask == 1).expand_as(trg)
    assert not torch.allclose(batch.images[kept], trg[kept])
    assert bool((batch.images[~kept] == 0).all())


# --------------------------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("loss_lambda", [1.0, 0.25])
def test_mic_loss_is_lambda_times_the_forward_train_loss_on_the_masked_batch(loss_lambda):
    cfg = tiny_hrda_cfg()
    cfg.MODEL.HRDA.HR_CROP_SIZE = [32, 32]
    model = build_model(cfg).train()
    mic = MaskedImageConsistency(mode="separatetrg", mask_ratio=0.5, block_size=16, loss_lambda=loss_lambda)
    _, _, trg, pseudo_label, pseudo_weight = _dacs_tensors(2, 64, 64)

    torch.manual_seed(11)
    np.random.seed(11)
    batch = mic.masked_batch(trg, pseudo_label, trg, pseudo_label, pseudo_weight)
    losses, metrics = mic.losses(model, batch)

    torch.manual_seed(11)
    np.random.seed(11)
    mask = nearest_expected(torch.rand(2, 1, 4, 4), 0.5, 64, 64)  # the same torch draws, then the forward's
    expected = model.forward_train(trg * mask, pseudo_label, pseudo_weight).losses
    assert set(losses) == {"loss_masked_sem_seg", "loss_masked_sem_seg_hr"}
    assert torch.equal(losses["loss_masked_sem_seg"], loss_lambda * expected["loss_sem_seg"])
    assert torch.equal(losses["loss_masked_sem_seg_hr"], expected["loss_sem_seg_hr"])  # not scaled (§17.4)
    assert set(metrics) == {"masked_acc_sem_seg", "masked_acc_sem_seg_hr"}
    # the pseudo weights enter the loss (weight 1 everywhere gives another value)
    torch.manual_seed(11)
    np.random.seed(11)
    torch.rand(2, 1, 4, 4)
    unweighted = model.forward_train(trg * mask, pseudo_label, torch.ones_like(pseudo_weight)).losses
    assert not torch.equal(unweighted["loss_sem_seg"], expected["loss_sem_seg"])
