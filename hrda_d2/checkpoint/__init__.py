"""Checkpoint conversion from the original SegFormer / mmseg / HRDA layouts to this project's Detectron2 layout."""
from .mmseg_conversion import (
    CheckpointConversionError,
    ConvertedCheckpoint,
    HeadSummary,
    convert_mmseg_checkpoint,
    detect_mit_variant,
    load_checkpoint_file,
    mit_state_dict_shapes,
)

__all__ = [
    "CheckpointConversionError",
    "ConvertedCheckpoint",
    "HeadSummary",
    "convert_mmseg_checkpoint",
    "detect_mit_variant",
    "load_checkpoint_file",
    "mit_state_dict_shapes",
]
