"""One gradient all-reduce per DACS iteration, and the step's named stages (hrda_d2/uda/step_base.py).

In one process with a world-size-1 gloo group (the DDP code path, reducer and communication hook included) on a
tiny HRDA: the passes before the last one run under ``no_sync``, so a DACS iteration makes 2 backward passes (3
with MIC, 1 source-only) and exactly 1 gradient sync round; the gradients after the step equal those of the same
step on the plain, unwrapped model bit for bit. The stages are reported to a listener, in the order of
docs/method.md §7.2, and appear as ``dacs/<name>`` profiler ranges. The 2-process comparison with the previous
behaviour (every backward synchronised) is tests/uda/test_ddp_gradient_sync.py.
"""
import random

import numpy as np
import pytest
import torch
import torch.distributed as dist
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch.nn.parallel import DistributedDataParallel

from benchmarking.ddp import AllReduceCounter, BackwardCounter
from hrda_d2.uda import DACSStepTrainer, SupervisedStepTrainer
from tests.helpers.step_inputs import RecordStages, synthetic_pairs
from tests.helpers.tiny_configs import small_input_hrda_cfg

SETTINGS = {  # name -> config overrides
    "source_only": {"UDA.METHOD": "source_only"},
    "dacs": {},
    "mic": {"UDA.MIC.ENABLED": True, "UDA.MIC.BLOCK_SIZE": 16},
}
MIC_STAGES = ["ema", "source", "pseudo_labels", "mix", "mixed", "masked", "optimizer"]


def run_one_step(setting, ddp, listener=None, profile=False):
    """Iteration 0 of the step of ``setting`` from fixed seeds: (student gradients, counters, profiler names)."""
    cfg = small_input_hrda_cfg(**{"UDA.PSEUDO_THRESHOLD": 0.0, "SOLVER.METRICS_PERIOD": 1, **SETTINGS[setting]})
    torch.manual_seed(0)
    student = build_model(cfg).train()
    model = DistributedDataParallel(student, broadcast_buffers=False) if ddp else student
    common = dict(model=model, data_loader=synthetic_pairs(torch.Generator().manual_seed(0)),
                  optimizer=torch.optim.SGD(student.parameters(), lr=0.01), stage_listener=listener)
    if cfg.UDA.METHOD != "source_only":
        step = DACSStepTrainer(cfg, teacher=build_model(cfg), imnet_model=build_model(cfg), **common)
    else:  # source-only: the supervised step on the source stream
        step = SupervisedStepTrainer(cfg, **common)
    counters = (AllReduceCounter().attach(model), BackwardCounter(student)) if ddp else None
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    names = set()
    with EventStorage(0):
        step.iter = 0
        if profile:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                step.run_step()
            names = {event.name for event in prof.events()}
        else:
            step.run_step()
    grads = {k: p.grad.clone() for k, p in student.named_parameters()}
    return grads, counters, names


@pytest.fixture(scope="module")
def plain_mic_step():
    """The MIC setting's step on the plain model, its stages recorded and profiled: (gradients, events, names)."""
    listener = RecordStages()
    grads, _, names = run_one_step("mic", ddp=False, listener=listener, profile=True)
    return grads, listener.events, names


@pytest.fixture
def single_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("setting,passes", [("source_only", 1), ("dacs", 2), ("mic", 3)])
def test_one_gradient_sync_round_per_iteration(single_process_group, plain_mic_step, setting, passes):
    grads, (allreduces, backwards), _ = run_one_step(setting, ddp=True)
    assert backwards.backward_passes == passes
    assert allreduces.sync_rounds == 1  # every backward synchronised would give `passes` rounds
    assert allreduces.bucket_allreduces >= 1
    assert all(g is not None for g in grads.values())
    if setting == "mic":  # the synchronised sum over the passes is the plain model's sum (world size 1)
        plain = plain_mic_step[0]
        assert [k for k in plain if not torch.equal(plain[k], grads[k])] == []


def test_stages_are_named_in_the_order_of_the_method(plain_mic_step):
    _, events, names = plain_mic_step
    assert events == [(event, name) for name in MIC_STAGES for event in ("started", "finished")]
    assert {f"dacs/{name}" for name in MIC_STAGES} <= names
