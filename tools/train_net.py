#!/usr/bin/env python
"""Train or evaluate HRDA / DAFormer models with Detectron2 (DACS self-training or source-only).

    python tools/train_net.py --config-file configs/gtaHR2csHR_hrda.yaml [--num-gpus N] [KEY VALUE ...]
    python tools/train_net.py --config-file configs/gtaHR2csHR_hrda.yaml --resume          # continue a run
    python tools/train_net.py --config-file X.yaml --eval-only MODEL.WEIGHTS model.pth [TEST.WEIGHTS_SOURCE teacher]

Multi-GPU / multi-machine through Detectron2's ``launch`` (``--num-gpus``, ``--num-machines``,
``--machine-rank``, ``--dist-url``). Without CUDA the model runs on the CPU (``MODEL.DEVICE cpu``).
"""
import os

from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from hrda_d2 import load_config
from hrda_d2.checkpoint import load_model_weights
from hrda_d2.engine import HRDATrainer



def setup(args):
    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="hrda_d2")
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
