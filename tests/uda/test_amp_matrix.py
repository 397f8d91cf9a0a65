"""One step of every method under every ``SOLVER.AMP`` setting, with and without MIC, on a tiny HRDA (CPU).

``SOLVER.AMP`` {off, bfloat16, float16} x ``UDA.METHOD`` {dacs, advseg, minent, source_only, target_only} x
``UDA.MIC.ENABLED`` {off, on} (MIC is refused for source_only / target_only), each built as ``HRDATrainer`` builds
it (student, EMA teacher, ImageNet model, discriminator and the optimizers over them; ``build_uda_step``):

* a normal step (float16: initial scale 1; the random-init tiny HRDA's MIC gradients reach ~260, so the default
  2^16, even 2^8, overflows and the scaler rightly skips): every loss finite, every parameter finite, the student
  (and the discriminator) moved and the optimizers have state;
* float16 with a FORCED overflow (a grad scaler whose initial scale, 2^100, overflows the float16 gradients): the
  scaler backs off, and no optimizer steps: every student, teacher and discriminator parameter is finite and
  unchanged, and the optimizers' states are unchanged (AdvSeg's discriminator Adam included, which used to step
  outside the scaler, issue 24 C).

The default suite runs float16 AdvSeg (normal and overflow); the whole matrix (about 60 s on 2 idle cores) is slow.
"""
import copy
import random

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from hrda_d2.solver import build_optimizer
from hrda_d2.uda import FCDiscriminator, build_uda_step, uses_discriminator, uses_imnet_model, uses_teacher
from hrda_d2.uda.advseg_step import build_discriminator_optimizer
from tests.helpers.step_inputs import synthetic_pairs
from tests.helpers.tiny_configs import small_input_hrda_cfg

AMP = {"off": {}, "bfloat16": {"SOLVER.AMP.ENABLED": True, "SOLVER.AMP.DTYPE": "bfloat16"},
       "float16": {"SOLVER.AMP.ENABLED": True, "SOLVER.AMP.DTYPE": "float16"}}
METHODS = {"dacs": (False, True), "advseg": (False, True), "minent": (False, True), "source_only": (False,),
           "target_only": (False,)}
OVERFLOW_SCALE = 2.0 ** 100
NORMAL_SCALE = 1.0
DEFAULT_SUITE = {("float16", "advseg", False)}


def cases(overflow):
    for amp in (("float16",) if overflow else AMP):
        for method, mics in METHODS.items():
            for mic in mics:
                marks = () if (amp, method, mic) in DEFAULT_SUITE else (pytest.mark.slow,)
                yield pytest.param(amp, method, mic, marks=marks, id=f"{amp}-{method}-{'mic' if mic else 'plain'}")


def build(amp, method, mic):
    """The step of the case and its models, as HRDATrainer builds them (the teacher a copy of the student)."""
    cfg = small_input_hrda_cfg(**{"UDA.METHOD": method, "UDA.MIC.ENABLED": mic, "UDA.MIC.BLOCK_SIZE": 16,
                                  "UDA.PSEUDO_THRESHOLD": 0.0, "SOLVER.METRICS_PERIOD": 1, **AMP[amp]})
    torch.manual_seed(0)
    student = build_model(cfg).train()
    models = {"student": student}
    if uses_teacher(cfg):
        models["teacher"] = copy.deepcopy(student)
    extra = {}
    if uses_discriminator(cfg):
        models["discriminator"] = FCDiscriminator(19, 8)
        extra["discriminator"] = models["discriminator"]
        extra["discriminator_optimizer"] = build_discriminator_optimizer(cfg, models["discriminator"])
    optimizer = build_optimizer(cfg, student, {"discriminator": extra["discriminator"]} if extra else None)
    step = build_uda_step(cfg, student, synthetic_pairs(torch.Generator().manual_seed(0)), optimizer,
                          teacher=models.get("teacher"), imnet_model=build_model(cfg) if uses_imnet_model(cfg) else None,
                          **extra)
    return step, models


def parameters(models):
    return {f"{name}.{k}": p.detach().clone() for name, model in models.items() for k, p in model.named_parameters()}


def optimizer_states(step):
    return [copy.deepcopy(optimizer.state_dict()["state"]) for optimizer in step.optimizers]


def same_states(a, b):
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(x[p].keys() == y[p].keys() and all(
            torch.equal(torch.as_tensor(x[p][k]), torch.as_tensor(y[p][k])) for k in x[p]) for p in x)
        for x, y in zip(a, b))


def run_one_step(step):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    step.iter = 0
    with EventStorage(0) as storage:
        step.run_step()
    return {k: v[0] for k, v in storage.latest().items() if k.startswith("loss_") or k == "total_loss"}


@pytest.mark.parametrize("amp,method,mic", list(cases(overflow=False)))
def test_one_step_moves_every_trained_model(amp, method, mic):
    step, models = build(amp, method, mic)
    if step.grad_scaler is not None:  # float16: a scale that does not overflow (random-init MIC gradients reach
        step.grad_scaler = torch.amp.GradScaler("cpu", init_scale=NORMAL_SCALE)  # ~260: x 2^8 overflows float16)
    before = parameters(models)
    losses = run_one_step(step)
    assert losses and all(np.isfinite(v) for v in losses.values()), losses
    after = parameters(models)
    assert [k for k, v in after.items() if not torch.isfinite(v).all()] == []
    for name in ("student", "discriminator"):
        if name in models:
            assert any(not torch.equal(v, before[k]) for k, v in after.items() if k.startswith(name + ".")), name
    assert all(state for state in optimizer_states(step)), "an optimizer did not step"
    if step.grad_scaler is not None:
        assert step.grad_scaler.get_scale() == NORMAL_SCALE  # no overflow, no back-off


@pytest.mark.parametrize("amp,method,mic", list(cases(overflow=True)))
def test_a_float16_overflow_steps_no_optimizer(amp, method, mic):
    step, models = build(amp, method, mic)
    step.grad_scaler = torch.amp.GradScaler("cpu", init_scale=OVERFLOW_SCALE)
    before, states = parameters(models), optimizer_states(step)
    run_one_step(step)
    assert step.grad_scaler.get_scale() < OVERFLOW_SCALE  # the scaler saw the overflow and backed off
    after = parameters(models)
    assert [k for k, v in after.items() if not torch.isfinite(v).all()] == []
    assert [k for k, v in after.items() if not torch.equal(v, before[k])] == []
    assert same_states(optimizer_states(step), states)
