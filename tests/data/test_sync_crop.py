"""``INPUT.SYNC_CROP_SIZE`` (docs/method.md §10.4): one window per batch position, cut out of the source and the
target sample after their own crops (and after RCS); exact resume; off = the streams are not wrapped; config checks."""
import pytest
import torch

from hrda_d2.config import config_problems
from hrda_d2.data.build import build_train_loader
from hrda_d2.data.common import PositionSeededDataset
from hrda_d2.data.sync_crop import SynchronizedCropStream, crop_sample, sync_crop_box
from tests.data.test_train_loader import _assert_batches_equal, _cfg, _take, splits  # noqa: F401 (fixture)

SYNC = [16, 24]


def _sync_cfg(splits, **kwargs):  # noqa: F811
    cfg = _cfg(splits, **kwargs)
    cfg.INPUT.SYNC_CROP_SIZE = list(SYNC)
    return cfg


def test_window_is_a_pure_function_of_seed_and_position_with_uniform_offsets():
    boxes = [sync_crop_box(5, p, (32, 32), SYNC) for p in range(400)]
    assert boxes == [sync_crop_box(5, p, (32, 32), SYNC) for p in range(400)]
    assert boxes != [sync_crop_box(6, p, (32, 32), SYNC) for p in range(400)]
    assert {(y2 - y1, x2 - x1) for y1, y2, x1, x2 in boxes} == {(16, 24)}
    # offsets cover 0 .. margin (32 - 16 rows, 32 - 24 columns), both ends included, as randint(0, margin + 1)
    assert {b[0] for b in boxes} == set(range(17)) and {b[2] for b in boxes} == set(range(9))
    assert sync_crop_box(5, 0, (10, 40), (16, 24))[:2] == (0, 10)  # a window taller than the sample is clipped


def test_crop_sample_cuts_every_pixel_field_and_keeps_the_rest():
    sample = {"image": torch.arange(3 * 4 * 5).reshape(3, 4, 5), "sem_seg": torch.arange(20).reshape(4, 5),
              "valid_pseudo_mask": torch.ones(4, 5, dtype=torch.uint8), "file_name": "x.png", "height": 40}
    out = crop_sample(sample, (1, 3, 2, 5))
    assert torch.equal(out["image"], sample["image"][:, 1:3, 2:5])
    assert torch.equal(out["sem_seg"], sample["sem_seg"][1:3, 2:5])
    assert out["valid_pseudo_mask"].shape == (2, 3) and out["file_name"] == "x.png" and out["height"] == 40


def test_source_and_target_of_a_position_get_the_same_window_of_their_own_crops(splits):  # noqa: F811
    plain = _take(build_train_loader(_cfg(splits)), 3)
    synced = _take(build_train_loader(_sync_cfg(splits)), 3)
    seed, batch = 5, 2
    for iteration, ((s_plain, t_plain), (s_sync, t_sync)) in enumerate(zip(plain, synced)):
        for index in range(batch):
            box = sync_crop_box(seed, iteration * batch + index, (32, 32), SYNC)
            for before, after in ((s_plain[index], s_sync[index]), (t_plain[index], t_sync[index])):
                # the same sample (RCS choice, its crop and flip unchanged), then the window of its position
                _assert_batches_equal([crop_sample(before, box)], [after])
                assert tuple(after["image"].shape) == (3, *SYNC)
    assert "sem_seg" in s_sync[0] and "valid_pseudo_mask" in t_sync[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_cuts_the_same_windows(splits, workers):  # noqa: F811
    straight = _take(build_train_loader(_sync_cfg(splits)), 4)
    resumed = _take(build_train_loader(_sync_cfg(splits, workers=workers), start_iter=1), 3)
    for (s0, t0), (s1, t1) in zip(straight[1:], resumed):
        _assert_batches_equal(s0, s1)
        _assert_batches_equal(t0, t1)


def test_off_leaves_the_streams_unwrapped(splits):  # noqa: F811
    loader = build_train_loader(_cfg(splits))
    assert isinstance(loader.source_loader.dataset.dataset, PositionSeededDataset)
    loader = build_train_loader(_sync_cfg(splits))
    assert isinstance(loader.target_loader.dataset.dataset, SynchronizedCropStream)


def test_config_checks_name_the_key(splits):  # noqa: F811
    cfg = _sync_cfg(splits)
    cfg.MODEL.HRDA.HR_CROP_SIZE = [8, 8]
    assert config_problems(cfg) == []
    cfg.INPUT.TARGET.CROP_SIZE = [32, 40]
    assert any(line.startswith("INPUT.SYNC_CROP_SIZE=") and "same size" in line for line in config_problems(cfg))
    cfg = _sync_cfg(splits)
    cfg.INPUT.SYNC_CROP_SIZE = [48, 16]
    assert any("larger than the training crops" in line for line in config_problems(cfg))
    cfg = _sync_cfg(splits)
    cfg.SEED = -1
    assert any("needs a fixed seed" in line for line in config_problems(cfg))
    cfg = _sync_cfg(splits)
    cfg.MODEL.HRDA.HR_CROP_SIZE = [24, 24]  # the detail crop is cut from the 16 x 24 window
    assert any(line.startswith("MODEL.HRDA.HR_CROP_SIZE=") and "INPUT.SYNC_CROP_SIZE" in line
               for line in config_problems(cfg))
