"""``tools/train_net.py``: trains, evaluates (IoU table), writes metrics.json, TensorBoard events and debug panels,
and ``--eval-only`` evaluates the student and the teacher of a checkpoint.
"""
import glob
import json
import math
import os
import re

import pytest

from tests.helpers.training import (
    REF_ITERS,
    checkpoint_files,
    cli_opts,
    run_cli,
)


# ------------------------------------------------------------------------------------- 7. tools/train_net.py
def test_train_net_trains_evaluates_and_writes_outputs(cli_run):
    out, text = cli_run
    assert "mIoU" in text and re.search(r"\|\s*road\s*\|", text), text[-3000:]
    assert "mIoU" in (out / "log.txt").read_text()
    with open(out / "metrics.json") as f:
        records = [json.loads(line) for line in f if line.strip()]
    training = [r for r in records if "total_loss" in r]
    assert training[-1]["iteration"] == REF_ITERS - 1 and math.isfinite(training[-1]["total_loss"])
    assert sum("sem_seg/mIoU" in r for r in records) == 2  # TEST.EVAL_PERIOD 2: after iterations 2 and 4
    assert glob.glob(str(out / "events.out.tfevents.*"))
    # debug panels every 2 iterations: iterations 0 and 2 (file names: iteration + 1, sample index)
    assert sorted(os.path.basename(p) for p in glob.glob(str(out / "debug" / "*.png"))) == [
        "000001_0.png", "000001_1.png", "000003_0.png", "000003_1.png"]
    assert sorted(os.path.basename(p) for p in checkpoint_files(out)) == [
        "model_0000001.pth", "model_0000003.pth", "model_final.pth"]


def _copypaste_miou(text: str) -> float:
    """mIoU of the last ``copypaste: mIoU,...`` block of a Detectron2 log."""
    return float(re.findall(r"copypaste: ([\d.]+),", text)[-1])


@pytest.mark.slow  # two train_net starts (~25 s); --eval-only of a checkpoint reproduces a known mIoU in
# checkpoint/test_released_checkpoint_workflow.py, evaluates a training checkpoint in
# engine/test_custom_label_space.py, and the teacher entry loads in checkpoint/test_legacy_layout.py
def test_eval_only_student_and_teacher(data_root, cli_run, tmp_path):
    out, text = cli_run
    weights = str(out / "model_final.pth")
    student = run_cli(["--eval-only"] + cli_opts(tmp_path / "student", "MODEL.WEIGHTS", weights), data_root)
    # --eval-only evaluates the student by default: the training run's final evaluation exactly
    assert _copypaste_miou(student.stdout + student.stderr) == _copypaste_miou(text)
    teacher = run_cli(["--eval-only"] + cli_opts(tmp_path / "teacher", "MODEL.WEIGHTS", weights,
                                                 "TEST.WEIGHTS_SOURCE", "teacher"), data_root)
    teacher_text = teacher.stdout + teacher.stderr
    assert "| road" in teacher_text and math.isfinite(_copypaste_miou(teacher_text))
    assert "not found in the checkpoint" not in teacher_text and "not used in the model" not in teacher_text
