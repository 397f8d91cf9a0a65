"""MIC on AdvSeg / MinEnt against the ORIGINAL MIC code (tests/fixtures/mic_teacher_reference): two consecutive
iterations (MIC's own EMA teacher: a copy of the student at iteration 0, the EMA at iteration 1) of plain DeepLabV2
on the DeepLabV2 reference's weights and 128 x 128 inputs, for ``separatetrg`` (AdvSeg, MinEnt) and
``separatetrgaug`` (AdvSeg; seeds without colour jitter, with blur). Compared per iteration: every loss term, the
teacher's pseudo-labels and confident fraction, the block mask, gradient norms, sampled gradients and parameters
after the step (student, discriminator, MIC's teacher), BatchNorm statistics.

Tolerances (measured on this 2-core CPU, README of the fixture): with the fixture's 2 threads the ``separatetrg``
cases match bit for bit at both iterations, ``separatetrgaug`` to 1e-7 at iteration 0 (our Gaussian blur against
kornia 0.5.8's) and, at iteration 1, 2.4e-4 (masked loss), 7.7e-4 (backbone gradient norm), sampled-gradient
cosine 0.99939, parameters within 0.039 x the update. The test runs with the fixture's 2 threads. With another
float32 summation order of the 101-layer backward (1 thread; or, measured 2026-12-06, the same 2 threads on an
AVX2-only AMD EPYC, whose kernels differ from those of the machine that generated the fixture) iteration 0 still
passes (sampled gradients up to 2.5e-3 relative), but at iteration 1, after one step of those differences,
near-tie pseudo-labels flip (13 of 32768 with 1 thread), the stem's sampled gradients reach cosine 0.992-0.993 and
a discriminator loss 1.3e-4 relative: iteration 1 therefore allows cosine 0.99 and 1e-3 on every loss term. A wrong
teacher (not EMA-updated, or re-copied from the student) moves the masked loss at iteration 1 by 7.7e-3 to 4.8e-2
(sanity.json), far outside the masked-loss tolerance below."""
import json
import os
import random

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from hrda_d2.checkpoint import load_model_weights
from hrda_d2.solver import build_optimizer
from hrda_d2.uda import AdvSegStepTrainer, FCDiscriminator, MinEntStepTrainer
from hrda_d2.uda.advseg_step import build_discriminator_optimizer
from tests.helpers.dlv2_reference import batches, dlv2_cfg, our_name
from tests.helpers.paths import MIC_TEACHER_REFERENCE_DIR

# iteration -> (loss terms rel, masked loss rel, gradient norm rel, sampled-gradient cosine, parameter after the
# step: x |update|)
ITERATION_TOL = {0: (1e-4, 1e-4, 1e-3, 0.9999, 5e-3), 1: (1e-3, 1e-3, 1e-2, 0.99, 0.1)}
TERMS = {"loss_src_sem_seg": "decode.loss_seg", "loss_adv_trg": "G_trg.loss.main", "loss_disc_src": "D_src.loss.main",
         "loss_disc_trg": "D_trg.loss.main", "loss_ent_trg": "ent.loss.main"}
MASKED_TERM = ("loss_masked_sem_seg", "decode.loss_seg")  # ours, the original MIC module's (before the prefix)


@pytest.fixture(scope="module")
def mic_ref():
    return json.loads((MIC_TEACHER_REFERENCE_DIR / "mic_teacher_ref.json").read_text())


@pytest.fixture(scope="module")
def mic_io():
    data = np.load(MIC_TEACHER_REFERENCE_DIR / "mic_teacher_outputs.npz")
    return {k: data[k] for k in data.files}


class Recorder:
    """Wraps the step's MIC (public methods only) to keep the teacher's pseudo-labels and the block mask."""

    def __init__(self, mic):
        self.records = {}
        pseudo_labels, masked_batch = mic.pseudo_labels, mic.masked_batch

        def record_pseudo(*args):
            out = pseudo_labels(*args)
            self.records["pseudo"] = out
            return out

        def record_masked(*args):
            out = masked_batch(*args)
            self.records["masked"] = out
            return out

        mic.pseudo_labels, mic.masked_batch = record_pseudo, record_masked


def build_case(case_ref, dlv2_originals, dlv2_converted, dlv2_io):
    method, mode = case_ref["method"], case_ref["mask_mode"]
    uda = case_ref["uda_cfg"]
    cfg = dlv2_cfg(hrda=False, **{
        "SOLVER.OPTIMIZER": "SGD", "SOLVER.BASE_LR": 0.0025, "SOLVER.WEIGHT_DECAY": 5e-4,
        "SOLVER.HEAD_LR_MULTIPLIER": 1.0, "SOLVER.BACKBONE_NORM_DECAY_MULTIPLIER": 1.0, "UDA.METHOD": method,
        "UDA.MIC.ENABLED": True, "UDA.MIC.MODE": mode, "UDA.MIC.BLOCK_SIZE": uda["mask_generator"]["mask_block_size"],
        "UDA.MIC.MASK_RATIO": uda["mask_generator"]["mask_ratio"], "UDA.MIC.LAMBDA": float(uda["mask_lambda"]),
        "UDA.ALPHA": uda["alpha"], "UDA.PSEUDO_THRESHOLD": uda["pseudo_threshold"],
        "UDA.AUG.COLOR_JITTER_STRENGTH": uda["color_jitter_strength"],
        "UDA.AUG.COLOR_JITTER_SKIP_THRESHOLD": uda["color_jitter_probability"],
        "SOLVER.MAX_ITER": uda["max_iters"]})
    modules = torch.nn.Module()
    model = build_model(cfg)
    load_model_weights(model, str(dlv2_converted["plain"]))  # the MinEnt file holds the same model tensors
    model.train()
    teacher = build_model(cfg)
    source, target = batches(dlv2_io, hrda=False)
    loader = iter([(source, target)] * 2)
    common = dict(model=model, data_loader=loader, teacher=teacher)
    if method == "advseg":
        original = torch.load(dlv2_originals["dlv2red_advseg_checkpoint.pth"], map_location="cpu",
                              weights_only=False)["state_dict"]
        discriminator = FCDiscriminator(19)
        discriminator.load_state_dict({k[len("model_D.main."):]: v for k, v in original.items()
                                       if k.startswith("model_D.main.")})
        step = AdvSegStepTrainer(cfg, optimizer=build_optimizer(cfg, model, {"discriminator": discriminator}),
                                 discriminator=discriminator,
                                 discriminator_optimizer=build_discriminator_optimizer(cfg, discriminator), **common)
        modules.discriminator = discriminator
    else:
        step = MinEntStepTrainer(cfg, optimizer=build_optimizer(cfg, model), **common)
    modules.student, modules.teacher = model, teacher
    step.metrics_period = 1
    return step, modules


def compare_sampled(io, prefix, params, before, name, ours, min_cosine, update_tol):
    """Sampled gradient (cosine) and parameter after the step (float32 + ``update_tol`` x the largest update)."""
    idx = torch.from_numpy(io[f"{prefix}idx__{name}"]).long()
    param = params[ours]
    grad, expected = param.grad.reshape(-1)[idx].double(), torch.from_numpy(io[f"{prefix}grad__{name}"]).double()
    cosine = (grad @ expected / (grad.norm() * expected.norm())).item()
    assert cosine >= min_cosine, (name, cosine)
    after, expected_after = param.detach().reshape(-1)[idx], torch.from_numpy(io[f"{prefix}after__{name}"])
    update = (expected_after - before[ours].reshape(-1)[idx]).abs().max().item()
    wrong = ((after - expected_after).abs() > 1e-6 + update_tol * update).double().mean().item()
    assert wrong <= (0.005 if name.startswith("D.") else 0.0), (name, wrong)


# default suite: MIC on AdvSeg and on MinEnt without colour augmentation; the augmented mode (blur) is slow
CASES = ["advseg_trg", "minent_trg", pytest.param("advseg_trgaug", marks=pytest.mark.slow)]


@pytest.fixture
def generation_threads():
    """The fixture's thread count (2) for the test, the suite's (1) restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("HRDA_D2_MIC_REFERENCE_THREADS", "2")))
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("case", CASES)
def test_two_iterations_match_the_original(case, mic_ref, mic_io, dlv2_originals, dlv2_converted, dlv2_io,
                                           generation_threads):
    case_ref = mic_ref["cases"][case]
    step, modules = build_case(case_ref, dlv2_originals, dlv2_converted, dlv2_io)
    recorder = Recorder(step.mic)
    io = mic_io
    for iteration in (0, 1):
        it_ref = case_ref["iterations"][str(iteration)]
        prefix = f"{case}_it{iteration}__"
        loss_tol, masked_tol, grad_norm_tol, min_cosine, update_tol = ITERATION_TOL[iteration]
        seed = it_ref["seed"]
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
        step.iter = iteration
        before = {name: p.detach().clone() for name, p in modules.named_parameters()}
        with EventStorage(iteration) as storage:
            step.run_step()
        latest = {k: v[0] for k, v in storage.latest().items()}
        log_vars = it_ref["log_vars"]
        for ours, theirs in TERMS.items():
            if theirs in log_vars:
                assert latest[ours] == pytest.approx(log_vars[theirs], rel=loss_tol), (iteration, ours)
        ours, theirs = MASKED_TERM
        assert latest[ours] == pytest.approx(it_ref["mic_losses"][theirs], rel=masked_tol), iteration
        assert latest["masked_acc_sem_seg"] == pytest.approx(it_ref["mic_acc"]["decode.acc_seg"], abs=0.1)
        # MIC's teacher: pseudo-labels, confident fraction; the block mask
        pseudo, masked = recorder.records["pseudo"], recorder.records["masked"]
        agree = (pseudo.label.numpy() == io[prefix + "pseudo_label"]).mean()
        assert agree >= 0.999, (iteration, agree)
        assert abs(pseudo.confident_fraction.item() - it_ref["pseudo_weight_value"]) <= 8 / pseudo.label.numel()
        assert np.array_equal(masked.mask.numpy().astype(np.uint8), io[prefix + "mask"]), iteration
        # gradients and parameters after the step
        params = dict(modules.named_parameters())
        groups = {"model.backbone": "student.backbone.", "model.decode_head": "student.sem_seg_head.",
                  "model_D": "discriminator."}
        for theirs, ours in groups.items():
            if theirs in it_ref["grad_group_norms"]:
                norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for n, p in params.items()
                                      if n.startswith(ours)))
                assert norm.item() == pytest.approx(it_ref["grad_group_norms"][theirs], rel=grad_norm_tol), theirs
        sampled = sorted(k[len(prefix) + len("grad__"):] for k in io if k.startswith(prefix + "grad__"))
        assert len(sampled) == (7 if case_ref["method"] == "advseg" else 5)
        for name in sampled:
            compare_sampled(io, prefix, params, before, name, our_name(name), min_cosine, update_tol)
        for name in (k[len(prefix) + len("teacher_after__"):] for k in io if k.startswith(prefix + "teacher_after__")):
            idx = torch.from_numpy(io[f"{prefix}idx__{name}"]).long()
            ours = params[our_name(name).replace("student.", "teacher.", 1)].detach().reshape(-1)[idx]
            expected = torch.from_numpy(io[f"{prefix}teacher_after__{name}"])
            assert (ours - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item()), name
        bn = modules.student.backbone.stem.conv1.norm
        for stat in ("running_mean", "running_var"):
            expected = torch.from_numpy(io[f"{prefix}bn_after__stem.1.{stat}"])
            assert (getattr(bn, stat) - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())
