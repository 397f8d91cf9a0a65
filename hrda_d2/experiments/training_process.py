"""One ``tools/train_net.py`` process of a launcher, and how a stop request reaches it exactly once
(docs/experiments.md §7.3).

The training process starts in its own session (process group), so that a signal meant for the launcher (Ctrl-C in
a terminal, ``kill`` of the launcher, SLURM's pre-emption warning to the submitit job) does not also reach it
directly: :meth:`TrainingProcess.request_stop` forwards one signal of ``SOLVER.PREEMPTION_SIGNALS`` to the whole
group (the rank processes of ``--num-gpus N`` included; their loader workers ignore it), the trainer finishes the
iteration, writes its pre-emption checkpoint and exits with ``128 + signal`` (hrda_d2/engine/preemption.py). A
second signal would stop it at once, hence "exactly once". ``ignore_signals`` are set to ``SIG_IGN`` in the child
before it executes (inherited by every process it starts): the SLURM path ignores ``SIGUSR2`` there, the signal that
SLURM sends before the time limit and that, with cgroup process tracking, reaches every process of the job.

The exit is watched by a thread (it alone waits on the ``Popen``), so that a signal handler of the launcher can
wait for the exit too without touching the ``Popen``'s lock.
"""
import logging
import os
import signal
import subprocess
import threading
import time
from typing import Dict, Optional, Sequence

__all__ = ["TrainingProcess"]

logger = logging.getLogger(__name__)


class TrainingProcess:
    """``command`` run in its own session; :meth:`wait` returns its exit status.

    Args:
        command: the argument list (``python tools/train_net.py ...``).
        env, cwd: its environment and working directory.
        log_path: file that receives its stdout and stderr (appended), or None to inherit the launcher's.
        ignore_signals: signals set to ``SIG_IGN`` in the child before it executes.
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
