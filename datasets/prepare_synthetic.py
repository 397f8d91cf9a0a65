#!/usr/bin/env python
"""Write small generated replicas of GTA, Synthia, Cityscapes (and optionally ACDC, Dark Zurich, WildDash 2) below ROOT.

    python datasets/prepare_synthetic.py ROOT [--num-train N] [--num-val N] [--height H --width W] [--seed S]
                                         [--acdc] [--dark-zurich] [--wilddash2] [--full-size] [--prepare] [--nproc N]

The replicas have the exact folder layouts and file formats of the real data sets (see datasets/README.md),
street-like scenes with the same class layout in every domain and a deliberate appearance shift between the
source (GTA/Synthia) and target (Cityscapes/ACDC/Dark Zurich) domains; details in the docstring of
hrda_d2.data.synthetic. Defaults: 8 train / 4 val images, Cityscapes-like 128x256 (GTA-like 132x239,
Synthia-like 95x160); --full-size writes real sizes (2048x1024, 1914x1052, 1280x760, 1920x1080) for loader
benchmarks. --prepare also runs the GTA / Synthia / Cityscapes (and WildDash 2) preparation (train-id labels +
statistics), so that ROOT can be used as $DETECTRON2_DATASETS right away.
"""
import argparse
import logging
import os
import sys

from hrda_d2.data.preparation import prepare_cityscapes, prepare_gta, prepare_synthia, prepare_wilddash2
from hrda_d2.data.synthetic import generate_synthetic_datasets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="output folder (use it as $DETECTRON2_DATASETS)")
    parser.add_argument("--num-train", type=int, default=8)
    parser.add_argument("--num-val", type=int, default=4)
    parser.add_argument("--height", type=int, default=128, help="Cityscapes-like image height")
    parser.add_argument("--width", type=int, default=256, help="Cityscapes-like image width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--acdc", action="store_true", help="also write an ACDC-like target")
    parser.add_argument("--dark-zurich", action="store_true", help="also write a Dark Zurich-like target")
    parser.add_argument("--wilddash2", action="store_true", help="also write a WildDash 2-like evaluation set")
    parser.add_argument("--full-size", action="store_true", help="real image sizes (ignores --height/--width)")
    parser.add_argument("--prepare", action="store_true", help="run prepare_{gta,synthia,cityscapes} afterwards")
    parser.add_argument("--nproc", type=int, default=1, help="worker processes of --prepare")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    result = generate_synthetic_datasets(
        args.root, num_train=args.num_train, num_val=args.num_val, height=args.height, width=args.width,
        seed=args.seed, acdc=args.acdc, dark_zurich=args.dark_zurich, full_size=args.full_size,
        wilddash2=args.wilddash2,
    )
    if args.prepare:
        for prepare, folder in ((prepare_gta, result.gta), (prepare_synthia, result.synthia),
                                (prepare_cityscapes, result.cityscapes), (prepare_wilddash2, result.wilddash2)):
            if folder is not None:
                prepare(folder, nproc=args.nproc)
    sizes = ", ".join(f"{name} {h}x{w}" for name, (h, w) in result.sizes.items())
    print(f"wrote generated datasets below {os.path.abspath(args.root)} ({sizes})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
