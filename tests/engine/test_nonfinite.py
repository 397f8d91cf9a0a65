"""Nothing silent: non-finite gradients stop training before the optimizer step (or are skipped, counted, with
SOLVER.SKIP_NONFINITE_STEPS), and no checkpoint is ever written with non-finite weights."""
import logging
import subprocess
import sys

import pytest
import torch
from detectron2.engine import HookBase

from hrda_d2.checkpoint import NonFiniteWeightsError
from tests.helpers.training import (
    DEMO_CONFIG,
    REPO,
    TRAIN_NET,
    build_trainer,
    checkpoint_files,
    clone_params,
    make_cfg,
    release,
    subprocess_env,
)


class PoisonGradients(HookBase):
    """Sets one gradient element of the first backbone parameter to NaN after the backward of the given
    iterations (as an fp16 overflow, a bad batch or a custom loss would). Registered on the step
    (``trainer.uda_step``): Detectron2's ``DefaultTrainer`` does not pass ``after_backward`` on to its hooks."""

    def __init__(self, iterations):
        self.iterations = set(iterations)

    def after_backward(self):
        if self.trainer.iter in self.iterations:
            next(p for p in self.trainer.student.parameters() if p.grad is not None).grad.view(-1)[0] = float("nan")


class RecordParameters(HookBase):
    def __init__(self):
        self.before, self.after = {}, {}

    def before_step(self):
        self.before[self.trainer.iter] = clone_params(self.trainer.student)

    def after_step(self):
        self.after[self.trainer.iter] = clone_params(self.trainer.student)


@pytest.mark.slow  # one train_net start (~15 s); the stop with the named error before the optimizer step and no
# checkpoint: in-process below (test_a_nan_gradient_on_an_unchecked_iteration_is_never_saved, the stop of
# test_skip_nonfinite_steps_skips_exactly_the_bad_steps)
def test_the_issue_reproduction_stops_with_the_named_error_and_writes_no_checkpoint(data_root, tmp_path):
    """The command of the issue: a 64-px MIC block covers the whole 64-px detail crop of a random-init MiT; the
    LayerNorms of an all-zero input blow the gradient up (docs/method.md §15 Q20)."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, TRAIN_NET, "--config-file", DEMO_CONFIG, "UDA.MIC.ENABLED", "True", "UDA.MIC.BLOCK_SIZE", "64",
         "UDA.PSEUDO_THRESHOLD", "0.0", "SOLVER.MAX_ITER", "1", "SOLVER.CHECKPOINT_PERIOD", "1", "TEST.EVAL_PERIOD", "0",
         "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out)],
        env=subprocess_env(data_root), cwd=str(REPO), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Non-finite gradient of parameter 'backbone." in proc.stderr
    assert "loss_masked_sem_seg=" in proc.stderr and "before the optimizer step" in proc.stderr
    assert checkpoint_files(out) == [] and not (out / "model_final.pth").exists()


def test_a_nan_gradient_on_an_unchecked_iteration_is_never_saved(data_root, tmp_path):
    cfg = make_cfg(tmp_path, "SOLVER.METRICS_PERIOD", "100", "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2",
                   "TEST.EVAL_PERIOD", "0", "UDA.DEBUG_IMG_INTERVAL", "0")
    trainer = build_trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.uda_step.register_hooks([PoisonGradients({2})])  # iteration 2: neither a metrics nor a checkpoint one
    with pytest.raises(FloatingPointError, match="iteration 3"):
        trainer.train()  # caught at iteration 3, the next checkpoint iteration, before anything is written
    release(trainer)
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000001.pth"
    assert [p.rsplit("/", 1)[-1] for p in checkpoint_files(tmp_path)] == ["model_0000001.pth"]
    saved = torch.load(tmp_path / "model_0000001.pth", map_location="cpu", weights_only=False)
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_a_checkpoint_with_nonfinite_weights_is_refused_and_the_last_one_stays(data_root, tmp_path):
    """A pre-emption checkpoint can come at any iteration: the weights are checked before every save."""
    cfg = make_cfg(tmp_path, "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "0",
                   "UDA.DEBUG_IMG_INTERVAL", "0")
    trainer = build_trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_final.pth"
    with torch.no_grad():
        next(trainer.teacher.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(NonFiniteWeightsError, match=r"preempted\.pth.*'teacher' tensor .* is not finite.*"
                                                    r"model_final\.pth stays last_checkpoint"):
        trainer.checkpointer.save("preempted", iteration=2)
    release(trainer)
    assert not (tmp_path / "preempted.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_final.pth"


def test_skip_nonfinite_steps_skips_exactly_the_bad_steps(data_root, tmp_path, caplog):
    opts = ["SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.EVAL_PERIOD", "0",
            "UDA.DEBUG_IMG_INTERVAL", "0"]
    trainer = build_trainer(make_cfg(tmp_path / "skip", "SOLVER.SKIP_NONFINITE_STEPS", "2", *opts))
    trainer.resume_or_load(resume=False)
    record = RecordParameters()
    trainer.uda_step.register_hooks([PoisonGradients({1, 2})])
    trainer.register_hooks([record])
    with caplog.at_level(logging.WARNING, logger="hrda_d2.uda.step_base"):
        trainer.train()
    assert trainer.uda_step.skipped_steps == 2
    for it in range(4):
        unchanged = all(torch.equal(record.before[it][k], record.after[it][k]) for k in record.before[it])
        assert unchanged == (it in (1, 2)), it
    warnings = [r.getMessage() for r in caplog.records if "step skipped" in r.getMessage()]
    assert len(warnings) == 2 and "(2 of SOLVER.SKIP_NONFINITE_STEPS 2)" in warnings[1]
    release(trainer)
    # one more bad step than allowed: the third stops training
    trainer = build_trainer(make_cfg(tmp_path / "stop", "SOLVER.SKIP_NONFINITE_STEPS", "1", *opts))
    trainer.resume_or_load(resume=False)
    trainer.uda_step.register_hooks([PoisonGradients({1, 2})])
    with pytest.raises(FloatingPointError, match="Non-finite gradient of parameter 'backbone.* at iteration 2"):
        trainer.train()
    release(trainer)


def test_the_check_reads_nothing_on_unchecked_iterations(data_root, tmp_path, monkeypatch):
    """Off metrics iterations the gradient check does not touch the gradients (no host synchronisation)."""
    cfg = make_cfg(tmp_path, "SOLVER.METRICS_PERIOD", "100", "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD",
                   "100", "TEST.EVAL_PERIOD", "0", "UDA.DEBUG_IMG_INTERVAL", "0")
    calls = []
    real = torch._foreach_norm
    monkeypatch.setattr(torch, "_foreach_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
    trainer = build_trainer(cfg)
    trainer.resume_or_load(resume=False)
    steps = []
    trainer.register_hooks([type("Iter", (HookBase,), {"after_step": lambda self: steps.append(
        (self.trainer.iter, self.trainer.uda_step.is_metrics_step, len(calls)))})()])
    trainer.train()
    release(trainer)
    assert [(it, metrics) for it, metrics, _ in steps] == [(0, False), (1, False), (2, True)]
    assert [n for _, _, n in steps] == [0, 0, 1]  # one reduction, on the last (checked) iteration only
