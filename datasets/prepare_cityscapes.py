#!/usr/bin/env python
"""Prepare Cityscapes for training and evaluation.

    python datasets/prepare_cityscapes.py ROOT [--nproc N] [--verify-images]

ROOT holds leftImg8bit/{train,val,test}/<city>/*_leftImg8bit.png and gtFine/{train,val,test}/<city>/
*_gtFine_polygons.json (plus the *_gtFine_labelIds.png / *_gtFine_instanceIds.png of the download, which
Detectron2's loader and the official evaluation read). Writes *_gtFine_labelTrainIds.png with cityscapesscripts'
json2labelImg(..., "trainIds") - exactly the official conversion - and the rare class sampling statistics of
the gtFine/train files into ROOT/{sample_class_stats,samples_with_class,sample_class_stats_dict}.json.
Re-running skips the labels already converted. Implementation:
hrda_d2.data.preparation.prepare_cityscapes.
"""
import logging
import sys

from hrda_d2.data.preparation import prepare_cityscapes
from hrda_d2.data.preparation.cli import run_prepare_cli

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    sys.exit(run_prepare_cli(prepare_cityscapes, __doc__, unknown_id_option=False))
