#!/usr/bin/env python
"""Prepare SYNTHIA-RAND-CITYSCAPES for training.

    python datasets/prepare_synthia.py ROOT [--nproc N] [--verify-images] [--map-unknown-to-ignore]

ROOT holds RGB/0000000.png ... and GT/LABELS/0000000.png ... (16-bit PNGs, class id in the R channel, read
as the last channel of OpenCV's array). Writes GT/LABELS/<name>_labelTrainIds.png (train ids 0..18,
255 = ignore) and the rare class sampling statistics ROOT/{sample_class_stats,samples_with_class,
sample_class_stats_dict}.json. Re-running skips the labels already converted. A label holding a value that is
not a Synthia class id (0..22) is refused. Implementation: hrda_d2.data.preparation.prepare_synthia.
"""
import logging
import sys

from hrda_d2.data.preparation import prepare_synthia
from hrda_d2.data.preparation.cli import run_prepare_cli

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    sys.exit(run_prepare_cli(prepare_synthia, __doc__))
