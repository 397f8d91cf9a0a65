"""Checkpoints: this project's files (atomic writing, student / teacher loading) and the conversion of the
original SegFormer / mmseg / HRDA / DINOv2 layouts to them.

* :mod:`.detection_checkpoint`: the checkpointers and :func:`load_model_weights`;
* :mod:`.conversion`: the conversion dispatcher (file reading, layout detection, :func:`convert_checkpoint`);
* :mod:`.conversion_types`: the types every conversion shares;
* leaves: :mod:`.mmseg_conversion` (MiT / DAFormer / HRDA), :mod:`.dinov2_conversion` (DINOv2 ViTs);
* :mod:`.mmseg_config`: the stored original config text -> this project's config, through
  :mod:`.original_keys` (the original's settings -> keys, shared with the experiment generator).
"""
from .conversion import (
    convert_checkpoint,
    convert_mmseg_checkpoint,
    load_checkpoint_file,
    original_layout,
    unwrap_state_dict,
)
from .conversion_types import CheckpointConversionError, ConvertedCheckpoint, HeadSummary
from .detection_checkpoint import (
    AtomicDetectionCheckpointer,
    CheckpointLoadError,
    IncompatibleCheckpointError,
    NonFiniteWeightsError,
    TeacherWeightsCheckpointer,
    checkpoint_file_is_intact,
    load_model_weights,
)
from .mmseg_conversion import detect_mit_variant, mit_state_dict_shapes

__all__ = [
    "AtomicDetectionCheckpointer",
    "CheckpointLoadError",
    "IncompatibleCheckpointError",
    "NonFiniteWeightsError",
    "checkpoint_file_is_intact",
    "original_layout",
    "TeacherWeightsCheckpointer",
    "load_model_weights",
    "CheckpointConversionError",
    "ConvertedCheckpoint",
    "HeadSummary",
    "convert_checkpoint",
    "convert_mmseg_checkpoint",
    "detect_mit_variant",
    "load_checkpoint_file",
    "mit_state_dict_shapes",
    "unwrap_state_dict",
]
