"""DACS iterations of ``HRDATrainer`` on generated data with a tiny HRDA (MiT-b0, 64x64 crops, 32x32 HR crops).

Expectations come from the method (docs/method.md §7.2), not from this code's output:

* every loss term of a few DACS iterations (and of source-only training in the same loop) is finite;
* the teacher is the EMA of the student (§7.2 step 1: copy at iteration 0, then
  ``alpha_t = min(1 - 1/(t+1), alpha)``, parameters only; the teacher's BatchNorm counters count only its own
  pseudo-label calls: 2 main-head calls and 1 attention-head call per iteration, §7.2 step 6); teacher and
  ImageNet model receive no gradients and are outside the optimizer;
* a non-finite loss stops training with a FloatingPointError naming the term and iteration, before the
  optimizer step.
"""
import gc
import json
import math

import pytest
import torch
from tests.helpers.training import (
    FD_TERM,
    MIX_TERMS,
    RecordStep,
    SOURCE_TERMS,
    build_trainer,
    clone_params,
    clone_state,
    differing_keys,
    loss_history,
    make_cfg,
    release,
    train,
)


# ---------------------------------------------------------------------------------------- 1. finite losses
def test_dacs_iterations_have_finite_losses(uda_run):
    trainer, _, _, out = uda_run
    history = loss_history(trainer)
    assert SOURCE_TERMS | MIX_TERMS | {FD_TERM, "total_loss"} <= set(history)
    assert not any("_lr" in name for name in history), "LR_LOSS_WEIGHT 0 must not add an LR loss term"
    for name, values in history.items():
        assert sorted(values) == [0, 1, 2], name
        assert all(math.isfinite(v) for v in values.values()), f"{name}: {values}"
    # a fresh 19-class model starts near ln(19) = 2.94 on the main term
    assert 1.0 < history["loss_src_sem_seg"][0] < 6.0
    for it in range(3):
        assert history["total_loss"][it] == pytest.approx(
            sum(history[k][it] for k in SOURCE_TERMS | MIX_TERMS | {FD_TERM}), rel=1e-5)
    # metrics.json: the writer's last record (iteration 2) with finite smoothed losses
    with open(out / "metrics.json") as f:
        records = [json.loads(line) for line in f if line.strip()]
    last = records[-1]
    assert last["iteration"] == 2
    for name in SOURCE_TERMS | MIX_TERMS | {FD_TERM, "total_loss"}:
        assert math.isfinite(last[name]), name
    assert 0.0 <= last["pseudo_confident_fraction"] <= 1.0


def test_source_only_runs_in_the_same_loop(data_root, tmp_path):
    cfg = make_cfg(tmp_path, "UDA.METHOD", "source_only", "SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "0",
                   "DATASETS.TEST", "()", "SOLVER.CHECKPOINT_PERIOD", "100")
    trainer = train(cfg)
    assert trainer.teacher is None and trainer.imnet_model is None
    history = loss_history(trainer)
    assert set(history) == SOURCE_TERMS | {"total_loss"}
    for name, values in history.items():
        assert sorted(values) == [0, 1] and all(math.isfinite(v) for v in values.values()), name
    release(trainer)


def test_bfloat16_autocast_runs_the_dacs_step(data_root, tmp_path):
    """SOLVER.AMP (off in the paper configs): bf16 autocast on the CPU; losses finite, weights stay float32."""
    cfg = make_cfg(tmp_path, "SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "bfloat16", "SOLVER.MAX_ITER", "2",
                   "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "SOLVER.CHECKPOINT_PERIOD", "100")
    trainer = train(cfg)
    history = loss_history(trainer)
    assert SOURCE_TERMS | MIX_TERMS <= set(history)
    for name, values in history.items():
        assert all(math.isfinite(v) for v in values.values()), f"{name}: {values}"
    assert all(p.dtype == torch.float32 for p in trainer.student.parameters())
    release(trainer)


# ------------------------------------------------------------------------------------ 2. EMA and frozen models
def test_teacher_is_the_ema_of_the_student(uda_run):
    _, rec, _, _ = uda_run
    s0, s1, s2 = rec.student_before[0], rec.student_before[1], rec.student_before[2]
    t0, t1, t2 = rec.teacher_after[0], rec.teacher_after[1], rec.teacher_after[2]
    # the optimizer moved the student between the steps (else the checks below could not fail)
    assert differing_keys(s0, s1) and differing_keys(s1, s2)
    # iteration 0: the teacher becomes an exact copy of the student
    assert differing_keys(t0, s0) == []
    for name in s0:
        # iteration 1: alpha = min(1 - 1/2, 0.999) = 0.5; halves are exact, so the float32 result is the
        # correctly rounded float64 one
        expected1 = (0.5 * t0[name].double() + 0.5 * s1[name].double()).float()
        assert torch.equal(t1[name], expected1), name
        # iteration 2: alpha = 2/3 (float32 arithmetic: within a few ulp of the float64 value)
        expected2 = 2.0 / 3.0 * t1[name].double() + (1.0 / 3.0) * s2[name].double()
        torch.testing.assert_close(t2[name].double(), expected2, rtol=1e-6, atol=1e-9)
    assert differing_keys(t2, s2) and differing_keys(t2, t1)


def test_teacher_buffers_are_not_averaged(uda_run):
    """BN counters of the teacher count only its own pseudo-label calls (§7.2 step 6: main head on the LR batch
    and on the HR tiles, attention head once, per iteration); copying or averaging the student's buffers
    (4 main-head and 2 attention-head calls per iteration) would change them."""
    _, rec, _, _ = uda_run
    for it in range(3):
        counters = {k: int(v) for k, v in rec.teacher_buffers_after[it].items() if k.endswith("num_batches_tracked")}
        assert counters
        for name, count in counters.items():
            per_iteration = 1 if name.startswith("sem_seg_head.scale_attention.") else 2
            assert count == per_iteration * (it + 1), (name, it, count)


def test_teacher_and_imnet_model_are_frozen_and_outside_the_optimizer(uda_run):
    trainer, rec, imnet_before, _ = uda_run
    assert all(grads == [] for grads in rec.frozen_grads.values()), rec.frozen_grads
    for model in (trainer.teacher, trainer.imnet_model):
        assert model is not trainer.student
        assert not any(p.requires_grad for p in model.parameters())
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    student_params = {id(p) for p in trainer.student.parameters()}
    assert optimized == student_params
    assert not optimized & {id(p) for p in trainer.teacher.parameters()}
    assert not optimized & {id(p) for p in trainer.imnet_model.parameters()}
    # the ImageNet model is never updated (parameters and buffers: eval mode)
    assert differing_keys(clone_state(trainer.imnet_model), imnet_before) == []


# -------------------------------------------------------------------------------------- 6. non-finite loss
@pytest.mark.parametrize("stream,term", [("source", "loss_src_sem_seg_hr"), ("mix", "loss_mix_sem_seg")])
def test_non_finite_loss_stops_before_the_optimizer_step(data_root, tmp_path, stream, term):
    bad_iteration = 1
    cfg = make_cfg(tmp_path, "SOLVER.MAX_ITER", "3", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()",
                   "SOLVER.CHECKPOINT_PERIOD", "100", "UDA.DEBUG_IMG_INTERVAL", "0")
    trainer = build_trainer(cfg)
    trainer.resume_or_load(resume=False)
    student = trainer.student
    original_forward = student.forward

    def forward_with_nan(*args, **kwargs):
        outputs = original_forward(*args, **kwargs)
        is_mix = "weight" in kwargs
        if trainer.iter == bad_iteration and is_mix == (stream == "mix"):
            name = term.replace("loss_src_", "loss_").replace("loss_mix_", "loss_")
            outputs.losses[name] = outputs.losses[name] * float("nan")
        return outputs

    student.forward = forward_with_nan
    recorder = RecordStep()
    trainer.register_hooks([recorder])
    with pytest.raises(FloatingPointError) as error:
        trainer.train()
    message = str(error.value)
    assert f"'{term}'" in message and f"iteration {bad_iteration}" in message, message
    assert trainer.iter == bad_iteration
    # no optimizer step in the bad iteration: the weights are those before it, AdamW counted 1 step
    assert differing_keys(clone_params(student), recorder.student_before[bad_iteration]) == []
    steps = {float(state["step"]) for state in trainer.optimizer.state.values()}
    assert steps == {float(bad_iteration)}
    release(trainer)


def test_absurd_learning_rate_stops_with_a_named_term(data_root, tmp_path):
    cfg = make_cfg(tmp_path, "SOLVER.MAX_ITER", "5", "SOLVER.BASE_LR", "1e30", "SOLVER.WARMUP_ITERS", "0",
                   "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "SOLVER.CHECKPOINT_PERIOD", "100",
                   "UDA.DEBUG_IMG_INTERVAL", "0")
    with pytest.raises(FloatingPointError, match=r"Loss term 'loss_\w+' is (nan|inf|-inf) at iteration [1-4]"):
        train(cfg)
    gc.collect()
