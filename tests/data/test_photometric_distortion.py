"""PhotoMetricDistortion (data/photometric_distortion.py) against the ORIGINAL mmseg transform: the same NumPy
seed gives the same distorted image (tests/fixtures/dlv2_reference/photometric_distortion_io.npz, computed
with the original class on BGR copies of the same images)."""
import numpy as np
import pytest
import torch

from hrda_d2.data.dataset_mappers.train_mappers import SemSegTrainMapper
from hrda_d2.data.photometric_distortion import PhotoMetricDistortion
from tests.helpers.paths import DLV2_REFERENCE_DIR


@pytest.fixture(scope="module")
def io():
    return np.load(DLV2_REFERENCE_DIR / "photometric_distortion_io.npz")


def test_equals_the_original_for_the_same_seed(io):
    changed = 0
    for image, seed, expected in zip(io["image_rgb_uint8"], io["seeds"], io["distorted_rgb_uint8"]):
        np.random.seed(int(seed))
        got = PhotoMetricDistortion().get_transform(image).apply_image(image)
        assert got.dtype == np.uint8 and np.array_equal(got, expected), int(seed)
        changed += not np.array_equal(got, image)
    assert changed >= 6  # the seeds exercise the steps (one seed leaves the image unchanged)


def test_draws_every_step_with_probability_one_half():
    np.random.seed(0)
    params = [PhotoMetricDistortion().get_transform(np.zeros((2, 2, 3), np.uint8)).params for _ in range(4000)]
    for name in ("brightness", "saturation", "hue", "contrast"):
        rate = np.mean([getattr(p, name) is not None for p in params])
        assert 0.46 < rate < 0.54, (name, rate)
    assert 0.46 < np.mean([p.contrast_first for p in params]) < 0.54
    assert all(-18 <= p.hue < 18 for p in params if p.hue is not None)


def test_mapper_applies_it_after_the_flip_and_leaves_labels_alone(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    label = rng.integers(0, 19, (40, 60), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(label).save(tmp_path / "a_label.png")
    record = {"file_name": str(tmp_path / "a.png"), "sem_seg_file_name": str(tmp_path / "a_label.png")}
    kwargs = dict(scale=[60, 40], crop_size=[32, 32], cat_max_ratio=1.0, flip_prob=0.5, num_classes=19)
    plain, distorted = SemSegTrainMapper(**kwargs), SemSegTrainMapper(**kwargs, photometric_distortion=True)
    np.random.seed(3)
    a = plain(record)
    np.random.seed(3)
    b = distorted(record)
    assert torch.equal(a["sem_seg"], b["sem_seg"])  # same crop and flip: the distortion draws after them
    np.random.seed(3)
    crop_flip = plain.augmentations.augs[:2]
    from detectron2.data import transforms as T
    aug_input = T.AugInput(plain.load(record).image, sem_seg=plain.load(record).label)
    T.AugmentationList(crop_flip)(aug_input)
    expected = PhotoMetricDistortion().get_transform(aug_input.image).apply_image(aug_input.image)
    assert np.array_equal(b["image"].permute(1, 2, 0).numpy(), expected)
