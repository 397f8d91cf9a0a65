"""The adaptation method (docs/method.md §7): one DACS iteration and its parts.

* :mod:`.dacs_step`: ``DACSStepTrainer``, a ``SimpleTrainer`` whose ``run_step`` is one DACS iteration;
* its parts, in the order of the iteration: :mod:`.ema` (EMA teacher, step 1), :mod:`.strong_augmentation`
  (steps 3 and 8), :mod:`.feature_distance` (step 5), :mod:`.pseudo_labels` (step 6), :mod:`.class_mix`
  (steps 7 and 8).

The workflow around it (models, optimizer, schedule, checkpoints, evaluation, hooks) is :mod:`hrda_d2.engine`.
"""
from .dacs_step import DACSStepTrainer, amp_dtype_from_config

__all__ = ["DACSStepTrainer", "amp_dtype_from_config"]
