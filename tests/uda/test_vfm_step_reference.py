"""One VFM-UDA training iteration of hrda_d2's ``VFMUDAStepTrainer`` against ONE ITERATION OF THE ORIGINAL
``UDAVITGeneric.training_step`` (tests/fixtures/vfm_uda_step_reference, docs/method.md §22).

The fixture holds what the original drew and computed for two 64 px source / target images with the generated
ViT-S/14 weights of tests/fixtures/vfm_uda_reference (README.md there and here). The step here runs on the same
inputs, with the original's recorded random decisions replayed through :meth:`VFMUDAStepTrainer.draw_decisions`
(which also checks that hrda_d2 draws the SAME decisions from the same torch / NumPy seeds), the student built from a
config (VFMViT + VFMLightweightHead, AVG_NON_IGNORE, WarmupLinearLR with layer decay) and the converted Lightning
checkpoint. Compared: every decision, the augmented / mixed images, pseudo-labels and weights, the three loss terms,
the gradients before the optimizer step, the student after it, the lrs, the EMA teacher.

Tolerances reached on CPU float32 (asserted with margin; README.md): decisions, flipped labels, class masks, the
augmented / mixed images, the teacher's flip-averaged probabilities, pseudo-labels and weights, mixed labels and
weights, the token mask and the three loss terms are bit-identical; gradients: the decoder's bit-identical, the
encoder's within 5.5e-7 of their max (per-tensor norms 1.1e-7 relative, the global norm after each backward 6.5e-9),
from the backward of timm's blocks vs. the official ones; the update of the step (norm per tensor) 6.1e-6 relative;
the stored parameters after the step equal, except 0.014 lr on a qkv bias (see the test); EMA teacher <= 3e-8.
"""
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from hrda_d2.checkpoint import convert_checkpoint, load_checkpoint_file
from hrda_d2.solver import build_lr_scheduler, build_optimizer
from tests.fixtures.vfm_uda_reference import make_weights
from tests.helpers.paths import REPO_ROOT
from tests.helpers.vfm_reference import (
    ReplayStep, apply_original_solver, apply_original_step, assert_draws_equal, assert_group_lrs, change_norms,
    gradient_norms, load_step_reference, param_lrs, recorded_decisions, run_one_step, step_batches, vfm_model_cfg,
)

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "vfm_uda_step_reference" / "vfm_uda_step_outputs.npz"
NUM_CLASSES = 7


@pytest.fixture(scope="module")
def ref():
    return load_step_reference(FIXTURE)


def our_name(original: str) -> str:
    """The original's ``network`` parameter name -> hrda_d2's (docs/method.md §19.4)."""
    if original.startswith("encoder."):
        return "backbone.vit." + original[len("encoder."):]
    return "sem_seg_head.head." + original


def step_cfg(settings):
    """VFM-UDA's recipe at the fixture's settings (the original's names in ``settings``)."""
    cfg = vfm_model_cfg(NUM_CLASSES)
    cfg.MODEL.SEM_SEG_HEAD.AVG_NON_IGNORE = True
    cfg.UDA.METHOD = "vfm_uda"
    cfg.UDA.MIC.MASK_TYPE = "tokens"
    apply_original_step(cfg, settings)
    cfg.UDA.VFM.FLIP = "per_image"
    cfg.UDA.VFM.EMA_BUFFERS = True
    return apply_original_solver(cfg, settings)


class LightweightReplayStep(ReplayStep):
    """:class:`ReplayStep` that also records the teacher's flip-averaged probabilities (its pseudo-label forwards
    again: no BatchNorm in this model, so a second pair changes nothing)."""

    def pseudo_labels(self, target01, valid):
        self.seen["pseudo"] = super().pseudo_labels(target01, valid)
        with torch.no_grad():  # the flip-averaged probabilities, from the teacher left in pseudo-label mode
            images = self.normalize(target01)
            logits = self.teacher.generate_pseudo_label(images)
            flipped = self.teacher.generate_pseudo_label(images.flip(-1)).flip(-1)
            self.seen["teacher_probs"] = (logits.softmax(1) + flipped.softmax(1)) / 2
        return self.seen["pseudo"]


@pytest.fixture(scope="module")
def run(ref, tmp_path_factory):
    """hrda_d2's iteration on the fixture's inputs, seeded as the original (torch and NumPy), decisions replayed."""
    settings = ref["settings"]
    cfg = step_cfg(settings)
    path = tmp_path_factory.mktemp("vfm_step") / "vfm_uda.ckpt"
    torch.save(make_weights.lightning_checkpoint(NUM_CLASSES), path)
    converted = convert_checkpoint(load_checkpoint_file(path), source=str(path))
    with torch.device("cpu"):
        student, teacher = build_model(cfg), build_model(cfg)
    student.load_state_dict(converted.state_dict, strict=True)
    student.train()
    optimizer = build_optimizer(cfg, student)
    scheduler = build_lr_scheduler(cfg, optimizer)
    lrs = param_lrs(optimizer)
    step = LightweightReplayStep(cfg, model=student, data_loader=iter([step_batches(ref)]), optimizer=optimizer,
                                 teacher=teacher, recorded=recorded_decisions(ref, torch.from_numpy(ref["token_mask"])))
    lrs_after = run_one_step(step, settings["seed"], optimizer, scheduler)
    return step, lrs, lrs_after


def test_same_seed_draws_the_originals_decisions(ref, run):
    step = run[0]
    drawn = step.seen["drawn"]
    assert_draws_equal(drawn, step.recorded)
    assert torch.equal(drawn.mask, torch.from_numpy(ref["token_mask_draws"] < ref["settings"]["token_mask_ratio"])
                       .view_as(drawn.mask))


def test_augmented_and_mixed_batches_equal_the_original(ref, run):
    seen = run[0].seen
    batch = seen["batch"]
    assert torch.equal(batch.source_labels, torch.from_numpy(ref["source_label_flipped"]))
    assert torch.equal(batch.target_images, torch.from_numpy(ref["target_image_flipped"]))
    source_aug, _, mixed_aug, masked_aug = seen["augmented"]
    images, labels, weight = seen["mixed"]
    assert torch.equal(source_aug, torch.from_numpy(ref["source_aug_image"]))
    assert torch.equal(images, torch.from_numpy(ref["mixed_image"]))
    assert torch.equal(masked_aug, torch.from_numpy(ref["masked_aug_image"]))
    assert torch.equal(labels, torch.from_numpy(ref["mixed_label"]))
    assert torch.equal(weight, torch.from_numpy(ref["mixed_weight"]))


def test_pseudo_labels_and_weights_equal_the_original(ref, run):
    pseudo = run[0].seen["pseudo"]
    assert torch.equal(pseudo.label, torch.from_numpy(ref["pseudo_label"]))
    assert torch.equal(pseudo.weight, torch.from_numpy(ref["pseudo_weight"]))
    assert 0 < float(pseudo.confident_fraction) < 1
    assert torch.equal(run[0].seen["teacher_probs"], torch.from_numpy(ref["teacher_probs"]))


def test_loss_terms_equal_the_original(ref, run):
    losses = run[0].seen["losses"]
    assert sorted(losses) == ["loss_masked_sem_seg", "loss_mix_sem_seg", "loss_src_sem_seg"], sorted(losses)
    for ours, original in (("loss_src_sem_seg", "train_loss_source"), ("loss_mix_sem_seg", "train_loss_mix"),
                           ("loss_masked_sem_seg", "loss_masked")):
        assert losses[ours] == pytest.approx(float(ref[original]), rel=1e-6), ours  # reached: equal


def test_gradients_before_the_step_equal_the_original(ref, run):
    grads = run[0].seen["grads"]
    _, ours = gradient_norms(ref, grads, our_name)
    np.testing.assert_allclose(ours, ref["grad_norms"], rtol=1e-5, atol=1e-12)  # reached 1.1e-7
    # the global norm after each of the three backward passes (source, mixed, masked): reached 6.5e-9
    np.testing.assert_allclose(run[0].seen["grad_norm_after_backward"], ref["grad_norm_after_backward"], rtol=1e-6)
    for key in ref:
        if key.startswith("grad/"):
            expected = torch.from_numpy(ref[key])
            diff = (grads[our_name(key[5:])] - expected).abs().max() / expected.abs().max()
            assert diff < 1e-5, (key, float(diff))  # reached: 0 (head), <= 5.5e-7 (encoder)


def test_lrs_student_after_the_step_and_ema_teacher_equal_the_original(ref, run):
    step, lrs, lrs_after = run
    assert_group_lrs(ref, lrs, lrs_after, our_name)
    before = step.seen["before"]
    student = dict(step.student.named_parameters())
    teacher = dict(step.teacher.named_parameters())
    names = [str(n) for n in ref["param_names"]]
    updates = change_norms(student, before, names, our_name)
    np.testing.assert_allclose(updates, ref["update_norms"], rtol=1e-4, atol=1e-12)  # reached 6.1e-6
    teacher_change = change_norms(teacher, before, names, our_name)
    np.testing.assert_allclose(teacher_change, ref["teacher_change_norms"], rtol=1e-4, atol=1e-12)
    for key in ref:
        if key.startswith("after/"):
            name = our_name(key[6:])
            lr = lrs[name]
            diff = (student[name].detach() - torch.from_numpy(ref[key])).abs().max().item()
            # reached: 0, except 0.014 lr on attn.qkv.bias, whose key part has a zero gradient in exact
            # arithmetic (softmax ignores a shift of every key): Adam's g / (|g| + eps) amplifies rounding noise
            assert diff <= 0.05 * lr, (key, diff, lr)
        if key.startswith("teacher/"):
            diff = (teacher[our_name(key[8:])] - torch.from_numpy(ref[key])).abs().max().item()
            assert diff <= 1e-7, (key, diff)  # reached 3e-8
