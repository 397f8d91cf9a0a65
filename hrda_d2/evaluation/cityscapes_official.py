"""The official Cityscapes evaluation (cityscapesscripts), reported under its own task name.

Detectron2's ``CityscapesSemSegEvaluator`` returns its metrics under ``"sem_seg"``, the task name of the
mmseg-semantics evaluator too; ``DatasetEvaluators`` refuses two evaluators with the same key. This wrapper
returns the official metrics under ``"cityscapes_sem_seg"`` (IoU, iIoU, IoU_sup, iIoU_sup in percent).
"""
from collections import OrderedDict

from detectron2.evaluation import CityscapesSemSegEvaluator

__all__ = ["OfficialCityscapesSemSegEvaluator"]

TASK = "cityscapes_sem_seg"


class OfficialCityscapesSemSegEvaluator(CityscapesSemSegEvaluator):
    def evaluate(self):
        results = super().evaluate()
        if results is None:  # non-main ranks
            return None
        return OrderedDict((TASK if k == "sem_seg" else k, v) for k, v in results.items())
