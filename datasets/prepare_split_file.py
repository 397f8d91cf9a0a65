#!/usr/bin/env python
"""Prepare the splits of your own dataset declared in a split file (DATASETS.SPLIT_FILES).

    python datasets/prepare_split_file.py SPLITS.yaml [--nproc N] [--verify-images] [--map-unknown-to-ignore]

For every split with labels: raw masks (raw_label_suffix, mapped with the file's label_map) become train-id PNGs
(label_suffix) next to them, and the rare class sampling statistics of the split are written to
<folder of SPLITS.yaml>/rcs_statistics/<split name>/. Re-running skips the labels already converted. The format
of the file: datasets/README.md "Your own dataset". Implementation: hrda_d2.data.preparation.prepare_split_file.
"""
import logging
import sys

from hrda_d2.data.preparation import prepare_split_file
from hrda_d2.data.preparation.cli import run_prepare_cli

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    sys.exit(run_prepare_cli(prepare_split_file, __doc__))
