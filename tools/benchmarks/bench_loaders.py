#!/usr/bin/env python
"""Throughput of the source and target training loaders at the paper's resolutions.

Generates a handful of full-size images in a temporary folder (GTA-like 1914x1052 source with train-id
labels and rare-class-sampling statistics, Cityscapes-like 2048x1024 target), registers them as two
splits, then reports images/s of

* the source loader: rescale to (2560, 1440) -> 2560x1407, 1024x1024 crop with cat_max_ratio 0.75,
  flip, rare class sampling on (T 0.01, min_pixels 3000, min_crop_ratio 2.0: the re-crops are included),
* the target loader: (2048, 1024) (unchanged) -> 1024x1024 crop, flip, pseudo-label margin mask,

each with N data-loader workers, next to a bare image decode (``read_rgb_image``, one process) of the
same files in the same run (ratio = loader / decode). Example::

    python tools/benchmarks/bench_loaders.py --workers 0 1 2 --images 4 --batches 4
"""
import argparse
import json
import os
import tempfile
import time
from typing import Dict, List, Tuple

import cv2
import numpy as np
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from hrda_d2.config import add_hrda_config
from hrda_d2.data.build import build_uda_train_loader
from hrda_d2.data.dataset_mappers.image_reading import read_rgb_image

SOURCE_SPLIT, TARGET_SPLIT = "bench_loaders_gta_source", "bench_loaders_cityscapes_target"
NUM_CLASSES = 19


def _scene_label(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A street-like train-id map: sky / building / road bands plus rectangles of the other classes."""
    label = np.full((h, w), 2, np.uint8)  # building
    horizon = int(h * rng.uniform(0.35, 0.5))
    label[: int(horizon * 0.6)] = 10  # sky
    label[int(h * 0.65) :] = 0  # road
    label[int(h * 0.65) : int(h * 0.72)] = 1  # sidewalk
    for c in (3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 18):
        for _ in range(rng.integers(0, 3)):
            bh, bw = int(rng.integers(20, h // 4)), int(rng.integers(10, w // 6))
            y, x = int(rng.integers(horizon // 2, h - bh)), int(rng.integers(0, w - bw))
            label[y : y + bh, x : x + bw] = c
    label[-20:] = 255
    return label


def _paint(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An RGB image painted from the label colours with a smooth texture and pixel noise (PNG size
    and decode time in the range of real street scenes)."""
    palette = rng.integers(0, 256, (256, 3)).astype(np.float32)
    h, w = label.shape
    texture = cv2.resize(rng.normal(0, 25, (h // 16, w // 16, 3)).astype(np.float32), (w, h))
    image = palette[label] + texture + rng.normal(0, 6, (h, w, 3)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def generate(root: str, n: int) -> Tuple[List[dict], List[dict]]:
    """Write n GTA-like and n Cityscapes-like samples (+ RCS statistics) under ``root``."""
    rng = np.random.default_rng(0)
    source, target, class_stats, with_class = [], [], [], {}
    for domain, (h, w), dicts in (("gta", (1052, 1914), source), ("cityscapes", (1024, 2048), target)):
        os.makedirs(os.path.join(root, domain, "images"), exist_ok=True)
        os.makedirs(os.path.join(root, domain, "labels"), exist_ok=True)
        for i in range(n):
            label = _scene_label(h, w, rng)
            img_path = os.path.join(root, domain, "images", f"{i:05d}.png")
            lbl_path = os.path.join(root, domain, "labels", f"{i:05d}_labelTrainIds.png")
            cv2.imwrite(img_path, cv2.cvtColor(_paint(label, rng), cv2.COLOR_RGB2BGR))
            Image.fromarray(label, "L").save(lbl_path)
            dicts.append({"file_name": img_path, "sem_seg_file_name": lbl_path, "height": h, "width": w})
            if domain == "gta":
                counts = np.bincount(label[label != 255].ravel(), minlength=NUM_CLASSES)
                stats = {str(c): int(counts[c]) for c in range(NUM_CLASSES) if counts[c] > 0}
                class_stats.append({**stats, "file": lbl_path})
                for c, count in stats.items():
                    with_class.setdefault(c, []).append([lbl_path, count])
    with open(os.path.join(root, "gta", "sample_class_stats.json"), "w") as f:
        json.dump(class_stats, f)
    with open(os.path.join(root, "gta", "samples_with_class.json"), "w") as f:
        json.dump(with_class, f)
    return source, target


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
    parser.add_argument("--root", default=None, help="folder for the generated data (default: a temp folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_loaders_") as tmp:
        root = args.root or tmp
        start = time.perf_counter()
        source, target = generate(root, args.images)
        print(f"generated {args.images}+{args.images} images in {time.perf_counter() - start:.1f} s under {root}")
        DatasetCatalog.register(SOURCE_SPLIT, lambda: source)
        DatasetCatalog.register(TARGET_SPLIT, lambda: target)
        MetadataCatalog.get(SOURCE_SPLIT).set(dataset_root=os.path.join(root, "gta"), ignore_label=255)

        decode: Dict[str, float] = {"source": decode_rate(source, 2), "target": decode_rate(target, 2)}
        print(f"bare decode: source {decode['source']:.2f} img/s, target {decode['target']:.2f} img/s (1 process)")
        print(f"{'workers':>7} | {'source img/s':>12} {'x decode':>8} | {'target img/s':>12} {'x decode':>8}")
        for workers in args.workers:
            cfg = add_hrda_config(get_cfg())  # paper defaults: scales, 1024 crops, margins, RCS
            cfg.DATASETS.SOURCE, cfg.DATASETS.TARGET = (SOURCE_SPLIT,), (TARGET_SPLIT,)
            cfg.DATALOADER.NUM_WORKERS = workers
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
