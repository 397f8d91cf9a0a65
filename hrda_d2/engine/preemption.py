"""Pre-emption: on a signal, finish the iteration, write a checkpoint, stop with a non-zero status.

Clusters send SIGTERM (SLURM: ``--signal``, Kubernetes, spot instances) some time before they kill a job; with
the paper's ``SOLVER.CHECKPOINT_PERIOD`` 40000 a pre-empted run would lose everything. :class:`PreemptionHook`
(registered last by ``HRDATrainer.build_hooks`` for ``SOLVER.PREEMPTION_SIGNALS``) turns each of these signals
into a request that is served at the end of the current iteration, after every other hook:

1. every rank learns whether ANY rank was signalled (one all-reduce of a single integer per iteration under DDP,
   so all ranks stop after the same iteration even when the signal reaches them at different times);
2. the checkpoint ``model_<iter:07d>.pth`` is written atomically (unless the periodic checkpointer has just
   written it) and ``last_checkpoint`` names it: ``--resume`` continues exactly (bit for bit on the CPU) as
   if the run had not stopped;
3. :class:`TrainingInterrupted` (a ``SystemExit`` with status ``128 + signal number``, 143 for SIGTERM, the
   shell's convention for "ended by a signal") ends the process after the log line that names the checkpoint.

The data-loader workers ignore these signals (:func:`ignore_signals_in_loader_workers`, applied by the
trainer's loader builders): a cluster signals every process of the job, and a worker that died would fail the
step. A second signal while the first is pending ends the process at once, with the handler that was installed before
(SIGINT: ``KeyboardInterrupt``, SIGTERM: the default termination).
"""
from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.util
import os
import signal
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..config import catchable_signal

__all__ = ["PreemptionHook", "TrainingInterrupted", "ignore_signals_in_loader_workers", "parse_signals"]

logger = logging.getLogger(__name__)


class TrainingInterrupted(SystemExit):
    """Training stopped on a pre-emption signal after writing ``checkpoint``; exit status ``128 + signum``."""

    def __init__(self, message: str, signum: int, checkpoint: str):
        super().__init__(128 + signum)
        self.message = message
        self.signum = signum
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        return self.message


def parse_signals(names: Sequence[str], key: str = "SOLVER.PREEMPTION_SIGNALS") -> List[signal.Signals]:
    """``["SIGTERM", "SIGUSR1"]`` -> signal numbers; a ``ValueError`` names ``key`` and the unknown name."""
    out = []
    for name in names:
        sig = catchable_signal(name)
        if sig is None:
            raise ValueError(f"{key}: {name!r} is not a signal that can be caught (e.g. SIGTERM, SIGINT, SIGUSR1)")
        out.append(sig)
    return out


class _IgnoreSignalsThenInit:
    """``worker_init_fn`` of a data-loader worker: ignore ``signals``, then run the loader's own init function.
    (torch's workers install a C handler that dies on SIGTERM; a signal sent to the process group must reach
    only the training process, which stops cleanly; the workers end with it.)"""

    def __init__(self, signals: Sequence[int], init_fn: Optional[Callable[[int], None]]):
        self.signals = [int(s) for s in signals]
        self.init_fn = init_fn

    def __call__(self, worker_id: int) -> None:
        for sig in self.signals:
            signal.signal(sig, signal.SIG_IGN)
        if self.init_fn is not None:
            self.init_fn(worker_id)


def _kill_daemonic_children() -> None:
    """At exit: end the daemonic children (loader workers) with SIGKILL. multiprocessing's exit function (at the
    exit of the main process and of every process it started, e.g. the ranks of ``launch``) ends them with
    SIGTERM, which workers of :func:`ignore_signals_in_loader_workers` ignore, and then waits for them forever.
    It runs the finalizers with an exit priority first: this is one."""
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()
            child.join(timeout=5)


def ignore_signals_in_loader_workers(loader: Any, signals: Sequence[int]) -> None:
    """Make the worker processes of a ``torch.utils.data.DataLoader`` ignore ``signals`` (no-op for other
    objects, loaders without workers, or no signals). Loader workers still end with their loader, and at the
    latest when this process exits."""
    global _exit_handler_registered
    if not signals or not isinstance(loader, torch.utils.data.DataLoader) or loader.num_workers == 0:
        return
    if not isinstance(loader.worker_init_fn, _IgnoreSignalsThenInit):
        loader.worker_init_fn = _IgnoreSignalsThenInit(signals, loader.worker_init_fn)
    if not _exit_handler_registered:
        multiprocessing.util.Finalize(None, _kill_daemonic_children, exitpriority=100)
        _exit_handler_registered = True


_exit_handler_registered = False


def _any_rank(value: int) -> int:
    """The largest ``value`` over all ranks (the value itself without DDP)."""
    if comm.get_world_size() == 1:
        return value
    backend = torch.distributed.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    flag = torch.tensor([value], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return int(flag.item())


class PreemptionHook(HookBase):
    """See the module docstring. Needs ``trainer.checkpointer`` (saved on every rank: saving is a collective
    here; only the main process writes)."""

    def __init__(self, signals: Sequence[signal.Signals], checkpoint_period: int, output_dir: str):
        """
        Args:
            signals: the signals that request a stop (handlers are installed for the training loop only, and
                only in the main thread; the previous handlers are restored afterwards).
            checkpoint_period: ``SOLVER.CHECKPOINT_PERIOD``: iterations after which the periodic checkpointer has
                already written the checkpoint (not written twice); 0 = no periodic checkpoints.
            output_dir: where the checkpoints go (for the messages).
        """
        self._signals = list(signals)
        self._period = int(checkpoint_period)
        self._output_dir = output_dir
        self._requested = 0  # signal number, 0 = none
        self._previous: Dict[int, object] = {}

    @classmethod
    def from_config(cls, cfg) -> "PreemptionHook":
        return cls(parse_signals(cfg.SOLVER.PREEMPTION_SIGNALS), cfg.SOLVER.CHECKPOINT_PERIOD, cfg.OUTPUT_DIR)

    # ------------------------------------------------------------------------------------------------ signals
    def _handle(self, signum: int, frame) -> None:
        if self._requested:  # second signal: stop now, as without this hook
            self._restore()
            signal.raise_signal(signum)
            return
        self._requested = signum  # no logging here: a handler may run inside a logging call

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            logger.warning("Pre-emption signals are not handled: training does not run in the main thread")
            return
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    # -------------------------------------------------------------------------------------------------- hooks
    def before_train(self) -> None:
        self._requested = 0
        self._install()

    def after_step(self) -> None:
        requested = _any_rank(self._requested)
        iteration = self.trainer.iter
        last = iteration >= self.trainer.max_iter - 1
        if not requested:
            if last:  # the final checkpoint is written: signals during the final evaluation act as usual
                self._restore()
            return
        self._restore()
        name = signal.Signals(requested).name
        if last:
            checkpoint = "model_final"
        else:
            checkpoint = f"model_{iteration:07d}"
            if self._period <= 0 or (iteration + 1) % self._period != 0:  # else the periodic one has just written it
                self.trainer.checkpointer.save(checkpoint, iteration=iteration)
        path = os.path.join(self._output_dir, f"{checkpoint}.pth")
        message = (f"Training interrupted by {name} after iteration {iteration} (of {self.trainer.max_iter}); "
                   f"checkpoint written to {path}. Continue with the same command and --resume.")
        logger.warning(message)
        raise TrainingInterrupted(message, requested, path)

    def after_train(self) -> None:
        self._restore()
