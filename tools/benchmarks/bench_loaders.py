#!/usr/bin/env python
"""Throughput of the source and target training loaders at the paper's resolutions.

Generates a handful of full-size images in a temporary folder with the project's generator
(``datasets/prepare_synthetic.py --full-size``: GTA-like 1914x1052 source, Cityscapes-like 2048x1024 target),
prepares them (train ids, rare-class-sampling statistics), registers them as two splits, then reports images/s of

* the source loader: rescale to (2560, 1440) -> 2560x1407, 1024x1024 crop with cat_max_ratio 0.75,
  flip, rare class sampling on (T 0.01, min_pixels 3000, min_crop_ratio 2.0: the re-crops are included),
* the target loader: (2048, 1024) (unchanged) -> 1024x1024 crop, flip, pseudo-label margin mask,

each with N data-loader workers, next to a bare image decode (``read_rgb_image``, one process) of the
same files in the same run (ratio = loader / decode). Example::

    python tools/benchmarks/bench_loaders.py --workers 0 1 2 --images 4 --batches 4
"""
import argparse
import os
import tempfile
import time
from typing import Dict, List, Tuple

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog

from hrda_d2.config import add_hrda_config
from hrda_d2.data.build import build_uda_train_loader
from hrda_d2.data.image_io import read_rgb_image
from hrda_d2.data.datasets import register_cityscapes_root, register_sem_seg_split
from hrda_d2.data.preparation import prepare_cityscapes, prepare_gta
from hrda_d2.data.synthetic import generate_synthetic_datasets

SOURCE_SPLIT, TARGET_PREFIX = "bench_loaders_gta_source", "bench_loaders_cityscapes"


def generate(root: str, n: int) -> Tuple[List[dict], List[dict], str]:
    """Full-size generated GTA-like and Cityscapes-like replicas in the real layouts (the project's generator),
    prepared (train ids + RCS statistics) and registered. Returns (source dicts, target dicts, target split)."""
    generate_synthetic_datasets(root, num_train=n, num_val=1, full_size=True)
    prepare_gta(os.path.join(root, "gta"), nproc=2)
    prepare_cityscapes(os.path.join(root, "cityscapes"), nproc=2)
    gta = os.path.join(root, "gta")
    register_sem_seg_split(SOURCE_SPLIT, os.path.join(gta, "images"), os.path.join(gta, "labels"), ".png",
                           "_labelTrainIds.png", dataset_root=gta)
    target_split = register_cityscapes_root(os.path.join(root, "cityscapes"), TARGET_PREFIX, splits=("train",))[0]
    return DatasetCatalog.get(SOURCE_SPLIT), DatasetCatalog.get(target_split), target_split


def decode_rate(dicts: List[dict], rounds: int) -> float:
    """Images/s of a bare ``read_rgb_image`` loop over the files."""
    start = time.perf_counter()
    for _ in range(rounds):
        for d in dicts:
            read_rgb_image(d["file_name"])
    return rounds * len(dicts) / (time.perf_counter() - start)


def loader_rate(loader, batches: int) -> float:
    """Images/s of an infinite batch loader after one warm-up batch (worker start-up excluded)."""
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    images = sum(len(next(it)) for _ in range(batches))
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="worker counts to measure")
    parser.add_argument("--images", type=int, default=4, help="generated images per domain")
    parser.add_argument("--batches", type=int, default=4, help="timed batches per loader and worker count")
    parser.add_argument("--batch-size", type=int, default=2, help="SOLVER.IMS_PER_BATCH")
    parser.add_argument("--rcs-min-pixels", type=int, default=3000,
                        help="DATASETS.RCS.MIN_PIXELS (the paper's 3000; lower it if few images leave a rare class "
                             "without a file above it)")
    parser.add_argument("--root", default=None, help="folder for the generated data (default: a temp folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_loaders_") as tmp:
        root = args.root or tmp
        start = time.perf_counter()
        source, target, target_split = generate(root, args.images)
        print(f"generated and prepared {len(source)}+{len(target)} images in {time.perf_counter() - start:.1f} s "
              f"under {root}")

        decode: Dict[str, float] = {"source": decode_rate(source, 2), "target": decode_rate(target, 2)}
        print(f"bare decode: source {decode['source']:.2f} img/s, target {decode['target']:.2f} img/s (1 process)")
        print(f"{'workers':>7} | {'source img/s':>12} {'x decode':>8} | {'target img/s':>12} {'x decode':>8}")
        for workers in args.workers:
            cfg = add_hrda_config(get_cfg())  # paper defaults: scales, 1024 crops, margins, RCS
            cfg.DATASETS.SOURCE, cfg.DATASETS.TARGET = (SOURCE_SPLIT,), (target_split,)
            cfg.DATALOADER.NUM_WORKERS = workers
            cfg.DATASETS.RCS.MIN_PIXELS = args.rcs_min_pixels
            cfg.SOLVER.IMS_PER_BATCH = args.batch_size
            pair = build_uda_train_loader(cfg)
            rates = {
                "source": loader_rate(pair.source_loader, args.batches),
                "target": loader_rate(pair.target_loader, args.batches),
            }
            print(
                f"{workers:>7} | {rates['source']:>12.2f} {rates['source'] / decode['source']:>8.2f} | "
                f"{rates['target']:>12.2f} {rates['target'] / decode['target']:>8.2f}"
            )
            del pair


if __name__ == "__main__":
    main()
