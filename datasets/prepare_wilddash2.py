#!/usr/bin/env python
"""Prepare WildDash 2 (Zendel et al.) as VFM-UDA evaluates it.

    python datasets/prepare_wilddash2.py ROOT [--nproc N] [--verify-images] [--map-unknown-to-ignore]

ROOT holds the unpacked wd_public_02.zip (images/<stem>.jpg, labels/<stem>.png with WildDash 2 label ids 0..38),
which is first split into ROOT/{train,val}/{images,labels} by VFM-UDA's validation list (852 of the 4256 frames;
hard links, or copies across devices), or already that layout (VFM-UDA's create_wilddash_ds.sh). Writes
ROOT/{train,val}/labels/<stem>_labelTrainIds.png (Cityscapes train ids 0..18, 255 = ignore; the WildDash 2 classes
pickup, van, billboard, street-light and road-marking become 255, as in VFM-UDA) and the rare class sampling
statistics of the train split into ROOT. Re-running skips the labels already converted. A label value that is not a
WildDash 2 label id is refused. Implementation: hrda_d2.data.preparation.prepare_wilddash2.
"""
import logging
import sys

from hrda_d2.data.preparation import prepare_wilddash2
from hrda_d2.data.preparation.cli import run_prepare_cli

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    sys.exit(run_prepare_cli(prepare_wilddash2, __doc__))
