"""The adaptation method (docs/method.md §7, §17): one DACS iteration and its parts.

* :mod:`.step_base`: ``UDAStepTrainer``, the ``SimpleTrainer`` machinery every UDA step shares (batch and data
  time, RNG restore, autocast, finite checks, backward, one DDP gradient sync per iteration, optimizer step,
  metrics, named stages with an optional listener, checkpointed state);
* :mod:`.dacs_step`: ``DACSStepTrainer``, the ``UDAStepTrainer`` whose ``run_step`` is one DACS iteration;
* its parts, in the order of the iteration: :mod:`.ema` (EMA teacher, step 1), :mod:`.strong_augmentation`
  (steps 3 and 8), :mod:`.feature_distance` (step 5), :mod:`.pseudo_labels` (step 6), :mod:`.class_mix`
  (steps 7 and 8); MIC after step 9: :mod:`.masking` (block masking, §17.3) and :mod:`.masked_consistency`
  (the masked image consistency loss, §17).

The workflow around it (models, optimizer, schedule, checkpoints, evaluation, hooks) is :mod:`hrda_d2.engine`.
"""
from .dacs_step import DACSStepTrainer, amp_dtype_from_config
from .masked_consistency import MIC_MODES, MaskedBatch, MaskedImageConsistency, build_masked_batch
from .masking import block_mask, block_mask_grid_shape, mask_images
from .step_base import StageListener, UDAStepTrainer

__all__ = [
    "DACSStepTrainer",
    "MIC_MODES",
    "MaskedBatch",
    "MaskedImageConsistency",
    "StageListener",
    "UDAStepTrainer",
    "amp_dtype_from_config",
    "block_mask",
    "block_mask_grid_shape",
    "build_masked_batch",
    "mask_images",
]
