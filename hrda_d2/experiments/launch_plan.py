"""The training command of each generated run, shared by the local and the SLURM launcher (docs/experiments.md §7).

Every run is started (and restarted) with the same command::

    python tools/train_net.py --config-file <generated yaml> --resume --num-gpus N \\
        [memory switches] [startup-test keys] SOLVER.PREEMPTION_SIGNALS [...] [--opts] OUTPUT_DIR <dir>

``--resume`` continues from the newest checkpoint of ``OUTPUT_DIR`` and starts at iteration 0 when there is none
(README "Troubleshooting: Pre-emption"), so one command serves the first start, a resume after an interruption and
every requeue; a complete run only evaluates again. ``SOLVER.PREEMPTION_SIGNALS`` is given explicitly so that the
signal the launchers forward (:data:`STOP_SIGNALS`) is one the trainer turns into a checkpoint.
``--startup-test`` (the original's ``run_experiments.py --startup-test``): seed-0 runs only, 2 iterations, no
evaluation, into ``<work dir>/startup-test/``.
"""
import logging
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..config import load_config
from .generate import REPO_ROOT, GeneratedRun, quiet_config_loading, run_output_dir
from .memory import memory_switches

__all__ = ["LaunchItem", "STOP_SIGNALS", "TRAIN_NET", "launch_environment", "plan_launch"]

logger = logging.getLogger(__name__)

TRAIN_NET = os.path.join(REPO_ROOT, "tools", "train_net.py")
# the trainer's pre-emption signals on every launched run (SIGINT / SIGTERM: forwarded by the local launcher;
# SIGUSR1: forwarded by the SLURM job; SIGUSR2 stays submitit's and is ignored by the trainer)
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")
STARTUP_TEST_OPTS = ("SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD", "100")


@dataclass(frozen=True)
class LaunchItem:
    """One run to start: its generated file, output folder and command-line overrides."""

    name: str
    exp: str
    config_file: str
    output_dir: str
    opts: Tuple[str, ...]
    max_iter: int
    eval_period: int
    num_gpus: int = 1

    def command(self, python: str = sys.executable, train_script: str = TRAIN_NET) -> List[str]:
        return [python, train_script, "--config-file", self.config_file, "--resume", "--num-gpus",
                str(self.num_gpus), *self.opts]


def plan_launch(generated: Sequence[GeneratedRun], work_dir: str, *, tiny: bool = False, startup_test: bool = False,
                gpu_memory_gb: Optional[float] = None, num_gpus: int = 1,
                extra_opts: Sequence[str] = ()) -> List[LaunchItem]:
    """The launch items of the generated (not blocked) runs. Each item's config (file + overrides) is loaded and
    checked here, so a wrong override fails before anything starts."""
    items = []
    for gen in generated:
        if gen.blocked or (startup_test and gen.run.seed != 0):
            continue
        output_dir = run_output_dir(work_dir, gen.run, tiny=tiny, startup_test=startup_test)
        opts: List[str] = [] if tiny else memory_switches(gen.run.config, gpu_memory_gb)
        if startup_test:
            opts += STARTUP_TEST_OPTS
        opts += ["SOLVER.PREEMPTION_SIGNALS", str(list(STOP_SIGNALS)), *extra_opts, "OUTPUT_DIR", output_dir]
        with quiet_config_loading():
            cfg = load_config(gen.config_file, opts)
        items.append(LaunchItem(gen.run.name, gen.run.exp, gen.config_file, output_dir, tuple(opts),
                                int(cfg.SOLVER.MAX_ITER), int(cfg.TEST.EVAL_PERIOD) if cfg.DATASETS.TEST else 0,
                                num_gpus))
    return items


def launch_environment(datasets: Optional[str] = None, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Variables the runs get on top of their environment: this checkout first on ``PYTHONPATH`` (the trainer is
    this checkout's) and ``DETECTRON2_DATASETS`` when ``datasets`` is given."""
    base = dict(os.environ if base is None else base)
    updates = {"PYTHONPATH": os.pathsep.join([REPO_ROOT] + [p for p in [base.get("PYTHONPATH")] if p])}
    if datasets:
        updates["DETECTRON2_DATASETS"] = os.path.abspath(datasets)
    return updates
