"""The (source, target) pair loader on a tiny generated dataset: batch layout, worker processes,
rank sharding, exact resume (bit-identical streams from start_iter = k), and the test loader."""
import copy
import json
import uuid

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from hrda_d2.config import add_hrda_config
from hrda_d2.data.build import (
    build_source_train_dataset,
    build_source_train_loader,
    build_test_loader,
    build_train_loader,
)
from hrda_d2.data.common import PositionSeededDataset
from hrda_d2.data.samplers import InfinitePositionSampler

N_SOURCE, N_TARGET = 6, 4


def _write_split(root, n, h, w, rng, with_stats):
    """n random images + train-id labels (blocks of classes 0..4, a strip of 255) under ``root``."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    dicts, class_stats, with_class = [], [], {}
    for i in range(n):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        label = rng.integers(0, 5, (h // 8, w // 8)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
        label[:, :4] = 255
        img_path, lbl_path = root / "images" / f"{i:05d}.png", root / "labels" / f"{i:05d}_labelTrainIds.png"
        cv2.imwrite(str(img_path), img)
        Image.fromarray(label, "L").save(lbl_path)
        dicts.append({"file_name": str(img_path), "sem_seg_file_name": str(lbl_path), "height": h, "width": w})
        counts = np.bincount(label[label != 255].ravel(), minlength=5)
        stats = {str(c): int(counts[c]) for c in range(5) if counts[c] > 0}
        class_stats.append({**stats, "file": str(lbl_path)})
        for c, count in stats.items():
            with_class.setdefault(c, []).append([str(lbl_path), count])
    if with_stats:
        (root / "sample_class_stats.json").write_text(json.dumps(class_stats))
        (root / "samples_with_class.json").write_text(json.dumps(with_class))
    return dicts


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    rng = np.random.default_rng(0)
    base = tmp_path_factory.mktemp("uda_data")
    tag = uuid.uuid4().hex[:8]
    names = {"source": f"test_uda_source_{tag}", "target": f"test_uda_target_{tag}"}
    source = _write_split(base / "gta", N_SOURCE, 48, 88, rng, with_stats=True)
    target = _write_split(base / "cityscapes", N_TARGET, 40, 80, rng, with_stats=False)
    DatasetCatalog.register(names["source"], lambda: source)
    DatasetCatalog.register(names["target"], lambda: target)
    MetadataCatalog.get(names["source"]).set(dataset_root=str(base / "gta"), ignore_label=255)
    MetadataCatalog.get(names["target"]).set(ignore_label=255)
    yield names
    for name in names.values():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _cfg(splits, workers=0, rcs=True):
    cfg = add_hrda_config(get_cfg())
    cfg.DATASETS.SOURCE = (splits["source"],)
    cfg.DATASETS.TARGET = (splits["target"],)
    cfg.DATASETS.RCS.ENABLED = rcs
    cfg.DATASETS.RCS.MIN_PIXELS = 64
    cfg.INPUT.SOURCE.SCALE = [110, 60]  # 48x88 -> 60x110
    cfg.INPUT.SOURCE.CROP_SIZE = [32, 32]
    cfg.INPUT.TARGET.SCALE = [80, 40]
    cfg.INPUT.TARGET.CROP_SIZE = [32, 32]
    cfg.INPUT.TARGET.PSEUDO_MARGINS = [3, 6, 2, 2]
    cfg.INPUT.TARGET.VALID_MASK_SIZE = [40, 80]
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.SEED = 5
    return cfg


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["file_name"] == y["file_name"]
        for key in ("image", "sem_seg", "valid_pseudo_mask"):
            assert (key in x) == (key in y)
            if key in x:
                assert torch.equal(x[key], y[key]), key


def test_pair_loader_batches_with_workers(splits):
    loader = build_train_loader(_cfg(splits, workers=2))
    for source, target in _take(loader, 3):
        assert len(source) == 2 and len(target) == 2
        for s in source:
            assert s["image"].dtype == torch.uint8 and tuple(s["image"].shape) == (3, 32, 32)
            assert s["sem_seg"].dtype == torch.int64 and tuple(s["sem_seg"].shape) == (32, 32)
            values = set(s["sem_seg"].unique().tolist())
            assert values <= {0, 1, 2, 3, 4, 255}
            assert "valid_pseudo_mask" not in s
        for t in target:
            assert t["image"].dtype == torch.uint8 and tuple(t["image"].shape) == (3, 32, 32)
            assert t["valid_pseudo_mask"].dtype == torch.uint8 and tuple(t["valid_pseudo_mask"].shape) == (32, 32)
            assert set(t["valid_pseudo_mask"].unique().tolist()) <= {0, 1}
            # 32-row crops of 40-row images always include some of the top 3 or bottom 6 margin rows
            assert t["valid_pseudo_mask"].min() == 0


@pytest.mark.parametrize("rcs", [True, False])
def test_exact_resume_bit_identical(splits, rcs):
    straight = _take(build_train_loader(_cfg(splits, workers=0, rcs=rcs)), 5)
    resumed = _take(build_train_loader(_cfg(splits, workers=0, rcs=rcs), start_iter=2), 3)
    for (s0, t0), (s1, t1) in zip(straight[2:], resumed):
        _assert_batches_equal(s0, s1)
        _assert_batches_equal(t0, t1)
    # the stream is not constant
    assert not torch.equal(straight[0][0][0]["image"], straight[1][0][0]["image"])


def test_exact_resume_with_two_workers(splits):
    straight = _take(build_train_loader(_cfg(splits, workers=0)), 4)
    resumed = _take(build_train_loader(_cfg(splits, workers=2), start_iter=1), 3)
    for (s0, t0), (s1, t1) in zip(straight[1:], resumed):
        _assert_batches_equal(s0, s1)
        _assert_batches_equal(t0, t1)


def test_source_only_loader_is_the_source_stream(splits):
    pairs = _take(build_train_loader(_cfg(splits)), 2)
    sources = _take(build_source_train_loader(_cfg(splits)), 2)
    for (s0, _), s1 in zip(pairs, sources):
        _assert_batches_equal(s0, s1)


def test_shuffled_epochs_visit_every_image_once(splits):
    dataset, draws = build_source_train_dataset(_cfg(splits, rcs=False))
    assert not draws
    seeded = PositionSeededDataset(dataset, seed=5, stream_id=0, shuffle=True)
    for epoch in range(2):
        positions = range(epoch * N_SOURCE, (epoch + 1) * N_SOURCE)
        names = [seeded.dataset[seeded.dataset_index(p)]["file_name"] for p in positions]
        assert len(set(names)) == N_SOURCE
    first, second = ([seeded.dataset_index(p) for p in range(e * N_SOURCE, (e + 1) * N_SOURCE)] for e in range(2))
    assert first != second  # a new permutation per epoch


def test_ranks_get_disjoint_positions_covering_each_iteration():
    batch, world = 4, 2
    per_rank = batch // world
    start_iter = 3
    ranks = []
    for rank in range(world):
        it = iter(InfinitePositionSampler(start_iter * batch, rank=rank, world_size=world))
        ranks.append([next(it) for _ in range(per_rank * 5)])
    assert set(ranks[0]).isdisjoint(ranks[1])
    for i in range(5):  # iteration start_iter + i consumes exactly positions [(start_iter+i)*batch, +batch)
        used = set(ranks[0][i * per_rank : (i + 1) * per_rank]) | set(ranks[1][i * per_rank : (i + 1) * per_rank])
        assert used == set(range((start_iter + i) * batch, (start_iter + i + 1) * batch))


def test_main_process_rng_untouched_with_zero_workers(splits):
    loader = build_train_loader(_cfg(splits, workers=0))
    np.random.seed(11)
    torch.manual_seed(11)
    expected_np, expected_torch = np.random.rand(), torch.rand(1)
    np.random.seed(11)
    torch.manual_seed(11)
    next(loader)
    assert np.random.rand() == expected_np and torch.equal(torch.rand(1), expected_torch)


def test_test_loader(splits):
    cfg = _cfg(splits)
    cfg.INPUT.TEST.SCALE = [160, 80]  # 40x80 -> 80x160
    batches = list(build_test_loader(cfg, splits["target"]))
    assert len(batches) == N_TARGET and all(len(b) == 1 for b in batches)
    d = batches[0][0]
    assert tuple(d["image"].shape) == (3, 80, 160) and (d["height"], d["width"]) == (40, 80)


def test_rcs_recrops_reusing_the_loaded_file_equal_reloading(splits):
    cfg = _cfg(splits)
    cfg.DATASETS.RCS.MIN_CROP_RATIO = 3.0  # > 192 pixels of the class in a 32x32 crop: some crops fail
    dataset, _ = build_source_train_dataset(cfg)
    calls = []

    def reloading_mapper(d):  # not a SemSegTrainMapper: the dataset maps the file again each time
        calls.append(d["file_name"])
        return dataset.mapper(d)

    reloading = copy.copy(dataset)
    reloading.mapper = reloading_mapper
    for seed in range(12):
        np.random.seed(seed)
        a = dataset[0]
        np.random.seed(seed)
        b = reloading[0]
        _assert_batches_equal([a], [b])
    assert len(calls) > 12  # re-crops happened
