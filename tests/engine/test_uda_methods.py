"""UDA.METHOD advseg / minent / target_only end to end on the generated replicas, with and without HRDA, and
AdvSeg / MinEnt with MIC (its own EMA teacher): tools/train_net.py (finite losses, the method's terms),
--eval-only, and a bit-exact --resume (the discriminator and its Adam, MIC's teacher included)."""
import json

import numpy as np
import pytest
import torch

from hrda_d2.config import uda_method
from tests.helpers.training import (
    StopAfter,
    StopTraining,
    build_trainer,
    clone_state,
    cli_opts,
    differing_keys,
    make_cfg,
    optimizer_tensors,
    release,
    run_cli,
)

TERMS = {
    "advseg": {"loss_src_sem_seg", "loss_adv_trg", "loss_disc_src", "loss_disc_trg"},
    "minent": {"loss_src_sem_seg", "loss_ent_trg"},
    "target_only": {"loss_trg_sem_seg"},
}
MIC_TERMS = {"loss_masked_sem_seg"}
PLAIN = ["MODEL.HRDA.SCALES", "[1.0]"]
MIC = ["UDA.MIC.ENABLED", "True", "UDA.MIC.BLOCK_SIZE", "16"]
# DACS-only settings of the demo config switched off where the method has none
METHOD_OPTS = {"advseg": [], "minent": [], "target_only": ["INPUT.TARGET.CAT_MAX_RATIO", "0.75",
                                                            "INPUT.TARGET.PHOTOMETRIC_DISTORTION", "True"]}
# all slow (two train_net starts each): AdvSeg with HRDA and MinEnt with MIC run in-process in the resume test
# below, AdvSeg and MinEnt iterations against the original in tests/uda/test_output_space_reference.py, the
# target-only oracle trains and evaluates in tests/experiments/test_grid_runs.py (target_only-MiT), and
# train_net.py trains, evaluates and --eval-only evaluates in tests/engine/test_train_net.py
CASES = [pytest.param("advseg", True, marks=pytest.mark.slow), pytest.param("advseg", False, marks=pytest.mark.slow),
         pytest.param("minent", True, marks=pytest.mark.slow), pytest.param("minent", False, marks=pytest.mark.slow),
         pytest.param("target_only", True, marks=pytest.mark.slow),
         pytest.param("target_only", False, marks=pytest.mark.slow)]


def method_opts(method, hrda, mic=False):
    return (["UDA.METHOD", method, "UDA.DEBUG_IMG_INTERVAL", "0"] + METHOD_OPTS[method] + ([] if hrda else PLAIN)
            + (MIC if mic else []))


@pytest.mark.parametrize("method,hrda,mic", [pytest.param(*c.values, False, marks=c.marks) for c in CASES]
                         + [pytest.param("advseg", False, True, marks=pytest.mark.slow),
                            pytest.param("minent", True, True, marks=pytest.mark.slow)])
def test_train_net_trains_and_evaluates_each_method(data_root, tmp_path, method, hrda, mic):
    out = tmp_path / "run"
    opts = method_opts(method, hrda, mic) + ["SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "3",
                                        "TEST.EVAL_PERIOD", "3"]
    run_cli(cli_opts(out, *opts), data_root)
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    trained = [m for m in metrics if "total_loss" in m]  # Detectron2 writes every 20 iterations and the last
    assert trained and trained[-1]["iteration"] == 2
    for m in trained:
        terms = {k for k in m if k.startswith("loss_")}
        # Detectron2 writes the terms only when there are several (else total_loss is the one term)
        expected_terms = TERMS[method] | (MIC_TERMS if mic else set())
        assert expected_terms <= terms or (not terms and hrda is False and method == "target_only"), terms
        assert all(np.isfinite(m[k]) for k in terms | {"total_loss"})
        assert ("masked_pseudo_confident_fraction" in m) == mic
    assert any("sem_seg/mIoU" in m for m in metrics)
    checkpoint = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert ("discriminator" in checkpoint) == (method == "advseg") and ("teacher" in checkpoint) == mic
    assert "imnet_model" not in checkpoint
    result = run_cli(["--eval-only"] + cli_opts(out / "eval", *opts, "MODEL.WEIGHTS", str(out / "model_final.pth")),
                     data_root)
    assert "mIoU" in result.stdout + result.stderr


def training_state(trainer):
    step = trainer.uda_step
    state = {"student": clone_state(trainer.student), "optimizer": optimizer_tensors(step.optimizer.state_dict()),
             "iter": trainer.iter}
    if trainer.teacher is not None:
        state["teacher"] = clone_state(trainer.teacher)
    if trainer.discriminator is not None:
        state["discriminator"] = clone_state(trainer.discriminator)
        state["discriminator_optimizer"] = optimizer_tensors(step.discriminator_optimizer.state_dict())
    return state


@pytest.mark.parametrize("method,hrda,mic", [pytest.param("advseg", True, False),
                                             pytest.param("minent", False, True),
                                             pytest.param("minent", True, False, marks=pytest.mark.slow),
                                             pytest.param("advseg", True, True, marks=pytest.mark.slow),
                                             pytest.param("target_only", False, False, marks=pytest.mark.slow)])
def test_resume_is_bit_exact_for_each_method(data_root, tmp_path, method, hrda, mic):
    opts = method_opts(method, hrda, mic) + ["SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2",
                                             "TEST.EVAL_PERIOD", "0"]
    straight = build_trainer(make_cfg(tmp_path / "straight", *opts))
    assert uda_method(straight.cfg) == method
    assert (straight.teacher is not None) == mic and straight.imnet_model is None
    straight.resume_or_load(resume=False)
    straight.train()
    expected = training_state(straight)
    release(straight)

    cfg = make_cfg(tmp_path / "resumed", *opts)
    first = build_trainer(cfg)
    first.resume_or_load(resume=False)
    first.register_hooks([StopAfter(2)])
    with pytest.raises(StopTraining):
        first.train()
    release(first)
    second = build_trainer(cfg, seed=4321)  # every stream must come from the checkpoint
    second.resume_or_load(resume=True)
    assert second.start_iter == 2
    second.train()
    got = training_state(second)
    release(second)
    assert got["iter"] == expected["iter"]
    for part in expected:
        if part != "iter":
            assert differing_keys(got[part], expected[part]) == [], part
