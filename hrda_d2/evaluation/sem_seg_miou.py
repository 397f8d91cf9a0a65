"""mIoU evaluation with the original implementation's semantics (docs/method.md §12.1).

Detectron2's ``SemSegEvaluator`` excludes a class from the mean when it has no ground-truth pixels, even if
it was predicted; mmseg (and the numbers in the HRDA paper) count such a class with IoU 0 and exclude a class
only when its union is empty. This evaluator follows mmseg:

* per image, pixels whose ground truth is ``ignore_label`` are dropped;
* intersection, prediction area, ground-truth area and union are accumulated per class over the whole
  dataset (float64);
* ``IoU_c = I_c / U_c`` (NaN when ``U_c == 0``), ``mIoU = nanmean(IoU)``; ``aAcc = sum(I) / sum(gt area)``;
  ``Acc_c = I_c / gt_area_c``; ``fwIoU = sum_c gt_area_c / sum(gt area) * IoU_c`` (NaN classes skipped);
* optional class subsets (``{"mIoU16": [0, 1, ...]}`` for Synthia sources) report the nanmean over the subset.

Results are percentages, under the task name ``"sem_seg"`` (keys ``mIoU``, ``fwIoU``, ``mACC``, ``pACC``,
``aAcc`` (= pACC), ``IoU-<class>``, ``ACC-<class>`` and the subset names), like Detectron2's evaluator, so
``verify_results``/``print_csv_format`` work unchanged.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils.comm import all_gather, is_main_process, synchronize
from tabulate import tabulate

from ..data.image_io import read_label

__all__ = ["SemSegMIoUEvaluator", "miou_from_confusion"]

logger = logging.getLogger(__name__)


def miou_from_confusion(
    confusion: np.ndarray,
    class_names: Sequence[str],
    subsets: Optional[Mapping[str, Sequence[int]]] = None,
) -> Dict[str, float]:
    """Metrics from a ``K x K`` confusion matrix (rows: prediction, columns: ground truth), in percent.

    Follows mmseg's ``total_area_to_metrics``: a class's IoU is NaN only when its union is empty.
    """
    confusion = confusion.astype(np.float64)
    intersect = np.diag(confusion)
    area_pred = confusion.sum(axis=1)
    area_gt = confusion.sum(axis=0)
    union = area_pred + area_gt - intersect
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersect / union
        acc = intersect / area_gt
    total_gt = area_gt.sum()
    res: Dict[str, float] = OrderedDict()
    res["mIoU"] = 100 * float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    valid = np.isfinite(iou)
    res["fwIoU"] = 100 * float(np.sum(area_gt[valid] / total_gt * iou[valid])) if total_gt > 0 else float("nan")
    for name, i in zip(class_names, range(len(iou))):
        res[f"IoU-{name}"] = 100 * float(iou[i])
    res["mACC"] = 100 * float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")
    res["pACC"] = 100 * float(intersect.sum() / total_gt) if total_gt > 0 else float("nan")
    res["aAcc"] = res["pACC"]
    for name, i in zip(class_names, range(len(acc))):
        res[f"ACC-{name}"] = 100 * float(acc[i])
    for subset_name, ids in (subsets or {}).items():
        sub = iou[list(ids)]
        res[subset_name] = 100 * float(np.nanmean(sub)) if np.isfinite(sub).any() else float("nan")
    return res


class SemSegMIoUEvaluator(DatasetEvaluator):
    """Accumulates a confusion matrix of argmax predictions against the split's label PNGs.

    ``inputs`` need ``file_name`` (looked up in the split's dicts for ``sem_seg_file_name``) or
    ``sem_seg_file_name``; ``outputs`` hold ``"sem_seg"``: ``C x H x W`` logits at the label's size.
    """

    def __init__(
        self,
        dataset_name: str,
        *,
        distributed: bool = True,
        subsets: Optional[Mapping[str, Sequence[int]]] = None,
    ) -> None:
        meta = MetadataCatalog.get(dataset_name)
        self._dataset_name = dataset_name
        self._class_names: List[str] = list(meta.stuff_classes)
        self._num_classes = len(self._class_names)
        self._ignore_label = int(getattr(meta, "ignore_label", 255))
        self._distributed = distributed
        self._subsets = dict(subsets or {})
        self._gt_files = {d["file_name"]: d["sem_seg_file_name"] for d in DatasetCatalog.get(dataset_name)}
        self.reset()

    def reset(self) -> None:
        self._confusion = np.zeros((self._num_classes, self._num_classes), dtype=np.int64)

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            pred = out["sem_seg"].argmax(dim=0).to("cpu").numpy().astype(np.int64)
            gt_file = inp.get("sem_seg_file_name") or self._gt_files.get(inp["file_name"])
            if gt_file is None:
                raise KeyError(f"No ground truth for '{inp['file_name']}' in split '{self._dataset_name}'.")
            gt = read_label(gt_file, self._num_classes, self._ignore_label).astype(np.int64)
            if gt.shape != pred.shape:
                raise ValueError(f"Prediction of shape {pred.shape} for '{inp['file_name']}' does not match its "
                                 f"label '{gt_file}' of shape {gt.shape}.")
            keep = gt != self._ignore_label
            gt, pred = gt[keep], pred[keep]
            k = self._num_classes
            self._confusion += np.bincount(pred * k + gt, minlength=k * k).reshape(k, k)

    def evaluate(self):
        confusion = self._confusion
        if self._distributed:
            synchronize()
            gathered = all_gather(self._confusion)
            if not is_main_process():
                return None
            confusion = np.sum(gathered, axis=0)
        res = miou_from_confusion(confusion, self._class_names, self._subsets)
        self._log_table(res)
        return OrderedDict({"sem_seg": res})

    def _log_table(self, res: Mapping[str, float]) -> None:
        rows = [(name, f"{res[f'IoU-{name}']:.2f}", f"{res[f'ACC-{name}']:.2f}") for name in self._class_names]
        table = tabulate(rows, headers=["class", "IoU", "Acc"], tablefmt="pipe")
        summary = ", ".join(f"{k} {res[k]:.2f}" for k in ["mIoU", *self._subsets, "fwIoU", "mACC", "pACC"])
        logger.info(f"Evaluation on {self._dataset_name}:\n{table}\n{summary}")
