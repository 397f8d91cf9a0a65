"""mIoU with the original's semantics (reference §12.1), mIoU16, and the prediction PNG formats (§12.3)."""
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from hrda_d2.evaluation import SemSegMIoUEvaluator, SemSegPredictionWriter, miou_from_confusion, train_ids_to_label_ids


def test_class_predicted_but_absent_in_gt_counts_with_iou_zero():
    # rows = prediction, cols = ground truth; 3 classes
    conf = np.array([[4, 1, 0],
                     [0, 3, 0],
                     [2, 0, 0]])  # class 2: predicted twice, never in GT -> IoU 0 (mmseg), not NaN
    res = miou_from_confusion(conf, ["a", "b", "c"])
    iou_a = 4 / (5 + 6 - 4)
    iou_b = 3 / (3 + 4 - 3)
    assert res["IoU-a"] == pytest.approx(100 * iou_a)
    assert res["IoU-b"] == pytest.approx(100 * iou_b)
    assert res["IoU-c"] == 0.0
    assert res["mIoU"] == pytest.approx(100 * (iou_a + iou_b + 0) / 3)
    assert res["pACC"] == pytest.approx(100 * 7 / 10)


def test_class_absent_everywhere_is_excluded_and_subsets_average_their_classes():
    conf = np.diag([5, 0, 5])
    conf[0, 2] = 5
    res = miou_from_confusion(conf, ["a", "b", "c"], subsets={"mIoU2": [0, 1]})
    assert np.isnan(res["IoU-b"])
    assert res["mIoU"] == pytest.approx(100 * (0.5 + 0.5) / 2)
    assert res["mIoU2"] == pytest.approx(50.0)
    assert res["fwIoU"] == pytest.approx(100 * (5 / 15 * 0.5 + 10 / 15 * 0.5))


@pytest.fixture
def tiny_split(tmp_path):
    name = f"test_eval_{uuid.uuid4().hex[:8]}"
    gts = [np.array([[0, 0, 1, 255], [2, 2, 1, 1]], dtype=np.uint8),
           np.array([[1, 1, 1, 1], [0, 255, 255, 2]], dtype=np.uint8)]
    dicts = []
    for i, gt in enumerate(gts):
        p = tmp_path / f"{i}_label.png"
        Image.fromarray(gt).save(p)
        dicts.append({"file_name": str(tmp_path / f"{i}.png"), "sem_seg_file_name": str(p), "height": 2, "width": 4})
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(stuff_classes=["a", "b", "c"], stuff_colors=[[1, 2, 3], [4, 5, 6], [7, 8, 9]],
                                  ignore_label=255)
    yield name, gts, dicts
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def one_hot_logits(pred: np.ndarray, k: int = 3) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.from_numpy(pred).long(), k).permute(2, 0, 1).float()


def test_evaluator_matches_hand_count_ignoring_255(tiny_split):
    name, gts, dicts = tiny_split
    preds = [np.array([[0, 1, 1, 2], [2, 0, 1, 1]]), np.array([[1, 1, 0, 1], [0, 2, 2, 2]])]
    ev = SemSegMIoUEvaluator(name, distributed=False)
    ev.reset()
    for d, p in zip(dicts, preds):
        ev.process([{"file_name": d["file_name"]}], [{"sem_seg": one_hot_logits(p)}])
    res = ev.evaluate()["sem_seg"]
    gt_all = np.concatenate([g.ravel() for g in gts])
    pr_all = np.concatenate([p.ravel() for p in preds])
    keep = gt_all != 255
    gt_all, pr_all = gt_all[keep], pr_all[keep]
    ious = []
    for c in range(3):
        inter = np.sum((gt_all == c) & (pr_all == c))
        union = np.sum((gt_all == c) | (pr_all == c))
        ious.append(inter / union)
    assert res["mIoU"] == pytest.approx(100 * np.mean(ious))
    assert res["pACC"] == pytest.approx(100 * np.mean(gt_all == pr_all))


def test_train_ids_map_to_cityscapes_label_ids():
    expected = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]  # reference §12.3
    assert train_ids_to_label_ids(np.arange(19, dtype=np.uint8)).tolist() == expected


@pytest.mark.parametrize("to_label_id", [True, False])
def test_prediction_writer_formats(tmp_path, to_label_id):
    colors = [[10 * i, 5 * i, 255 - i] for i in range(19)]
    writer = SemSegPredictionWriter(str(tmp_path), colors, to_label_id=to_label_id)
    writer.reset()
    pred = np.arange(19 * 2, dtype=np.int64).reshape(2, 19) % 19
    writer.process([{"file_name": "/x/frankfurt_000000_000294_leftImg8bit.png"}],
                   [{"sem_seg": torch.nn.functional.one_hot(torch.from_numpy(pred), 19).permute(2, 0, 1).float()}])
    color = Image.open(tmp_path / "color" / "frankfurt_000000_000294_leftImg8bit.png")
    assert color.mode == "P"
    assert np.array_equal(np.asarray(color.convert("RGB"))[0, 3], colors[3])
    sub = "labelIds" if to_label_id else "labelTrainIds"
    ids = np.asarray(Image.open(tmp_path / sub / "frankfurt_000000_000294_leftImg8bit.png"))
    assert ids[0, 0] == (7 if to_label_id else 0) and ids[0, 18] == (33 if to_label_id else 18)
