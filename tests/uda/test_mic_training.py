"""MIC in the DACS step (docs/method.md §17.1) on generated data with the tiny HRDA of tests/helpers/training.py.

* ``UDA.MIC.ENABLED False`` is the step without MIC: with MIC on, the first iteration's source / mix losses
  are bit-identical and the RNG streams when MIC starts are exactly those at the end of the MIC-free step (MIC
  runs after the mixed backward and nothing after it draws); no ``loss_masked_*`` term without MIC;
* a MIC run (in-process, and through ``tools/train_net.py``: slow) logs finite ``loss_masked_sem_seg`` /
  ``loss_masked_sem_seg_hr`` in metrics.json, the total loss includes them, the debug panel gets the masked row;
* an interrupted MIC run resumes bit-exactly (student, teacher, optimizer, scheduler, losses; slow);
* MIC sees the DACS pseudo-labels and the weights after the margin mask; ``separate`` mode and bf16 AMP (slow) run.
"""
import json
import math

import pytest
import torch
from detectron2.engine import HookBase
from PIL import Image

from hrda_d2.uda import MaskedImageConsistency
from hrda_d2.utils.rng import get_rng_states
from tests.helpers.training import (
    StopAfter, StopTraining, assert_same_training_state, build_trainer, cli_opts, final_state, loss_history,
    make_cfg, release, run_cli, train)

# MIC with 8 px blocks on the 64 px crops; pseudo-label threshold 0 so that the untrained teacher's
# pseudo-labels get a weight > 0 (with 0.968 the confident fraction, hence the target MIC loss, is 0 at first)
DACS = ["UDA.FD.LAMBDA", "0.005", "UDA.PSEUDO_THRESHOLD", "0.0"]
MIC_ON = DACS + ["UDA.MIC.ENABLED", "True", "UDA.MIC.BLOCK_SIZE", "8"]
QUIET = ["TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "SOLVER.CHECKPOINT_PERIOD", "100",
         "UDA.DEBUG_IMG_INTERVAL", "0"]
MASKED_TERMS = {"loss_masked_sem_seg", "loss_masked_sem_seg_hr"}


def _same_rng_states(a, b) -> bool:
    return (a["python"] == b["python"] and torch.equal(a["torch"], b["torch"])
            and a["numpy"][0] == b["numpy"][0] and torch.equal(a["numpy"][1], b["numpy"][1])
            and a["numpy"][2:] == b["numpy"][2:])


class RecordRngAfterStep(HookBase):
    def __init__(self):
        self.states = {}

    def after_step(self):
        self.states[self.trainer.iter] = get_rng_states()


class RecordingMIC(MaskedImageConsistency):
    """The step's MIC, recording the RNG states at its start and the pseudo weights it is given."""

    def __init__(self, cfg, step):
        super().__init__(cfg)
        self.step, self.calls = step, []

    def masked_batch(self, src_images, src_labels, trg_images, pseudo_label, pseudo_weight):
        self.calls.append({"rng": get_rng_states(), "pseudo_weight": pseudo_weight.clone(), "iter": self.step.iter})
        return super().masked_batch(src_images, src_labels, trg_images, pseudo_label, pseudo_weight)


def _record_mic_calls(trainer):
    """Replace the step's MIC by a :class:`RecordingMIC` of the same config; returns its list of calls."""
    step = trainer.uda_step
    step.mic = RecordingMIC(trainer.cfg, step)
    return step.mic.calls


def test_mic_disabled_is_the_step_without_mic(data_root, tmp_path):
    plain_cfg = make_cfg(tmp_path / "plain", "SOLVER.MAX_ITER", "1", *QUIET, *DACS)
    plain = build_trainer(plain_cfg)
    assert plain.uda_step.mic is None
    plain.resume_or_load(resume=False)
    recorder = RecordRngAfterStep()
    plain.register_hooks([recorder])
    plain.train()
    plain_losses = loss_history(plain)
    release(plain)
    assert not any(name.startswith("loss_masked") for name in plain_losses)

    mic = build_trainer(make_cfg(tmp_path / "mic", "SOLVER.MAX_ITER", "1", *QUIET, *MIC_ON))
    mic.resume_or_load(resume=False)
    calls = _record_mic_calls(mic)
    mic.train()
    mic_losses = loss_history(mic)
    release(mic)
    assert MASKED_TERMS <= set(mic_losses) and len(calls) == 1
    for name, values in plain_losses.items():
        if name != "total_loss":
            assert mic_losses[name][0] == values[0], name  # bit-identical up to the MIC block
    assert mic_losses["total_loss"][0] == pytest.approx(
        plain_losses["total_loss"][0] + sum(mic_losses[k][0] for k in MASKED_TERMS), rel=1e-6)
    assert _same_rng_states(calls[0]["rng"], recorder.states[0])


def _assert_finite_masked_terms_in_metrics_json(out, iteration):
    with open(out / "metrics.json") as f:
        records = [json.loads(line) for line in f if line.strip()]
    last = [r for r in records if "total_loss" in r][-1]
    assert last["iteration"] == iteration
    for name in MASKED_TERMS | {"loss_src_sem_seg", "loss_mix_sem_seg", "total_loss"}:
        assert math.isfinite(last[name]), name
    assert 0 < last["loss_masked_sem_seg"] < 10 and 0 <= last["masked_acc_sem_seg"] <= 100


@pytest.mark.slow  # ~50 s on 2 busy cores, nearly all of it the subprocess start
def test_train_net_with_mic_logs_finite_masked_losses(data_root, tmp_path):
    out = tmp_path / "out"
    run_cli(cli_opts(out, "SOLVER.MAX_ITER", "1", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()",
                     "SOLVER.CHECKPOINT_PERIOD", "100", "UDA.DEBUG_IMG_INTERVAL", "0", *MIC_ON), data_root)
    _assert_finite_masked_terms_in_metrics_json(out, 0)


def test_mic_uses_the_dacs_pseudo_weights_after_the_margin_mask(data_root, tmp_path):
    trainer = build_trainer(make_cfg(tmp_path, "SOLVER.MAX_ITER", "1", *QUIET, *MIC_ON, "UDA.DEBUG_IMG_INTERVAL", "1"))
    trainer.resume_or_load(resume=False)
    calls = _record_mic_calls(trainer)
    trainer.train()
    release(trainer)
    # the debug panel of iteration 0 has a fourth row (masked image, label, prediction) below the HRDA rows
    panel = Image.open(tmp_path / "debug" / "000001_0.png")
    hrda_rows = 3
    assert panel.height == (hrda_rows + 1) * (64 + 14)  # 64 px tiles under a 14 px title strip
    weight = calls[0]["pseudo_weight"]
    # the margins of SMALL_OPTS ([2, 8, 2, 2] on the 64 x 128 mask) zero some rows / columns of some crops,
    # the rest is the confident fraction; without the margin mask the weight would be one constant
    assert weight.shape == (2, 64, 64) and bool((weight[:, :2] == 0).all()) and bool((weight[:, -8:] == 0).all())
    assert set(weight.unique().tolist()) - {0.0} == {float(weight.max())}


@pytest.mark.parametrize("opts", [
    ["UDA.MIC.MODE", "separate", "INPUT.TARGET.PSEUDO_MARGINS", "[]"],  # the CS -> ACDC / Dark Zurich setting
    # the masked forward under autocast; slow: the default suite's bf16 DACS step is
    # tests/engine/test_dacs_training.py::test_bfloat16_autocast_runs_the_dacs_step
    pytest.param(["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "bfloat16"], marks=pytest.mark.slow),
], ids=["separate", "bfloat16"])
def test_other_settings_run(data_root, tmp_path, opts):
    trainer = train(make_cfg(tmp_path, "SOLVER.MAX_ITER", "1", *QUIET, *MIC_ON, *opts))
    history = loss_history(trainer)
    release(trainer)
    assert all(math.isfinite(history[name][0]) for name in MASKED_TERMS)


RESUME_ITERS = 4
RESUME_OPTS = ["SOLVER.MAX_ITER", str(RESUME_ITERS), "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()",
               "SOLVER.CHECKPOINT_PERIOD", "2", "UDA.DEBUG_IMG_INTERVAL", "0", *MIC_ON]


@pytest.mark.slow  # a bit-exact resume; the default suite's is tests/engine/test_resume.py::test_resume_is_bit_exact[1]
def test_mic_resume_is_bit_exact(data_root, tmp_path):
    reference = train(make_cfg(tmp_path / "straight", *RESUME_OPTS))
    expected, expected_losses = final_state(reference), loss_history(reference)
    release(reference)
    assert MASKED_TERMS <= set(expected_losses)
    _assert_finite_masked_terms_in_metrics_json(tmp_path / "straight", RESUME_ITERS - 1)

    cfg = make_cfg(tmp_path / "resumed", *RESUME_OPTS)
    first = build_trainer(cfg)
    first.resume_or_load(resume=False)
    first.register_hooks([StopAfter(RESUME_ITERS // 2)])
    with pytest.raises(StopTraining):
        first.train()
    release(first)
    second = build_trainer(cfg, seed=12345)  # RNG streams must come from the checkpoint
    second.resume_or_load(resume=True)
    assert second.start_iter == RESUME_ITERS // 2
    second.train()
    state, losses = final_state(second), loss_history(second)
    release(second)
    assert_same_training_state(state, expected)
    for name, values in losses.items():
        assert values == {it: expected_losses[name][it] for it in range(RESUME_ITERS // 2, RESUME_ITERS)}, name
