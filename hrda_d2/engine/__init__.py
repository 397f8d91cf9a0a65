"""Training engine: the DACS step (a ``SimpleTrainer``), the Detectron2 trainer around it, and its hooks.

* ``dacs_trainer.DACSTrainer``: one DACS iteration per ``run_step`` (EMA teacher, pseudo-labels, ClassMix,
  strong augmentation, ImageNet feature distance) or source-only training;
* ``trainer.HRDATrainer``: ``DefaultTrainer`` workflow (model/teacher/ImageNet model, optimizer, schedule,
  loaders, checkpoints, evaluation, writers);
* building blocks: ``ema``, ``pseudo_labels``, ``class_mix``, ``strong_augmentation``, ``feature_distance``,
  ``rng``, ``checkpointer``, ``hooks``.
"""
from .dacs_trainer import DACSTrainer
from .trainer import HRDATrainer

__all__ = ["DACSTrainer", "HRDATrainer"]
