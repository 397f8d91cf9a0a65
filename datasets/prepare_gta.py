#!/usr/bin/env python
"""Prepare GTA (Richter et al., "Playing for Data") for training.

    python datasets/prepare_gta.py ROOT [--nproc N] [--verify-images] [--map-unknown-to-ignore]

ROOT holds images/00001.png ... and labels/00001.png ... (palettised PNGs with Cityscapes label ids).
Writes labels/<name>_labelTrainIds.png (train ids 0..18, 255 = ignore) and the rare class sampling
statistics ROOT/{sample_class_stats,samples_with_class,sample_class_stats_dict}.json. Re-running skips the
labels already converted. A label holding a value that is not a Cityscapes label id (0..33) is refused.
Implementation: hrda_d2.data.preparation.prepare_gta.
"""
import logging
import sys

from hrda_d2.data.preparation import prepare_gta
from hrda_d2.data.preparation.cli import run_prepare_cli

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    sys.exit(run_prepare_cli(prepare_gta, __doc__))
