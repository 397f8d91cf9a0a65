"""``--launcher local``: the runs one after another on this machine, re-runnable (docs/experiments.md §7.2).

Finished runs (:mod:`.status`) are skipped, runs held by a live process are left alone, every other run starts with
the launch command (``--resume``: an interrupted run continues from its checkpoint). SIGINT (Ctrl-C) and SIGTERM to
the launcher are forwarded once to the running trainer (:class:`~.training_process.TrainingProcess`), which writes
its pre-emption checkpoint; the queue then stops and the launcher exits with the trainer's status; the same
command later resumes it. A second signal is forwarded at once (the trainer then stops without a checkpoint). A run
that fails is reported and the queue goes on with the next one.
"""
import logging
import os
import signal
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from .launch_plan import TRAIN_NET, LaunchItem
from .status import RunState, run_status
from .training_process import TrainingProcess

__all__ = ["LocalOutcome", "run_local"]

logger = logging.getLogger(__name__)


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
