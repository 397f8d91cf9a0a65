"""``--launcher slurm``: one submitit job array for the runs, requeued on pre-emption (docs/experiments.md §7.3).

Facts of submitit 1.5.4 this relies on (its ``core/job_environment.py``, ``core/submission.py``, ``slurm/slurm.py``,
``local/local.py``):

* the sbatch file always asks SLURM for ``--signal=USR2@<signal_delay_s>``; in the job process submitit handles
  ``SIGUSR2`` by calling the callable's ``checkpoint()`` and requeueing the job (``scontrol requeue <array id>_<i>``,
  on the local executor exit status 144, which its controller restarts) with the ``DelayedSubmission`` it returns,
  at most ``max_num_timeout`` times for signals near the time limit; ``SIGTERM`` is only logged there;
* a callable is checkpointable when it has a ``checkpoint`` attribute (``helpers.Checkpointable``);
* several submissions in one ``executor.batch()`` become one array (``#SBATCH --array=0-{n-1}%{parallelism}``);
  all its tasks share the executor's resources.

:class:`TrainingJob` runs the launch command in a :class:`~.launch.TrainingProcess` that ignores
``SIGUSR2`` (with cgroup process tracking SLURM signals every process of the job; the trainer would die of it). Its
``checkpoint()`` forwards ``SIGUSR1`` (one of ``SOLVER.PREEMPTION_SIGNALS``, exactly once) to the trainer, waits
for its pre-emption checkpoint and exit, and returns a new job with the same command, which has ``--resume``.
A pre-emption that SLURM signals with ``SIGTERM`` reaches the trainer directly (it checkpoints and exits 143); the
job then fails, and SLURM's own requeue (``--requeue``) restarts the same command, which resumes.
"""
import logging
import os
import shutil
import signal
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import submitit
from detectron2.utils.logger import setup_logger

from .launch import TRAIN_NET, LaunchError, LaunchItem, RunState, TrainingProcess, run_status

__all__ = ["SlurmResources", "TrainingFailed", "TrainingJob", "build_executor", "submit_array"]

logger = logging.getLogger(__name__)

JOB_STOP_SIGNAL = signal.SIGUSR1  # forwarded to the trainer: in launch.STOP_SIGNALS
SUBMITIT_SIGNAL = signal.SIGUSR2  # submitit's pre-emption / time-limit signal (JobEnvironment.USR_SIG)


class TrainingFailed(RuntimeError):
    """The trainer of a job exited with a non-zero status that no requeue explains."""


class TrainingJob(submitit.helpers.Checkpointable):
    """One run as a submitit job (see the module docstring).

    Args:
        command: the launch command (with ``--resume``).
        env_updates: variables set on top of the job's own environment (``PYTHONPATH``, ``DETECTRON2_DATASETS``;
            the node's environment, e.g. its ``CUDA_VISIBLE_DEVICES``, is kept).
        cwd: the working directory (relative paths of the configs: the checkout).
        output_dir: the run's ``OUTPUT_DIR`` (for messages).
        stop_timeout_s: how long ``checkpoint()`` waits for the trainer's checkpoint and exit (keep it below
            ``signal_delay_s``).
    """

    def __init__(self, command: Sequence[str], env_updates: Dict[str, str], cwd: str, output_dir: str,
                 stop_timeout_s: float = 100.0):
        self.command = list(command)
        self.env_updates = dict(env_updates)
        self.cwd = cwd
        self.output_dir = output_dir
        self.stop_timeout_s = float(stop_timeout_s)
        self._process: Optional[TrainingProcess] = None

    def __getstate__(self) -> Dict[str, Any]:  # the process handle stays in the job process
        return {k: v for k, v in self.__dict__.items() if k != "_process"}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._process = None

    def __call__(self) -> str:
        if not logging.getLogger().handlers:  # a fresh job process: this package's log to the job's output file
            setup_logger(name="hrda_d2")
        logger.info("%s: starting %s", self.output_dir, " ".join(self.command))
        self._process = TrainingProcess(self.command, env={**os.environ, **self.env_updates}, cwd=self.cwd,
                                        ignore_signals=(SUBMITIT_SIGNAL,))
        returncode = self._process.run()
        if returncode != 0:
            raise TrainingFailed(f"{' '.join(self.command)} exited with status {returncode}; its log: "
                                 f"{os.path.join(self.output_dir, 'log.txt')} (128 + n: stopped by signal n, resumable "
                                 f"with the same command)")
        return self.output_dir

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        process = self._process
        if process is not None and process.running:
            process.request_stop(JOB_STOP_SIGNAL)
            returncode = process.wait(timeout=self.stop_timeout_s)
            if returncode is None:
                logger.warning("%s: the trainer has not stopped %g s after %s; requeueing anyway (it resumes from "
                               "its last complete checkpoint)", self.output_dir, self.stop_timeout_s,
                               JOB_STOP_SIGNAL.name)
            else:
                logger.info("%s: trainer stopped with status %d after %s; requeueing with --resume",
                            self.output_dir, returncode, JOB_STOP_SIGNAL.name)
        requeued = TrainingJob(self.command, self.env_updates, self.cwd, self.output_dir, self.stop_timeout_s)
        return submitit.helpers.DelayedSubmission(requeued, *args, **kwargs)


@dataclass
class SlurmResources:
    """Resources of every task of the array (submitit's generic and ``slurm_`` parameters)."""

    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem_gb: float = 64
    timeout_min: int = 48 * 60
    partition: Optional[str] = None
    array_parallelism: Optional[int] = None
    signal_delay_s: int = 180
    max_requeues: int = 3
    job_name: str = "hrda_d2"
    additional: Dict[str, Any] = field(default_factory=dict)

    @property
    def stop_timeout_s(self) -> float:
        """The wait of ``checkpoint()``: the signal delay less a margin for the requeue itself."""
        return max(5.0, self.signal_delay_s - 15.0)


def build_executor(folder: str, resources: SlurmResources, cluster: str = "slurm") -> submitit.Executor:
    """A submitit executor for ``cluster``: ``slurm``, or ``local`` (submitit's LocalExecutor: the same jobs, signals
    and requeues as processes on this machine; only the time limit, GPUs and signal delay apply) or ``debug`` (in
    this process, no signals)."""
    if cluster == "local":
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=resources.max_requeues)
        executor.update_parameters(timeout_min=resources.timeout_min, gpus_per_node=resources.gpus_per_node,
                                   tasks_per_node=1, signal_delay_s=resources.signal_delay_s)
        return executor
    if cluster == "debug":
        return submitit.DebugExecutor(folder=folder)
    if cluster != "slurm":
        raise ValueError(f"unknown submitit cluster {cluster!r} (slurm, local or debug)")
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if missing:
        raise LaunchError(f"--launcher slurm: this machine has no SLURM ({' and '.join(missing)} not on PATH); run it "
                          f"on a SLURM login node, or add --submitit-cluster local to run the same job array here")
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=resources.max_requeues)
    executor.update_parameters(
        name=resources.job_name, timeout_min=int(resources.timeout_min), gpus_per_node=resources.gpus_per_node,
        cpus_per_task=resources.cpus_per_task, mem_gb=resources.mem_gb, nodes=1, tasks_per_node=1,
        slurm_partition=resources.partition, slurm_array_parallelism=resources.array_parallelism,
        slurm_signal_delay_s=resources.signal_delay_s,
        slurm_additional_parameters={"requeue": True, **resources.additional})
    return executor


def submit_array(items: Sequence[LaunchItem], resources: SlurmResources, folder: str, env_updates: Dict[str, str],
                 cluster: str = "slurm", python: str = sys.executable,
                 train_script: str = TRAIN_NET) -> List[submitit.Job]:
    """Submit the unfinished ``items`` as one job array; finished runs and runs held by a live process are skipped.
    Returns the jobs (empty when nothing is left to run)."""
    todo = []
    for item in items:
        status = run_status(item.output_dir, item.max_iter, item.eval_period)
        if status.state in (RunState.FINISHED, RunState.RUNNING):
            logger.info("%s: %s, not submitted", item.name, status)
        else:
            todo.append(item)
    if not todo:
        logger.info("every run is finished or running: nothing to submit")
        return []
    executor = build_executor(folder, resources, cluster)
    jobs = []
    with executor.batch():
        for item in todo:
            job = TrainingJob(item.command(python, train_script), env_updates, os.getcwd(), item.output_dir,
                              resources.stop_timeout_s)
            jobs.append(executor.submit(job))
    for item, job in zip(todo, jobs):
        logger.info("submitted %s as job %s", item.name, job.job_id)
    logger.info("%d jobs submitted (logs and submission files under %s)", len(jobs), folder)
    return jobs
