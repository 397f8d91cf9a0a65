"""Checkpoints: this project's files (atomic writing, student / teacher loading) and the conversion of the
original SegFormer / mmseg / HRDA layouts to them."""
from .detection_checkpoint import (
    WEIGHTS_SOURCES,
    AtomicDetectionCheckpointer,
    CheckpointLoadError,
    IncompatibleCheckpointError,
    TeacherWeightsCheckpointer,
    checkpoint_file_is_intact,
    load_model_weights,
)
from .mmseg_conversion import (
    CheckpointConversionError,
    ConvertedCheckpoint,
    HeadSummary,
    convert_mmseg_checkpoint,
    detect_mit_variant,
    load_checkpoint_file,
    mit_state_dict_shapes,
    original_layout,
)

__all__ = [
    "AtomicDetectionCheckpointer",
    "CheckpointLoadError",
    "IncompatibleCheckpointError",
    "checkpoint_file_is_intact",
    "original_layout",
    "TeacherWeightsCheckpointer",
    "WEIGHTS_SOURCES",
    "load_model_weights",
    "CheckpointConversionError",
    "ConvertedCheckpoint",
    "HeadSummary",
    "convert_mmseg_checkpoint",
    "detect_mit_variant",
    "load_checkpoint_file",
    "mit_state_dict_shapes",
]
