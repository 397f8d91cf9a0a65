"""Evaluation: mIoU with the original's semantics (+ mIoU16), the official Cityscapes evaluation, PNG writer."""
from .cityscapes_official import OfficialCityscapesSemSegEvaluator
from .prediction_writer import SemSegPredictionWriter, train_ids_to_label_ids
from .sem_seg_miou import SemSegMIoUEvaluator, miou_from_confusion

__all__ = ["OfficialCityscapesSemSegEvaluator", "SemSegMIoUEvaluator", "SemSegPredictionWriter", "miou_from_confusion", "train_ids_to_label_ids"]
