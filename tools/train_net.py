#!/usr/bin/env python
"""Train or evaluate HRDA / DAFormer models with Detectron2 (DACS self-training or source-only).

    python tools/train_net.py --config-file configs/gtaHR2csHR_hrda.yaml [--num-gpus N] [KEY VALUE ...]
    python tools/train_net.py --config-file configs/gtaHR2csHR_hrda.yaml --resume          # continue a run
    python tools/train_net.py --config-file X.yaml --eval-only MODEL.WEIGHTS model.pth [TEST.WEIGHTS_SOURCE teacher]

Multi-GPU / multi-machine through Detectron2's ``launch`` (``--num-gpus``, ``--num-machines``,
``--machine-rank``, ``--dist-url``). Without CUDA the model runs on the CPU (``MODEL.DEVICE cpu``).
"""
import logging
import os

import torch
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from hrda_d2 import add_hrda_config
from hrda_d2.engine.trainer import HRDATrainer, load_model_weights

logger = logging.getLogger("hrda_d2")


def setup(args):
    cfg = get_cfg()
    add_hrda_config(cfg)
    if not os.path.isfile(args.config_file):
        raise SystemExit(f"Config file '{args.config_file}' does not exist (configs/ lists the experiments).")
    try:
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
    except (KeyError, AssertionError, ValueError) as e:
        raise SystemExit(f"Invalid config ({args.config_file} or command-line overrides): {e}\n"
                         f"Every valid key is defined in hrda_d2/config.py (add_hrda_config).") from e
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="hrda_d2")
    if cfg.MODEL.DEVICE == "cpu":
        logger.warning("CUDA is not available: running on the CPU (MODEL.DEVICE cpu).")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = HRDATrainer.build_model(cfg)
        weights = cfg.MODEL.WEIGHTS
        last = os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")
        if args.resume and os.path.isfile(last):
            with open(last) as f:
                weights = os.path.join(cfg.OUTPUT_DIR, f.read().strip())
        if not weights:
            raise SystemExit("--eval-only needs MODEL.WEIGHTS (a checkpoint) or --resume with a run in OUTPUT_DIR.")
        load_model_weights(model, weights, cfg.TEST.WEIGHTS_SOURCE)
        return HRDATrainer.test(cfg, model)
    trainer = HRDATrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
