"""Training workflow (Detectron2's ``DefaultTrainer`` around the DACS step of :mod:`hrda_d2.uda`).

* ``trainer.HRDATrainer``: the run: student / EMA teacher / ImageNet model, optimizer, schedule, loaders,
  atomic checkpoints with resume, evaluation, writers;
* ``hooks.DebugImageHook``: the DACS debug panels (PNG files and TensorBoard).
"""
from .trainer import HRDATrainer

__all__ = ["HRDATrainer"]
