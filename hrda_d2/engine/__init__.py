"""Training workflow (Detectron2's ``DefaultTrainer`` around the DACS step of :mod:`hrda_d2.uda`).

* ``trainer.HRDATrainer``: the run: student / EMA teacher / ImageNet model, optimizer, schedule, loaders,
  atomic checkpoints with resume, evaluation, writers;
* ``hooks.DebugImageHook``: the DACS debug panels (PNG files and TensorBoard);
* ``preemption.PreemptionHook``: SIGTERM / SIGINT / SIGUSR1 stop after the iteration with a checkpoint;
* ``output_lock.OutputDirLock``: one training run per ``OUTPUT_DIR`` (taken by ``tools/train_net.py``).
"""
from .trainer import HRDATrainer

__all__ = ["HRDATrainer"]
