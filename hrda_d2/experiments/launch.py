"""Launching the generated runs (docs/experiments.md §6, §7): a run's state from its ``OUTPUT_DIR``, its training
command (memory switches, startup test, stop signals), one training process that a stop request reaches exactly
once, and ``--launcher local`` (the SLURM job array: :mod:`.slurm`).

**Run states** (from ``OUTPUT_DIR`` alone):

* *finished*: ``model_final.pth`` exists and, when the run evaluates (``TEST.EVAL_PERIOD > 0``), ``metrics.json``
  holds its final evaluation (``sem_seg/mIoU`` at an iteration >= ``SOLVER.MAX_ITER - 1``);
* *running*: ``.train.lock`` names a live process on this host (another launcher or a manual run);
* *interrupted*: a checkpoint exists (``last_checkpoint``) but the run is not finished: ``--resume`` continues it;
* *not started*: none of these.

**The command** of every start and restart::

    python tools/train_net.py --config-file <generated yaml> --resume --num-gpus N \\
        [memory switches] [startup-test keys] SOLVER.PREEMPTION_SIGNALS [...] [--opts] OUTPUT_DIR <dir>

``--resume`` continues from the newest checkpoint of ``OUTPUT_DIR`` and starts at iteration 0 when there is none,
so one command serves the first start, a resume and every requeue. An interrupted run is only resumed by a command
that trains it to the same ``SOLVER.MAX_ITER`` as its ``config.yaml`` records (else :class:`LaunchError`: e.g. a
tiny run started with ``--tiny-iters 10`` and re-launched without it). ``--startup-test`` (the original's
``run_experiments.py --startup-test``): seed-0 runs only, 2 iterations, no evaluation (no test split), into
``<work dir>/startup-test/``.

**Memory switches**: the original generator assigned each run a GPU (``gpu_model``): a 24 GB TITAN RTX for the
1024-crop HRDA runs and an 11 GB RTX 2080 Ti for the others. On a smaller GPU the README's tiers apply, scaled to the
run's class: below the class bf16 autocast plus activation checkpointing of the transformer encoder (MiT or timm;
ResNet encoders have none), below 2/3 of it also of the decode heads and window-by-window slide inference, below half
of it the run does not fit one GPU. These are expectations from CPU measurements, not GPU measurements.

**One training process** runs in its own session (process group), so that a signal meant for the launcher (Ctrl-C,
``kill``, SLURM's warning to the job) does not reach it directly: :meth:`TrainingProcess.request_stop` forwards one
signal of ``SOLVER.PREEMPTION_SIGNALS`` to the group; the trainer finishes the iteration, writes its pre-emption
checkpoint and exits with ``128 + signal``. A second signal would stop it at once, hence "exactly once". Its exit is
watched by a thread, so that a signal handler may wait for it without touching the ``Popen``'s lock.

**``--launcher local``**: the runs one after another; finished and running ones are skipped, the others start with
the command above. SIGINT / SIGTERM to the launcher are forwarded once to the running trainer; the queue then stops
and the launcher exits with the trainer's status (a second signal is forwarded at once). A failed run is reported
and the queue goes on.
"""
import enum
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

from ..engine.output_lock import LOCK_FILE_NAME
from ..utils.file_io import process_is_running
from .configs import REPO_ROOT, GeneratedRun, load_run_config, run_output_dir
from .runs import RunConfig

__all__ = ["LaunchError", "LaunchItem", "LocalOutcome", "RunState", "RunStatus", "STARTUP_TEST_OPTS", "STOP_SIGNALS",
           "TRAIN_NET", "TrainingProcess", "final_evaluation", "launch_environment", "memory_summary",
           "memory_switches", "plan_launch", "run_local", "run_status"]

logger = logging.getLogger(__name__)

TRAIN_NET = os.path.join(REPO_ROOT, "tools", "train_net.py")
# the trainer's pre-emption signals on every launched run (SIGINT / SIGTERM: forwarded by the local launcher;
# SIGUSR1: forwarded by the SLURM job; SIGUSR2 stays submitit's and is ignored by the trainer)
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")
STARTUP_TEST_OPTS = ("SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "[]",
                     "SOLVER.CHECKPOINT_PERIOD", "100")
FINAL_METRIC_KEY = "sem_seg/mIoU"


class LaunchError(RuntimeError):
    """A run cannot be launched as asked; the message names the run and what to do."""


# ----------------------------------------------------------------------------------------------- run states
class RunState(enum.Enum):
    FINISHED = "finished"
    RUNNING = "running"
    INTERRUPTED = "interrupted"
    NOT_STARTED = "not started"


@dataclass(frozen=True)
class RunStatus:
    state: RunState
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.state.value}{f' ({self.detail})' if self.detail else ''}"


def _records(path: str):
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError:  # a line cut by a kill: the rest of the file is still read
                    logger.warning("%s line %d is not JSON (skipped)", path, number)


def final_evaluation(output_dir: str, max_iter: int) -> Optional[Dict[str, float]]:
    """The metrics of the final evaluation (``sem_seg/`` keys without the prefix, NaN kept), or None."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        return None
    final = None
    for record in _records(path):
        if FINAL_METRIC_KEY in record and record.get("iteration", -1) >= max_iter - 1:
            final = record  # the last one (a resumed, complete run may have evaluated again)
    if final is None:
        return None
    return {k[len("sem_seg/"):]: (float(v) if v is not None else math.nan) for k, v in final.items()
            if k.startswith("sem_seg/")}


def _lock_owner_alive(output_dir: str) -> Optional[str]:
    try:
        with open(os.path.join(output_dir, LOCK_FILE_NAME)) as f:
            owner = json.load(f)
    except (OSError, ValueError):
        return None
    pid = owner.get("pid") if isinstance(owner, dict) else None
    if isinstance(pid, int) and owner.get("host") == socket.gethostname() and process_is_running(pid):
        return f"PID {pid}"
    return None


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def run_status(output_dir: str, max_iter: int, eval_period: int) -> RunStatus:
    """The state of the run writing to ``output_dir`` (see the module docstring)."""
    owner = _lock_owner_alive(output_dir)
    if owner:
        return RunStatus(RunState.RUNNING, owner)
    trained = os.path.isfile(os.path.join(output_dir, "model_final.pth"))
    if trained and (eval_period <= 0 or final_evaluation(output_dir, max_iter) is not None):
        return RunStatus(RunState.FINISHED)
    checkpoint = _read(os.path.join(output_dir, "last_checkpoint"))
    if trained:
        return RunStatus(RunState.INTERRUPTED, "trained, final evaluation missing")
    if checkpoint:
        return RunStatus(RunState.INTERRUPTED, f"last checkpoint {checkpoint}")
    return RunStatus(RunState.NOT_STARTED)


# ------------------------------------------------------------------------------------------- memory switches
GPU_MEMORY_GB = {"NVIDIATITANRTX": 24.0, "NVIDIAGeForceRTX2080Ti": 11.0}
LISTED_GPU_SIZES_GB = (24.0, 16.0, 12.0)  # README "Performance": the tiers it names
_ENCODER_CHECKPOINTING = {"build_mit_backbone": "MODEL.MIT.CHECKPOINT_ACTIVATIONS",
                          "build_timm_backbone": "MODEL.TIMM.CHECKPOINT_ACTIVATIONS"}  # ResNet: none


def _backbone(config: RunConfig) -> str:
    if "MODEL.BACKBONE.NAME" in config.overrides:
        return config.overrides["MODEL.BACKBONE.NAME"]
    return "build_timm_backbone" if "dinov2" in config.base else "build_mit_backbone"


def memory_switches(config: RunConfig, gpu_memory_gb: Optional[float]) -> List[str]:
    """``KEY VALUE`` overrides for a GPU of ``gpu_memory_gb`` (None: the original's GPU, no switch); a run that
    does not fit raises ``ValueError`` with the reason."""
    need = GPU_MEMORY_GB.get(config.original_gpu or "")
    if gpu_memory_gb is None or need is None or gpu_memory_gb >= need:
        return []
    if gpu_memory_gb < need / 2:
        raise ValueError(f"{config.stem}: the original ran on a {need:g} GB GPU; {gpu_memory_gb:g} GB is below half of "
                         f"it even with every memory switch; use 2 GPUs with 1 + 1 images each (--gpus 2)")
    switches = ["SOLVER.AMP.ENABLED", "True"]
    encoder = _ENCODER_CHECKPOINTING.get(_backbone(config))
    switches += [encoder, "True"] if encoder else []
    if gpu_memory_gb < need * 2 / 3:
        switches += ["MODEL.SEM_SEG_HEAD.CHECKPOINT_ACTIVATIONS", "True", "TEST.SLIDE.BATCHED", "False"]
    return switches


def memory_summary(config: RunConfig, gpu_memory_gb: Optional[float] = None) -> str:
    """One line for ``--list``: the switches on a ``gpu_memory_gb`` GPU (None: on 24, 16 and 12 GB)."""
    need = GPU_MEMORY_GB.get(config.original_gpu or "")
    if need is None:
        extra = f"{config.gpus} GPUs (SOLVER.IMS_PER_BATCH over them)" if config.gpus > 1 else "1 GPU"
        return f"not measured; {extra}"

    def on(size: float) -> str:
        try:
            return " ".join(memory_switches(config, size)) or "none"
        except ValueError:
            return "does not fit one GPU (2 GPUs)"

    sizes = LISTED_GPU_SIZES_GB if gpu_memory_gb is None else (gpu_memory_gb,)
    return f"original {need:g} GB GPU; " + "; ".join(f"{size:g} GB: {on(size)}" for size in sizes)


# ------------------------------------------------------------------------------------------------ commands
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


def _recorded_max_iter(output_dir: str) -> Optional[int]:
    """``SOLVER.MAX_ITER`` of the ``config.yaml`` that the trainer wrote into ``output_dir`` (None: none)."""
    text = _read(os.path.join(output_dir, "config.yaml"))
    try:
        recorded = yaml.safe_load(text) if text else None
        return int(recorded["SOLVER"]["MAX_ITER"])
    except (yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def _check_resumable(item: LaunchItem, tiny: bool) -> None:
    status = run_status(item.output_dir, item.max_iter, item.eval_period)
    recorded = _recorded_max_iter(item.output_dir) if status.state is RunState.INTERRUPTED else None
    if recorded is not None and recorded != item.max_iter:
        again = f"--tiny-iters {recorded}" if tiny else f"-- SOLVER.MAX_ITER {recorded}"
        raise LaunchError(f"{item.name} was interrupted in a run of SOLVER.MAX_ITER {recorded} "
                          f"({os.path.join(item.output_dir, 'config.yaml')}), this launch would train it to "
                          f"{item.max_iter} and mark it finished: pass {again} to resume it, or delete "
                          f"{item.output_dir} to start it again")


def plan_launch(generated: Sequence[GeneratedRun], work_dir: str, *, tiny: bool = False, startup_test: bool = False,
                gpu_memory_gb: Optional[float] = None, num_gpus: int = 1,
                extra_opts: Sequence[str] = ()) -> List[LaunchItem]:
    """The launch items of the generated runs. Each item's config (file + overrides) is loaded here, and an
    interrupted run must be resumed to its own ``SOLVER.MAX_ITER``, so a wrong command fails before anything
    starts (:class:`LaunchError`, :class:`~.configs.GenerationError`)."""
    items = []
    for gen in generated:
        if startup_test and gen.run.seed != 0:
            continue
        output_dir = run_output_dir(work_dir, gen.run, tiny=tiny, startup_test=startup_test)
        opts: List[str] = [] if tiny else memory_switches(gen.run.config, gpu_memory_gb)
        if startup_test:
            opts += STARTUP_TEST_OPTS
        opts += ["SOLVER.PREEMPTION_SIGNALS", str(list(STOP_SIGNALS)), *extra_opts, "OUTPUT_DIR", output_dir]
        cfg = load_run_config(gen.config_file, opts)
        item = LaunchItem(gen.run.name, gen.run.exp, gen.config_file, output_dir, tuple(opts),
                          int(cfg.SOLVER.MAX_ITER), int(cfg.TEST.EVAL_PERIOD) if cfg.DATASETS.TEST else 0, num_gpus)
        _check_resumable(item, tiny)
        items.append(item)
    return items


def launch_environment(datasets: Optional[str] = None, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Variables the runs get on top of their environment: this checkout first on ``PYTHONPATH`` (the trainer is
    this checkout's) and ``DETECTRON2_DATASETS`` when ``datasets`` is given."""
    base = dict(os.environ if base is None else base)
    updates = {"PYTHONPATH": os.pathsep.join([REPO_ROOT] + [p for p in [base.get("PYTHONPATH")] if p])}
    if datasets:
        updates["DETECTRON2_DATASETS"] = os.path.abspath(datasets)
    return updates


# --------------------------------------------------------------------------------------- a training process
class TrainingProcess:
    """``command`` run in its own session; :meth:`wait` returns its exit status.

    Args:
        command: the argument list (``python tools/train_net.py ...``).
        env, cwd: its environment and working directory.
        log_path: file that receives its stdout and stderr (appended), or None to inherit the launcher's.
        ignore_signals: signals set to ``SIG_IGN`` in the child before it executes (inherited by every process it
            starts: the SLURM path ignores ``SIGUSR2`` there).
    """

    def __init__(self, command: Sequence[str], env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
                 log_path: Optional[str] = None, ignore_signals: Sequence[int] = ()):
        self.command = [str(c) for c in command]
        self.env = env
        self.cwd = cwd
        self.log_path = log_path
        self.ignore_signals = tuple(int(s) for s in ignore_signals)
        self.returncode: Optional[int] = None
        self.stop_signal: Optional[int] = None
        self._process: Optional[subprocess.Popen] = None
        self._exited = threading.Event()

    def _ignore_in_child(self) -> None:  # runs in the child between fork and exec
        for sig in self.ignore_signals:
            signal.signal(sig, signal.SIG_IGN)

    def start(self) -> None:
        log = open(self.log_path, "ab") if self.log_path else None
        try:
            self._process = subprocess.Popen(
                self.command, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT if log else None,
                start_new_session=True, preexec_fn=self._ignore_in_child if self.ignore_signals else None)
        finally:
            if log is not None:
                log.close()
        threading.Thread(target=self._watch, name="training-process-exit", daemon=True).start()

    def _watch(self) -> None:
        self.returncode = self._process.wait()
        self._exited.set()

    @property
    def pid(self) -> Optional[int]:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and not self._exited.is_set()

    def wait(self, timeout: Optional[float] = None, poll_s: float = 0.2) -> Optional[int]:
        """The exit status, or None if it still runs after ``timeout`` seconds. Only sleeps and reads a flag, so it
        may also be called from a signal handler that interrupted another ``wait``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._exited.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(poll_s)
        return self.returncode

    def request_stop(self, sig: int) -> bool:
        """Send ``sig`` to the process group, once (later requests are ignored); False if it had ended."""
        if not self.running:
            return False
        if self.stop_signal is not None:
            return True
        self.stop_signal = int(sig)
        logger.info("sending %s to training process group %d", signal.Signals(sig).name, self.pid)
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def run(self) -> int:
        """:meth:`start`, then :meth:`wait` until it ends."""
        self.start()
        return self.wait()


# ------------------------------------------------------------------------------------------ --launcher local
@dataclass
class LocalOutcome:
    """What happened to one item: ``skipped`` (finished or running elsewhere), or the trainer's exit status."""

    item: LaunchItem
    state_before: str
    returncode: Optional[int] = None
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return self.skipped or self.returncode == 0


class _Forwarder:
    """Signal handler of the launcher while a trainer runs."""

    def __init__(self):
        self.process: Optional[TrainingProcess] = None
        self.received: List[int] = []

    def __call__(self, signum, frame) -> None:
        self.received.append(signum)
        if self.process is None or not self.process.running:
            return
        if len(self.received) == 1:
            self.process.request_stop(signum)
        else:  # a second request: stop now (the trainer's second signal ends it at once)
            try:
                os.killpg(self.process.pid, signum)
            except ProcessLookupError:
                pass


def run_local(items: Sequence[LaunchItem], env_updates: Dict[str, str], python: str = sys.executable,
              train_script: str = TRAIN_NET, log_dir: Optional[str] = None) -> List[LocalOutcome]:
    """Run ``items`` in order (see the module docstring). ``log_dir``: write each trainer's console output to
    ``<log_dir>/<run name>.log`` instead of this console."""
    env = {**os.environ, **env_updates}
    forwarder = _Forwarder()
    previous = {sig: signal.signal(sig, forwarder) for sig in (signal.SIGINT, signal.SIGTERM)}
    outcomes: List[LocalOutcome] = []
    try:
        for number, item in enumerate(items, 1):
            if forwarder.received:  # a stop request between two runs
                logger.warning("stopped by %s before %s", signal.Signals(forwarder.received[0]).name, item.name)
                break
            status = run_status(item.output_dir, item.max_iter, item.eval_period)
            outcome = LocalOutcome(item, str(status))
            outcomes.append(outcome)
            if status.state in (RunState.FINISHED, RunState.RUNNING):
                outcome.skipped = True
                logger.info("[%d/%d] %s: %s, skipped", number, len(items), item.name, status)
                continue
            logger.info("[%d/%d] %s: %s -> %s", number, len(items), item.name, status,
                        "resuming" if status.state is RunState.INTERRUPTED else "starting")
            log_path = os.path.join(log_dir, f"{item.name}.log") if log_dir else None
            if log_dir:
                os.makedirs(log_dir, exist_ok=True)
            process = TrainingProcess(item.command(python, train_script), env=env, cwd=os.getcwd(),
                                      log_path=log_path)
            forwarder.process = process
            process.start()
            outcome.returncode = process.wait()
            forwarder.process = None
            if forwarder.received:
                logger.warning("%s stopped by %s (exit status %s); the queue stops here. Run the same command again "
                               "to resume it.", item.name, signal.Signals(forwarder.received[0]).name,
                               outcome.returncode)
                break
            if outcome.returncode != 0:
                logger.error("%s failed with exit status %d (its log: %s); continuing with the next run", item.name,
                             outcome.returncode, log_path or os.path.join(item.output_dir, "log.txt"))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return outcomes
