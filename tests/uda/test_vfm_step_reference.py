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
import ast

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from hrda_d2 import add_hrda_config
from hrda_d2.checkpoint import convert_checkpoint, load_checkpoint_file
from hrda_d2.solver import build_lr_scheduler, build_optimizer
from hrda_d2.uda.vfm_augmentation import AugmentationDecision, JitterDecision
from hrda_d2.uda.vfm_step import VFMDecisions, VFMUDAStepTrainer
from tests.fixtures.vfm_uda_reference import make_weights
from tests.helpers.paths import REPO_ROOT

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "vfm_uda_step_reference" / "vfm_uda_step_outputs.npz"
NUM_CLASSES = 7


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as data:
        out = {k: data[k] for k in data.files}
    out["settings"] = ast.literal_eval(str(out["settings"]))
    return out


def our_name(original: str) -> str:
    """The original's ``network`` parameter name -> hrda_d2's (docs/method.md §19.4)."""
    if original.startswith("encoder."):
        return "backbone.vit." + original[len("encoder."):]
    return "sem_seg_head.head." + original


def step_cfg(settings):
    """VFM-UDA's recipe at the fixture's settings (the original's names in ``settings``)."""
    cfg = add_hrda_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "VFMViT"
    cfg.MODEL.TIMM.NAME = "vit_small_patch14_dinov2"
    cfg.MODEL.TIMM.DROP_PATH_RATE = 0.0
    cfg.MODEL.VFM.INPUT_SCALE = 1.1
    cfg.MODEL.HRDA.SCALES = [1.0]
    cfg.MODEL.SEM_SEG_HEAD.NAME = "VFMLightweightHead"
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["vit_tokens"]
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.SEM_SEG_HEAD.AVG_NON_IGNORE = True
    cfg.MODEL.PIXEL_MEAN = [255 * m for m in (0.485, 0.456, 0.406)]
    cfg.MODEL.PIXEL_STD = [255 * s for s in (0.229, 0.224, 0.225)]
    cfg.UDA.METHOD = "vfm_uda"
    cfg.UDA.MIC.MASK_TYPE = "tokens"
    cfg.UDA.VFM.TOKEN_MASK_RATIO = settings["token_mask_ratio"]
    cfg.UDA.VFM.PSEUDO_THRESHOLD = settings["pseudo_threshold"]
    cfg.UDA.VFM.AUG_IMG_SIZE = settings["img_size"]
    cfg.UDA.VFM.FLIP = "per_image"
    cfg.UDA.VFM.EMA_BUFFERS = True
    solver = cfg.SOLVER
    solver.IMS_PER_BATCH = settings["batch"]
    solver.BASE_LR = settings["lr"] * settings["lr_multiplier"]
    solver.HEAD_LR_MULTIPLIER = 1.0 / settings["lr_multiplier"]
    solver.LAYER_DECAY = settings["layerwise_lr_decay"]
    solver.LR_SQRT_BATCH_SCALING = True
    solver.WEIGHT_DECAY = settings["weight_decay"]
    solver.BACKBONE_NORM_DECAY_MULTIPLIER = 1.0
    solver.LR_SCHEDULER_NAME = "WarmupLinearLR"
    solver.WARMUP_FACTOR = 1e-3
    solver.WARMUP_ITERS = settings["warmup_iters"]
    solver.MAX_ITER = settings["max_steps"]
    return cfg


def recorded_decisions(ref) -> VFMDecisions:
    """The original's draws (fixture) as hrda_d2's decisions."""

    def pipeline(prefix):
        out = []
        for i in range(len(ref[f"{prefix}_jitter_applied"])):
            jitter = None
            if ref[f"{prefix}_jitter_applied"][i]:
                jitter = JitterDecision(tuple(int(v) for v in ref[f"{prefix}_jitter_order"][i]),
                                        *(float(v) for v in ref[f"{prefix}_jitter_factors"][i]))
            sigma = ref.get(f"{prefix}_blur_sigma", [np.nan] * 2)[i]
            out.append(AugmentationDecision(jitter, False, None if np.isnan(sigma) else float(sigma)))
        return out

    return VFMDecisions(
        source_flips=[bool(f) for f in ref["source_flips"]], target_flips=[bool(f) for f in ref["target_flips"]],
        source_aug=pipeline("source_aug"), class_masks=torch.from_numpy(ref["class_masks"]).long(),
        target_weak=pipeline("target_weak"), mixed_aug=pipeline("mixed_aug"), masked_aug=pipeline("masked_aug"),
        mask=torch.from_numpy(ref["token_mask"]))


class ReplayStep(VFMUDAStepTrainer):
    """The step with the original's decisions and a record of what it computes (no change to the arithmetic)."""

    def __init__(self, *args, recorded: VFMDecisions, **kwargs):
        super().__init__(*args, **kwargs)
        self.recorded = recorded
        self.seen = {"augmented": []}

    def draw_decisions(self, source_labels, target_size, target_hw):
        self.seen["drawn"] = super().draw_decisions(source_labels, target_size, target_hw)
        return self.recorded

    def augment(self, images01, decisions):
        out = super().augment(images01, decisions)
        self.seen["augmented"].append(out)
        return out

    def pseudo_labels(self, target01, valid):
        self.seen["pseudo"] = super().pseudo_labels(target01, valid)
        with torch.no_grad():  # the flip-averaged probabilities, from the teacher left in pseudo-label mode
            images = self.normalize(target01)
            logits = self.teacher.generate_pseudo_label(images)
            flipped = self.teacher.generate_pseudo_label(images.flip(-1)).flip(-1)
            self.seen["teacher_probs"] = (logits.softmax(1) + flipped.softmax(1)) / 2
        return self.seen["pseudo"]

    def mix(self, batch, pseudo, decisions):
        self.seen["batch"] = batch
        self.seen["mixed"] = super().mix(batch, pseudo, decisions)
        return self.seen["mixed"]

    def backward(self, loss):
        super().backward(loss)
        grads = [p.grad.detach().double().flatten() for p in self.student.parameters() if p.grad is not None]
        self.seen.setdefault("grad_norm_after_backward", []).append(float(torch.cat(grads).norm()))

    def finish_step(self, it):
        self.seen["losses"] = {k: float(v.detach()) for k, v in it.losses.items()}
        self.seen["grads"] = {n: p.grad.detach().clone() for n, p in self.student.named_parameters()
                              if p.grad is not None}
        self.seen["before"] = {n: p.detach().clone() for n, p in self.student.named_parameters()}
        super().finish_step(it)


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
    lrs = {n: g["lr"] for g in optimizer.param_groups for n in g["param_names"]}
    source = [{"image": torch.from_numpy(im), "sem_seg": torch.from_numpy(lb)}
              for im, lb in zip(ref["source_image"], ref["source_label"])]
    target = [{"image": torch.from_numpy(im), "valid_pseudo_mask": torch.from_numpy((ig != 255).astype(np.uint8))}
              for im, ig in zip(ref["target_image"], ref["target_ignore_mask"])]
    step = ReplayStep(cfg, model=student, data_loader=iter([(source, target)]), optimizer=optimizer,
                      teacher=teacher, recorded=recorded_decisions(ref))
    step.iter = 0
    torch.manual_seed(settings["seed"])
    np.random.seed(settings["seed"])
    with EventStorage(0):
        step.run_step()
    scheduler.step()
    lrs_after = {n: g["lr"] for g in optimizer.param_groups for n in g["param_names"]}
    return step, lrs, lrs_after


def test_same_seed_draws_the_originals_decisions(ref, run):
    step = run[0]
    drawn, recorded = step.seen["drawn"], step.recorded
    for field in ("source_flips", "target_flips", "source_aug", "target_weak", "mixed_aug", "masked_aug"):
        got, expected = getattr(drawn, field), getattr(recorded, field)
        assert got == expected, field
    assert torch.equal(drawn.class_masks, recorded.class_masks)
    assert torch.equal(drawn.mask, recorded.mask)
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
    names = [str(n) for n in ref["param_names"]]
    assert sorted(our_name(n) for n in names) == sorted(grads)
    ours = np.array([float(grads[our_name(n)].double().norm()) for n in names])
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
    for lr, first in zip(ref["group_lrs"], ref["group_first_param"]):
        assert lrs[our_name(str(first))] == pytest.approx(float(lr), rel=1e-14)
    for lr, first in zip(ref["lr_after_step"], ref["group_first_param"]):
        assert lrs_after[our_name(str(first))] == pytest.approx(float(lr), rel=1e-14)
    before = step.seen["before"]
    student = dict(step.student.named_parameters())
    teacher = dict(step.teacher.named_parameters())
    names = [str(n) for n in ref["param_names"]]
    updates = np.array([float((student[our_name(n)].detach() - before[our_name(n)]).double().norm())
                        for n in names])
    np.testing.assert_allclose(updates, ref["update_norms"], rtol=1e-4, atol=1e-12)  # reached 6.1e-6
    teacher_change = np.array([float((teacher[our_name(n)] - before[our_name(n)]).double().norm()) for n in names])
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
