"""The state of a run from its ``OUTPUT_DIR`` alone (docs/experiments.md §7.1).

* **finished**: ``model_final.pth`` exists and, when the run evaluates (``TEST.EVAL_PERIOD > 0``), ``metrics.json``
  holds its final evaluation: a record with ``sem_seg/mIoU`` at an iteration >= ``SOLVER.MAX_ITER - 1`` (Detectron2
  evaluates once more after the last iteration; periodic evaluations come earlier);
* **running**: ``.train.lock`` names a live process on this host (another launcher or a manual run);
* **interrupted**: a checkpoint exists (``last_checkpoint``), but the run is not finished (pre-empted, killed,
  failed; or trained to the end without the final evaluation): ``--resume`` continues it, or only evaluates;
* **not started**: none of these.
"""
import enum
import json
import logging
import math
import os
import socket
from dataclasses import dataclass
from typing import Dict, Optional

from ..engine.output_lock import LOCK_FILE_NAME
from ..utils.file_io import process_is_running

__all__ = ["RunState", "RunStatus", "final_evaluation", "run_status"]

logger = logging.getLogger(__name__)

FINAL_METRIC_KEY = "sem_seg/mIoU"


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


def _last_iteration(output_dir: str) -> str:
    try:
        with open(os.path.join(output_dir, "last_checkpoint")) as f:
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
    checkpoint = _last_iteration(output_dir)
    if trained:
        return RunStatus(RunState.INTERRUPTED, "trained, final evaluation missing")
    if checkpoint:
        return RunStatus(RunState.INTERRUPTED, f"last checkpoint {checkpoint}")
    return RunStatus(RunState.NOT_STARTED)
