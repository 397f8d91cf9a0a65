#!/usr/bin/env python
"""Train or evaluate HRDA / DAFormer models with Detectron2 (DACS self-training or source-only).

    python tools/train_net.py --config-file configs/gtaHR2csHR_hrda.yaml [--num-gpus N] [KEY VALUE ...]
    python tools/train_net.py --config-file configs/gtaHR2csHR_hrda.yaml --resume          # continue a run
    python tools/train_net.py --config-file X.yaml --eval-only MODEL.WEIGHTS model.pth [TEST.WEIGHTS_SOURCE teacher]

Multi-GPU / multi-machine through Detectron2's ``launch`` (``--num-gpus``, ``--num-machines``,
``--machine-rank``, ``--dist-url``). Without CUDA the model runs on the CPU (``MODEL.DEVICE cpu``).

A training run holds ``OUTPUT_DIR`` (``OUTPUT_DIR/.train.lock``): a second run there refuses to start. SIGTERM,
SIGINT and SIGUSR1 (``SOLVER.PREEMPTION_SIGNALS``) stop training after the current iteration with a checkpoint
and exit status 128 + the signal number (143 for SIGTERM); the same command with ``--resume`` continues. With
``--resume`` and no checkpoint in ``OUTPUT_DIR`` training starts at iteration 0 (with a warning), so one command
serves the first start and every requeue. ``--eval-only`` refuses weights that do not fit the model.

A config, dataset, weights file or output folder that cannot be used ends the command with one message naming it
and the fix (exit status 1); ``--debug`` shows the traceback instead.
"""
import contextlib
import os
import signal

import hrda_d2  # noqa: F401  (first: registers the components, quiets fvcore's import warnings)
from detectron2 import engine
from detectron2.engine import default_setup, launch
from detectron2.utils import comm
from torch.multiprocessing import ProcessExitedException

from hrda_d2 import load_config
from hrda_d2.checkpoint import CheckpointLoadError, load_model_weights
from hrda_d2.config import ConfigError
from hrda_d2.data.datasets.sem_seg_splits import DatasetNotFoundError, MissingLabelError, UnknownSplitError
from hrda_d2.data.datasets.split_files import SplitFileError, register_split_files
from hrda_d2.engine import HRDATrainer
from hrda_d2.engine.output_lock import OutputDirInUseError, lock_output_dir
from hrda_d2.engine.preemption import TrainingInterrupted, parse_signals
from hrda_d2.utils.logger import setup_run_logging


# what a user can fix (config, datasets, weights, output folder): a message, not a traceback
INPUT_ERRORS = (ConfigError, SplitFileError, OutputDirInUseError, CheckpointLoadError, DatasetNotFoundError,
                MissingLabelError, UnknownSplitError)


def default_argument_parser():
    """Detectron2's arguments plus ``--debug``."""
    parser = engine.default_argument_parser()
    parser.add_argument("--debug", action="store_true",
                        help="on a refused config / dataset / weights file: the traceback instead of one message")
    return parser


@contextlib.contextmanager
def exit_message(args):
    """:data:`INPUT_ERRORS` end the command with ``train_net: <message>`` (exit status 1); with ``--debug``, with
    the traceback."""
    try:
        yield
    except INPUT_ERRORS as e:
        if args.debug:
            raise
        raise SystemExit(f"train_net: {e}") from None


def setup(args):
    cfg = load_config(args.config_file, args.opts)
    register_split_files(cfg.DATASETS.SPLIT_FILES)
    if not args.eval_only and cfg.OUTPUT_DIR and comm.is_main_process():
        lock_output_dir(cfg.OUTPUT_DIR)  # before default_setup writes config.yaml and log.txt into the folder
    setup_run_logging(cfg.OUTPUT_DIR, comm.get_rank())
    default_setup(cfg, args)
    return cfg


def main(args):
    with exit_message(args):
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
    try:
        return trainer.train()
    except TrainingInterrupted:
        raise
    except Exception as e:  # Detectron2 has logged it with its traceback ("Exception during training")
        log = os.path.join(cfg.OUTPUT_DIR, "log.txt")
        raise SystemExit(f"train_net: training stopped at iteration {trainer.iter}: {type(e).__name__}: {e}\n"
                         f"(the traceback is logged above and in {log})") from None


def _keep_launcher_alive(args) -> None:
    """With several local processes, the launcher (not a rank) survives the pre-emption signals: they reach the
    ranks too (the process group: Ctrl-C, SLURM, ``kill -TERM -<pgid>``), which stop together with a checkpoint.
    (A Python handler, unlike SIG_IGN, is not inherited by the spawned ranks.)"""
    cfg = load_config(args.config_file, args.opts)
    for sig in parse_signals(cfg.SOLVER.PREEMPTION_SIGNALS):
        signal.signal(sig, lambda signum, frame: None)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    if args.num_gpus > 1 and not args.eval_only:
        with exit_message(args):
            _keep_launcher_alive(args)
    try:
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    except ProcessExitedException as e:  # a rank's status (143: pre-empted) becomes the launcher's
        raise SystemExit(e.exit_code if e.exit_code > 0 else 128 - e.exit_code) from None
