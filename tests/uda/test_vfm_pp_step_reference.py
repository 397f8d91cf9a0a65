"""One VFM-UDA++ training iteration of hrda_d2's ``VFMUDAStepTrainer`` against ONE ITERATION OF THE ORIGINAL
``UDA.training_step`` (tests/fixtures/vfm_uda_pp_step_reference, docs/method.md §20-§22).

The fixture holds what the original drew and computed for two 64 px source / target images: the narrow ViT-Adapter /
pyramid-head student of tests/fixtures/vfm_uda_pp_reference (width 64, 4 blocks, SPM 16, resized to 224 px), a
narrow frozen DINOv2 with 4 registers for the feature distance (its generated weights stored in the fixture), the
original's distill head at its random init (stored). The step here runs from the recipe's config
(configs/vfm_uda/Base-VFM-UDA-PP.yaml with the fixture's sizes), on the same inputs, with the original's recorded
random decisions replayed through :meth:`VFMUDAStepTrainer.draw_decisions` (which also checks that hrda_d2 draws the
SAME decisions from the same torch / NumPy seeds). Compared: every decision, the augmented / mixed images, the
teacher's probabilities, pseudo-labels and weights, the frozen DINOv2 maps and the projected student maps, the five
loss terms, the gradients after the backward passes, the lrs, the student and the distill head after the step, the
BatchNorm running statistics of student and teacher, the EMA teacher.

Tolerances reached on CPU float32 (asserted with margin; README.md of the fixture): decisions, flipped / augmented /
mixed / masked-pass / feature-distance images, mixed labels and weights, pseudo-labels and weights and the frozen
DINOv2 maps bit-identical; teacher probabilities 2.1e-7; projected student maps 5.3e-7 of their max; the five loss
terms 1.7e-7 relative (the two feature distances equal); gradients per tensor 3.6e-5 relative in norm, stored tensors
4e-6 of their max, the global norm after each backward 6.5e-7; updates 1.4e-5 relative; parameters after the step
within 0.0021 lr; EMA teacher 3e-8; BatchNorm running statistics 2.4e-7, ``num_batches_tracked`` equal (5 / 2).
The exception are the ZERO_GRADIENT biases (below): noise on both sides, checked to be noise.
"""
import ast

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from hrda_d2 import add_hrda_config
from hrda_d2.checkpoint import convert_checkpoint, load_checkpoint_file
from hrda_d2.engine.trainer import HRDATrainer
from hrda_d2.solver import build_lr_scheduler
from tests.fixtures.vfm_uda_pp_step_reference.frozen_weights import frozen_dinov2_state
from tests.helpers.paths import REPO_ROOT
from tests.helpers.vfm_reference import (
    ReplayStep, apply_original_solver, apply_original_step, assert_draws_equal, assert_group_lrs, change_norms,
    declare_narrow_dinov2, gradient_norms, load_step_reference, param_lrs, recorded_decisions, run_one_step,
    step_batches,
)

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "vfm_uda_pp_step_reference" / "vfm_uda_pp_step_outputs.npz"
STUDENT_CKPT = REPO_ROOT / "tests" / "fixtures" / "vfm_uda_pp_reference" / "vfm_uda_pp_lightning.ckpt"
RECIPE = REPO_ROOT / "configs" / "vfm_uda" / "Base-VFM-UDA-PP.yaml"
_TRUNK = ("encoder.cls_token", "encoder.pos_embed", "encoder.patch_embed.", "encoder.blocks.")
# biases added right before a train-mode BatchNorm (directly, or through a sum that reaches it unchanged): the batch
# mean removes them, so their gradient is 0 in exact arithmetic and both codes hold rounding noise (<= 3e-8, against
# a median gradient norm of 3e-3); Adam's first step ``g / (|g| + eps)`` turns that noise into updates of up to lr
ZERO_GRADIENT = ("encoder.spm.fc1.bias", "encoder.up.bias", "upscale.smooth_conv1.bias", "upscale.smooth_conv2.bias",
                 "upscale.smooth_conv3.bias")


@pytest.fixture(scope="module")
def ref():
    return load_step_reference(FIXTURE)


@pytest.fixture(scope="module", autouse=True)
def narrow_dinov2(ref):
    """The fixture's narrow trunk (student and frozen DINOv2) as a known DINOv2 for this file only."""
    with declare_narrow_dinov2(ref["settings"]["narrow"]):
        yield


def our_name(original: str) -> str:
    """The original's ``network`` parameter / buffer name -> hrda_d2's (docs/method.md §20.7); the distill head
    keeps its ``fd_head.`` name."""
    if original.startswith("fd_head."):
        return original
    if original.startswith(_TRUNK):
        return "backbone.vit." + original[len("encoder."):]
    if original.startswith("encoder."):
        return "backbone." + original[len("encoder."):]
    return "sem_seg_head.head." + original


def step_cfg(settings, fd_weights: str):
    """The VFM-UDA++ recipe (configs/vfm_uda/Base-VFM-UDA-PP.yaml) at the fixture's sizes and settings."""
    cfg = add_hrda_config(get_cfg())
    cfg.merge_from_file(str(RECIPE))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.TIMM.NAME = "vit_small_patch14_dinov2"
    cfg.MODEL.VFM.INPUT_SCALE = settings["vit_img_size"] / settings["img_size"]  # 64 -> 224
    cfg.MODEL.VFM.ADAPTER.CONV_INPLANE = settings["conv_inplane"]
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = settings["num_classes"]
    cfg.TEST.MODE = "whole"
    apply_original_step(cfg, settings)
    cfg.UDA.VFM.EMA_ALPHA = settings["ema_alpha"]
    cfg.UDA.VFM.FD_WEIGHT_SOURCE = settings["fd_weight_source"]
    cfg.UDA.VFM.FD_WEIGHT_TARGET = settings["fd_weight_target"]
    cfg.UDA.VFM.FD_MODEL = "vit_small_patch14_reg4_dinov2"  # dinov2_vits14_reg, narrowed
    cfg.UDA.VFM.FD_WEIGHTS = fd_weights
    cfg.UDA.VFM.FD_SIZE = settings["fd_size"]
    return apply_original_solver(cfg, settings, rules=False)  # the recipe file sets the rules


class AdapterReplayStep(ReplayStep):
    """:class:`ReplayStep` that also records the teacher's two pseudo-label forwards as they happen, the frozen
    DINOv2's maps and the distill head's projected student maps."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen.update({"teacher_logits": [], "frozen": [], "projected": []})
        self.fd_model.register_forward_hook(lambda m, i, o: self.seen["frozen"].append(o.detach().clone()))
        self.fd_head.register_forward_hook(lambda m, i, o: self.seen["projected"].append(o.detach().clone()))

    def pseudo_labels(self, target01, valid):
        # record the teacher's two forwards as they happen (a second pair would move its BatchNorm statistics)
        teacher_forward = self.teacher.generate_pseudo_label

        def recording(images):
            out = teacher_forward(images)
            self.seen["teacher_logits"].append(out.detach().clone())
            return out

        self.teacher.generate_pseudo_label = recording
        try:
            self.seen["pseudo"] = super().pseudo_labels(target01, valid)
        finally:
            del self.teacher.generate_pseudo_label
        return self.seen["pseudo"]


@pytest.fixture(scope="module")
def run(ref, tmp_path_factory):
    """hrda_d2's iteration on the fixture's inputs, seeded as the original (torch and NumPy), decisions replayed."""
    settings = ref["settings"]
    fd_weights = tmp_path_factory.mktemp("vfm_pp_step") / "dinov2_narrow_reg4.pth"
    torch.save(frozen_dinov2_state(ast.literal_eval(str(ref["fd_model_shapes"]))), fd_weights)
    cfg = step_cfg(settings, str(fd_weights))
    converted = convert_checkpoint(load_checkpoint_file(STUDENT_CKPT), source=str(STUDENT_CKPT))
    with torch.device("cpu"):
        student, teacher = build_model(cfg), build_model(cfg)
    student.load_state_dict(converted.state_dict, strict=True)
    student.train()
    fd_model, fd_head = HRDATrainer.build_vfm_feature_distance(cfg, student)
    fd_head.load_state_dict({k[len("fd_head_init/"):]: torch.from_numpy(v) for k, v in ref.items()
                             if k.startswith("fd_head_init/")}, strict=True)
    optimizer = HRDATrainer.build_optimizer(cfg, student, fd_head=fd_head)
    scheduler = build_lr_scheduler(cfg, optimizer)
    lrs = param_lrs(optimizer)
    mask = torch.from_numpy(ref["block_keep_grid"][:, 0] == 0)  # the adapter's token grid = the block grid
    step = AdapterReplayStep(cfg, model=student, data_loader=iter([step_batches(ref)]), optimizer=optimizer,
                             teacher=teacher, fd_model=fd_model, fd_head=fd_head,
                             recorded=recorded_decisions(ref, mask))
    lrs_after = run_one_step(step, settings["seed"], optimizer, scheduler)
    return step, lrs, lrs_after


def test_same_seed_draws_the_originals_decisions(ref, run):
    step = run[0]
    drawn, recorded = step.seen["drawn"], step.recorded
    assert_draws_equal(drawn, recorded)
    # the original keeps a block where draw > ratio; hrda_d2 masks where draw < ratio (equal but at draw == ratio)
    draws = torch.from_numpy(ref["block_mask_draws"][:, 0])
    assert torch.equal(drawn.mask, draws < ref["settings"]["token_mask_ratio"])
    assert step.student.backbone.token_grid(tuple(ref["source_image"].shape[-2:])) == tuple(draws.shape[-2:])
    assert any(d.grayscale for d in recorded.source_aug)  # the strong augmentation's grayscale was drawn


def test_augmented_and_mixed_batches_equal_the_original(ref, run):
    seen = run[0].seen
    batch = seen["batch"]
    assert torch.equal(batch.source_images, torch.from_numpy(ref["source_image_flipped"]))
    assert torch.equal(batch.source_labels, torch.from_numpy(ref["source_label_flipped"]))
    assert torch.equal(batch.target_images, torch.from_numpy(ref["target_image_flipped"]))
    source_aug, target_weak, mixed_aug, masked_aug, fd_source_weak, fd_target_weak = seen["augmented"]
    images, labels, weight = seen["mixed"]
    # reached: all bit-identical
    for ours, key in ((source_aug, "source_aug_image"), (target_weak, "target_weak_image"),
                      (images, "mixed_image"), (masked_aug, "masked_aug_image"),
                      (fd_source_weak, "fd_source_weak_image"), (fd_target_weak, "fd_target_weak_image")):
        assert torch.equal(ours, torch.from_numpy(ref[key])), key
    assert mixed_aug is images
    assert torch.equal(labels, torch.from_numpy(ref["mixed_label"]))
    assert torch.equal(weight, torch.from_numpy(ref["mixed_weight"]))


def test_pseudo_labels_and_weights_equal_the_original(ref, run):
    seen = run[0].seen
    pseudo = seen["pseudo"]
    logits, flipped = seen["teacher_logits"]
    probs = (logits.softmax(1) + flipped.flip(-1).softmax(1)) / 2
    expected = torch.from_numpy(ref["teacher_probs"])
    assert (probs - expected).abs().max() < 2e-6  # reached 2.1e-7
    assert torch.equal(pseudo.label, torch.from_numpy(ref["pseudo_label"]))
    assert torch.equal(pseudo.weight, torch.from_numpy(ref["pseudo_weight"]))
    assert 0.2 < float(pseudo.confident_fraction) < 0.8


def test_feature_distance_maps_equal_the_original(ref, run):
    seen = run[0].seen
    frozen, projected = seen["frozen"], seen["projected"]
    assert len(frozen) == len(projected) == 2
    for i, which in enumerate(("source", "target")):
        for key, maps in (("frozen", frozen), ("projected", projected)):
            m = maps[i]
            head = torch.from_numpy(ref[f"{key}_{which}_head"])
            diff = (m[:, :head.shape[1]] - head).abs().max() / head.abs().max()
            # reached: frozen DINOv2 (registers, 406 px) bit-identical; projected 5.3e-7 of the max
            assert diff < (1e-7 if key == "frozen" else 1e-5), (key, which, float(diff))
            norms = m.double().norm(dim=1).numpy()
            np.testing.assert_allclose(norms, ref[f"{key}_{which}_cell_norm"], rtol=1e-5)


def test_loss_terms_equal_the_original(ref, run):
    seen = run[0].seen
    losses = seen["losses"]
    names = ["loss_src_sem_seg", "loss_mix_sem_seg", "loss_masked_sem_seg", "loss_fd_src", "loss_fd_trg"]
    assert sorted(losses) == sorted(names), sorted(losses)
    # the original's backward order: source, mix, masked, fd source (x 0.1), fd target (x 0.1)
    np.testing.assert_allclose([losses[n] for n in names], ref["backward_losses"], rtol=1e-6)  # reached 1.7e-7
    np.testing.assert_allclose(seen["backward_losses"], ref["backward_losses"], rtol=1e-5)
    for ours, original in (("loss_src_sem_seg", "train_loss_source"), ("loss_mix_sem_seg", "train_loss_mix"),
                           ("loss_masked_sem_seg", "loss_masked")):
        assert losses[ours] == pytest.approx(float(ref[original]), rel=1e-5), ours
    assert losses["loss_fd_src"] + losses["loss_fd_trg"] == pytest.approx(float(ref["train_loss_fdist"]), rel=1e-5)


def test_gradients_after_the_backward_passes_equal_the_original(ref, run):
    grads = run[0].seen["grads"]
    names, ours = gradient_norms(ref, grads, our_name)
    noise = np.isin(names, ZERO_GRADIENT)
    assert (ours[noise] < 1e-7).all() and (ref["grad_norms"][noise] < 1e-7).all()
    # per-tensor norms: reached 3.6e-5 relative (encoder.norm1.bias; the rest <= 3e-5)
    np.testing.assert_allclose(ours[~noise], ref["grad_norms"][~noise], rtol=2e-4, atol=1e-12)
    # the student's global norm after each of the five backward passes: reached 6.5e-7
    np.testing.assert_allclose(run[0].seen["grad_norm_after_backward"], ref["grad_norm_after_backward"], rtol=5e-6)
    for key in ref:
        if key.startswith(("grad/", "fd_head_grad/")):
            name = key.split("/", 1)[1]
            name = "fd_head." + name if key.startswith("fd_head_grad/") else name
            if name in ZERO_GRADIENT:
                continue
            expected = torch.from_numpy(ref[key])
            diff = (grads[our_name(name)] - expected).abs().max() / expected.abs().max()
            assert diff < 4e-5, (key, float(diff))  # reached 4.0e-6 (student), 3.9e-7 (distill head)


def test_lrs_student_after_the_step_and_ema_teacher_equal_the_original(ref, run):
    step, lrs, lrs_after = run
    assert_group_lrs(ref, lrs, lrs_after, our_name)
    before = step.seen["before"]
    params = dict(step.named_trainable_parameters())
    teacher = dict(step.teacher.named_parameters())
    names = [str(n) for n in ref["param_names"]]
    updates = change_norms(params, before, names, our_name)
    noise = np.isin(names, ZERO_GRADIENT)
    np.testing.assert_allclose(updates[~noise], ref["update_norms"][~noise], rtol=2e-4)  # reached 1.4e-5
    net_names = [n for n in names if not n.startswith("fd_head.")]
    teacher_change = change_norms(teacher, before, net_names, our_name)
    noise = np.isin(net_names, ZERO_GRADIENT)
    np.testing.assert_allclose(teacher_change[~noise], ref["teacher_change_norms"][~noise], rtol=2e-4)
    for key in ref:
        if key.startswith(("after/", "fd_head_after/")):
            name = key.split("/", 1)[1]
            name = our_name("fd_head." + name if key.startswith("fd_head_after/") else name)
            diff = (params[name].detach() - torch.from_numpy(ref[key])).abs().max().item()
            # reached: <= 0.0021 lr (most tensors equal); encoder.up.bias (ZERO_GRADIENT) 0.55 lr
            bound = 2.0 if key.split("/", 1)[1] in ZERO_GRADIENT else 0.02
            assert diff <= bound * lrs[name], (key, diff, lrs[name])
        if key.startswith("teacher/"):
            diff = (teacher[our_name(key[8:])] - torch.from_numpy(ref[key])).abs().max().item()
            bound = lrs[our_name(key[8:])] if key[8:] in ZERO_GRADIENT else 3e-7
            assert diff <= bound, (key, diff)  # reached 3e-8 (encoder.up.bias: 3.9e-6, half its step's noise)


def test_batchnorm_running_statistics_equal_the_original(ref, run):
    """Student: five train-mode forwards (source, mixed, masked, two feature distances); teacher: its two
    pseudo-label forwards in train mode; the EMA leaves buffers alone (parameters only)."""
    step = run[0]
    for prefix, net in (("buffer/", step.student), ("teacher_buffer/", step.teacher)):
        buffers = dict(net.named_buffers())
        keys = [k for k in ref if k.startswith(prefix)]
        assert keys and sorted(our_name(k[len(prefix):]) for k in keys) == sorted(
            n for n in buffers if "running" in n or "num_batches" in n)
        for key in keys:
            ours, expected = buffers[our_name(key[len(prefix):])], torch.from_numpy(ref[key])
            if not expected.is_floating_point():
                assert torch.equal(ours, expected), key
                continue
            diff = (ours - expected).abs().max().item()
            assert diff <= 2e-6 * max(1.0, expected.abs().max().item()), (key, diff)  # reached 2.4e-7


