#!/usr/bin/env python
"""The paper experiments in one command: generate, list, launch (local or SLURM) and collect.

    python tools/experiments.py --exp 44 --list
    python tools/experiments.py --exp 44 --launcher local
    python tools/experiments.py --exp 44 --launcher slurm --gpus 1 --cpus 8 --mem-gb 64 --partition gpu
    python tools/experiments.py --exp 44 --collect

Every option: ``--help``; the logic and its documentation: ``hrda_d2/experiments`` and docs/experiments.md.
"""
import logging

import hrda_d2  # noqa: F401  (first: registers the components, quiets fvcore's import warnings)
from hrda_d2.experiments.cli import run

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s %(levelname)s: %(message)s",
                        datefmt="%m/%d %H:%M:%S")
    run()
