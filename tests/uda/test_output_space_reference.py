"""One AdvSeg and one MinEnt iteration against the ORIGINAL implementation (tests/fixtures/dlv2_reference README,
items 6 and 7): plain DeepLabV2 (iterations 0 and 20000) and HRDA on DeepLabV2 (forced detail crops), SGD at the
original's learning rate, the discriminator's Adam at its poly rate. Compared: every loss term, the discriminator's
outputs, gradient norms and sampled gradients after the step, sampled parameters after the step, BatchNorm
statistics."""
from typing import List

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from hrda_d2.checkpoint import load_model_weights
from hrda_d2.modeling.meta_arch import hrda as hrda_module
from hrda_d2.solver import build_optimizer
from hrda_d2.uda import AdvSegStepTrainer, FCDiscriminator, MinEntStepTrainer
from hrda_d2.uda.advseg_step import build_discriminator_optimizer
from tests.helpers.dlv2_reference import batches, dlv2_cfg, our_name

LOSS_TOL = 1e-4
GRAD_NORM_TOL = 1e-3
SOURCE_BOX, TARGET_BOX = (40, 168, 72, 200), (128, 256, 0, 128)  # the fixture's forced detail crops, in call order
TERMS = {"loss_src_sem_seg": "decode.loss_seg", "loss_src_sem_seg_hr": "decode.hr.loss_seg",
         "loss_adv_trg": "G_trg.loss.main", "loss_disc_src": "D_src.loss.main", "loss_disc_trg": "D_trg.loss.main",
         "loss_ent_trg": "ent.loss.main"}


def run_step(method, hrda, iteration, dlv2_originals, dlv2_converted, io, ref, monkeypatch):
    case = ref["uda_steps"][f"{method}_{'hrda' if hrda else 'plain'}_it{iteration}"]
    cfg = dlv2_cfg(hrda=hrda, **{"SOLVER.OPTIMIZER": "SGD", "SOLVER.BASE_LR": case["sgd_lr"],
                                 "SOLVER.WEIGHT_DECAY": 5e-4, "SOLVER.HEAD_LR_MULTIPLIER": 1.0,
                                 "SOLVER.BACKBONE_NORM_DECAY_MULTIPLIER": 1.0, "UDA.METHOD": method})
    modules = torch.nn.Module()  # holds the trained modules under the names ``student`` / ``discriminator``
    model = build_model(cfg)
    load_model_weights(model, str(dlv2_converted["hrda" if hrda else "plain"]))
    model.train()
    boxes: List = [SOURCE_BOX, TARGET_BOX]
    if hrda:
        monkeypatch.setattr(hrda_module, "random_crop_box", lambda *args: boxes.pop(0))
    source, target = batches(io, hrda)
    loader = iter([(source, target)])
    d_outputs = []
    if method == "advseg":
        original = torch.load(dlv2_originals[f"{'hrda_' if hrda else ''}dlv2red_advseg_checkpoint.pth"],
                              map_location="cpu", weights_only=False)["state_dict"]
        discriminator = FCDiscriminator(19)
        discriminator.load_state_dict({k[len("model_D.main."):]: v for k, v in original.items()
                                       if k.startswith("model_D.main.")})
        discriminator.register_forward_hook(lambda m, i, o: d_outputs.append(o.detach().clone()))
        optimizer = build_optimizer(cfg, model, {"discriminator": discriminator})
        step = AdvSegStepTrainer(cfg, model=model, data_loader=loader, optimizer=optimizer,
                                 discriminator=discriminator,
                                 discriminator_optimizer=build_discriminator_optimizer(cfg, discriminator))
        modules.discriminator = discriminator
    else:
        optimizer = build_optimizer(cfg, model)
        step = MinEntStepTrainer(cfg, model=model, data_loader=loader, optimizer=optimizer)
    modules.student = model
    step.metrics_period = 1
    step.iter = iteration
    modules.before = {name: p.detach().clone() for name, p in modules.named_parameters()}
    with EventStorage(iteration) as storage:
        step.run_step()
    if hrda:
        assert boxes == []  # both crops drawn: source first, then target
    latest = {k: v[0] for k, v in storage.latest().items()}
    return case, modules, latest, d_outputs, step


# default suite: AdvSeg at iteration 20000 (the SGD-moves-the-discriminator quirk), AdvSeg + HRDA, MinEnt + HRDA
CASES = [pytest.param("advseg", False, 0, marks=pytest.mark.slow), ("advseg", False, 20000), ("advseg", True, 0),
         pytest.param("minent", False, 0, marks=pytest.mark.slow), ("minent", True, 0)]


@pytest.mark.parametrize("method,hrda,iteration", CASES)
def test_one_iteration_matches_original(method, hrda, iteration, dlv2_originals, dlv2_converted, dlv2_io, dlv2_ref,
                                        monkeypatch):
    case, modules, latest, d_outputs, step = run_step(method, hrda, iteration, dlv2_originals, dlv2_converted,
                                                      dlv2_io, dlv2_ref, monkeypatch)
    prefix = f"{method}_{'hrda' if hrda else 'plain'}_it{iteration}__"
    io = dlv2_io
    # loss terms
    for ours, theirs in TERMS.items():
        if theirs in case["log_vars"]:
            assert latest[ours] == pytest.approx(case["log_vars"][theirs], rel=LOSS_TOL), ours
    expected_terms = {o for o, t in TERMS.items() if t in case["log_vars"]}
    assert {k for k in latest if k.startswith("loss_")} == expected_terms
    # learning rates
    assert step.optimizer.param_groups[0]["lr"] == pytest.approx(case["sgd_lr"], rel=1e-12)
    if method == "advseg":
        assert step.discriminator_optimizer.param_groups[0]["lr"] == pytest.approx(case["d_lr"]["main"], rel=1e-9)
        for i, out in enumerate(d_outputs):  # generator call, discriminator source call, target call
            expected = torch.from_numpy(io[f"{prefix}d_out_{i}"])
            assert (out - expected).abs().max().item() <= 1e-4 * expected.abs().max().item(), i
        assert len(d_outputs) == 3
    # gradients after the step (nothing zeroes them afterwards)
    params = dict(modules.named_parameters())
    groups = {"model.backbone": "student.backbone.", "model.decode_head": "student.sem_seg_head.",
              "model_D": "discriminator."}
    for theirs, ours in groups.items():
        if theirs in case["grad_group_norms"]:
            norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for n, p in params.items() if n.startswith(ours)))
            assert norm.item() == pytest.approx(case["grad_group_norms"][theirs], rel=GRAD_NORM_TOL), theirs
    sampled = sorted(k[len(prefix) + len("grad__"):] for k in io if k.startswith(prefix + "grad__"))
    assert sampled
    for name in sampled:
        param = params[our_name(name)]
        idx = torch.from_numpy(io[f"{prefix}idx__{name}"]).long()
        grad, expected = param.grad.reshape(-1)[idx].double(), torch.from_numpy(io[f"{prefix}grad__{name}"]).double()
        cosine = (grad @ expected / (grad.norm() * expected.norm())).item()
        assert cosine >= 0.9999, (name, cosine)
        after, expected_after = param.detach().reshape(-1)[idx], torch.from_numpy(io[f"{prefix}after__{name}"])
        update = (expected_after - modules.before[our_name(name)].reshape(-1)[idx]).abs().max().item()
        # float32: 1e-6, plus the gradients' own float32 difference (~1e-3 relative) times the SGD lr
        wrong = ((after - expected_after).abs() > 1e-6 + 2e-3 * update).double().mean().item()
        # a discriminator element whose gradient is ~0 moves by Adam's lr * sign(g) either way (README)
        assert wrong <= (0.005 if name.startswith("D.") else 0.0), (name, wrong)
    bn = modules.student.backbone.stem.conv1.norm
    for stat in ("running_mean", "running_var"):
        expected = torch.from_numpy(io[f"{prefix}bn_after__stem.1.{stat}"])
        assert (getattr(bn, stat) - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())


@pytest.mark.slow
def test_sgd_moves_the_discriminator_as_the_original(dlv2_originals, dlv2_converted, dlv2_io, dlv2_ref, monkeypatch):
    """At iteration 20000 the discriminator's update is mostly SGD's (lr 0.00125 x |g| up to ~3.9) plus Adam's
    5.4e-5: without the discriminator in the main optimizer (the original's quirk, §18.4) it would not match."""
    case, modules, _, _, _ = run_step("advseg", False, 20000, dlv2_originals, dlv2_converted, dlv2_io, dlv2_ref,
                                      monkeypatch)
    name = "D.classifier.weight"
    before = torch.load(dlv2_originals["dlv2red_advseg_checkpoint.pth"], map_location="cpu",
                        weights_only=False)["state_dict"]["model_D.main.classifier.weight"].reshape(-1)
    idx = torch.from_numpy(dlv2_io[f"advseg_plain_it20000__idx__{name}"]).long()
    moved = (modules.discriminator.classifier.weight.detach().reshape(-1)[idx] - before[idx]).abs().max().item()
    assert moved > 1e-3  # far more than Adam's ~5.4e-5 alone
