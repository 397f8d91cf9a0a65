"""The adaptation methods (docs/method.md §7, §17, §18): one step class per method, one iteration per ``run_step``.

* :mod:`.step_base`: ``UDAStepTrainer``, the ``SimpleTrainer`` machinery every UDA step shares: ``start_step``
  (the iteration's state and pass plan), ``run_pass`` (a named pass: forward, finite check, backward, one DDP
  gradient sync per model and iteration), ``finish_step`` (metrics, gradient check, every optimizer through one
  grad-scaler decision), labelled / label-free student forwards, named stages with an optional listener,
  checkpointed state;
* :mod:`.build`: ``build_uda_step``, the step of ``UDA.METHOD``;
* :mod:`.dacs_step`: ``DACSStepTrainer``, one DACS iteration (HRDA's and DAFormer's self-training), and its parts,
  in the order of the iteration: :mod:`.ema` (EMA update, step 1), :mod:`.strong_augmentation` (steps 3 and 8),
  :mod:`.feature_distance` (step 5), :mod:`.pseudo_labels` (the EMA teacher's pseudo-labels, step 6),
  :mod:`.class_mix` (steps 7 and 8); MIC after step 9: :mod:`.masking` (block masking, §17.3) and
  :mod:`.masked_consistency` (the masked image consistency pass, §17);
* :mod:`.advseg_step` (AdvSeg, with :mod:`.discriminator`), :mod:`.minent_step` (MinEnt), sharing
  :mod:`.output_space`; with MIC, its pass has its own EMA teacher (§17.6);
  :mod:`.supervised_step` (source-only and the target-only oracle: one labelled stream);
* :mod:`.vfm_step`: ``VFMUDAStepTrainer``, the VFM-UDA / VFM-UDA++ iteration (§22), with its random decisions in
  :mod:`.vfm_augmentation`.

The workflow around it (models, optimizer, schedule, checkpoints, evaluation, hooks) is :mod:`hrda_d2.engine`.
"""
from .advseg_step import AdvSegStepTrainer
from .build import build_uda_step, uses_discriminator, uses_imnet_model, uses_teacher, uses_vfm_feature_distance
from .dacs_step import DACSStepTrainer, amp_dtype_from_config
from .discriminator import FCDiscriminator
from .masked_consistency import MIC_MODES, MaskedBatch, MaskedImageConsistency, build_masked_batch
from .masking import block_mask, block_mask_grid_shape, mask_images
from .minent_step import MinEntStepTrainer
from .step_base import StageListener, UDAStepTrainer
from .supervised_step import SupervisedStepTrainer
from .vfm_step import VFMUDAStepTrainer

__all__ = [
    "AdvSegStepTrainer",
    "DACSStepTrainer",
    "FCDiscriminator",
    "MIC_MODES",
    "MaskedBatch",
    "MaskedImageConsistency",
    "MinEntStepTrainer",
    "StageListener",
    "SupervisedStepTrainer",
    "UDAStepTrainer",
    "VFMUDAStepTrainer",
    "amp_dtype_from_config",
    "block_mask",
    "block_mask_grid_shape",
    "build_masked_batch",
    "build_uda_step",
    "mask_images",
    "uses_discriminator",
    "uses_imnet_model",
    "uses_teacher",
    "uses_vfm_feature_distance",
]
