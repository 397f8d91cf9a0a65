"""Pieces the VFM-UDA / VFM-UDA++ reference tests share (docs/method.md §19-§22): the model configs of the fixtures,
the originals' optimizer settings as SOLVER keys, the originals' input normalisation and narrow DINOv2 trunk, and for
the one-iteration step tests the recorded decisions, the replaying step and the comparisons both recipes make."""
import ast
import contextlib
import dataclasses
import functools

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.utils.events import EventStorage

from hrda_d2 import add_hrda_config
from hrda_d2.checkpoint import dinov2_conversion
from hrda_d2.modeling.backbone import dinov2_vit
from hrda_d2.uda.vfm_augmentation import AugmentationDecision, JitterDecision
from hrda_d2.uda.vfm_step import VFMDecisions, VFMUDAStepTrainer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the narrow trunk of tests/fixtures/vfm_uda_pp_reference: timm's vit_small_patch14_dinov2 with these overrides
NARROW = dict(embed_dim=64, depth=4, num_heads=2, mlp_ratio=1)


# ---------------------------------------------------------------------------------------------------- configs
def _model_cfg_base():
    cfg = add_hrda_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.PIXEL_MEAN = [255 * m for m in IMAGENET_MEAN]
    cfg.MODEL.PIXEL_STD = [255 * s for s in IMAGENET_STD]
    cfg.MODEL.TIMM.NAME = "vit_small_patch14_dinov2"
    cfg.MODEL.TIMM.DROP_PATH_RATE = 0.0
    cfg.MODEL.HRDA.SCALES = [1.0]
    return cfg


def vfm_model_cfg(num_classes: int):
    """VFM-UDA's model (VFMViT ViT-S/14 + VFMLightweightHead, one scale, ViT input 1.1 x the image) on the CPU."""
    cfg = _model_cfg_base()
    cfg.MODEL.BACKBONE.NAME = "VFMViT"
    cfg.MODEL.VFM.INPUT_SCALE = 1.1
    cfg.MODEL.SEM_SEG_HEAD.NAME = "VFMLightweightHead"
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["vit_tokens"]
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
    return cfg


def vfm_adapter_model_cfg():
    """VFM-UDA++'s model at the sizes of tests/fixtures/vfm_uda_pp_reference: VFMViTAdapter (SPM width 16, a 64 px
    image resized to 224) + VFMPyramidHead (SyncBN) with 5 classes, whole-image inference; build it inside
    :func:`declare_narrow_dinov2` (``NARROW``)."""
    cfg = _model_cfg_base()
    cfg.MODEL.BACKBONE.NAME = "VFMViTAdapter"
    cfg.MODEL.VFM.INPUT_SCALE = 3.5  # 64 -> 224 (the original's resized size in the fixture)
    cfg.MODEL.VFM.ADAPTER.CONV_INPLANE = 16
    cfg.MODEL.SEM_SEG_HEAD.NAME = "VFMPyramidHead"
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5
    cfg.MODEL.SEM_SEG_HEAD.NORM = "SyncBN"
    cfg.TEST.MODE = "whole"
    return cfg


def original_total_batch(settings) -> int:
    """The fixture's total batch: ``batch`` (step fixtures) or batch_size x num_devices x num_nodes (the solver
    fixture's ``configure_optimizers`` settings)."""
    if "batch" in settings:
        return settings["batch"]
    return settings["batch_size"] * settings["num_devices"] * settings["num_nodes"]


def apply_original_solver(cfg, settings, rules: bool = True):
    """The originals' ``configure_optimizers`` settings (their names in ``settings``) as SOLVER keys (docs/method.md
    §21.1, §21.2): lr x lr_multiplier at the blocks, the decoder at lr, layer decay, weight decay, warm-up and
    max_steps. ``rules``: also set what every VFM recipe fixes (sqrt batch scaling, weight decay on the norms,
    WarmupLinearLR from 1e-3); False where the config comes from a recipe file, which must set them itself."""
    solver = cfg.SOLVER
    solver.IMS_PER_BATCH = original_total_batch(settings)
    solver.BASE_LR = settings["lr"] * settings["lr_multiplier"]
    solver.HEAD_LR_MULTIPLIER = 1.0 / settings["lr_multiplier"]
    solver.LAYER_DECAY = settings["layerwise_lr_decay"]
    solver.WEIGHT_DECAY = settings["weight_decay"]
    solver.WARMUP_ITERS = settings["warmup_iters"]
    solver.MAX_ITER = settings["max_steps"]
    if rules:
        solver.LR_SQRT_BATCH_SCALING = True
        solver.BACKBONE_NORM_DECAY_MULTIPLIER = 1.0
        solver.LR_SCHEDULER_NAME = "WarmupLinearLR"
        solver.WARMUP_FACTOR = 1e-3
    return cfg


def apply_original_step(cfg, settings):
    """The step settings both originals name alike (``settings``) as UDA.VFM keys: token mask ratio, pseudo-label
    threshold, augmentation image size."""
    cfg.UDA.VFM.TOKEN_MASK_RATIO = settings["token_mask_ratio"]
    cfg.UDA.VFM.PSEUDO_THRESHOLD = settings["pseudo_threshold"]
    cfg.UDA.VFM.AUG_IMG_SIZE = settings["img_size"]
    return cfg


# ---------------------------------------------------------------------------------------------------- inputs
def original_normalize(images_uint8) -> torch.Tensor:
    """The originals' input: torchvision ``Normalize`` (ImageNet mean/std) of the 0..1 image; N x 3 x H x W."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (torch.as_tensor(images_uint8).float() / 255 - mean) / std


@contextlib.contextmanager
def declare_narrow_dinov2(narrow=None):
    """Within the block, the narrow trunk (``NARROW`` by default) is a known DINOv2: its width maps to a
    ``DINOV2_ARCHS`` entry (the converter's check) and timm's builder is narrowed (model building)."""
    narrow = NARROW if narrow is None else narrow
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(dinov2_conversion.DINOV2_ARCHS, narrow["embed_dim"],
                   dinov2_conversion.Dinov2Arch("vit_small_patch14_dinov2", narrow["embed_dim"], narrow["depth"],
                                                narrow["num_heads"]))
        mp.setattr(dinov2_vit, "create_timm_model", functools.partial(dinov2_vit.create_timm_model, **narrow))
        yield


# ---------------------------------------------------------------------------------------------------- step tests
def load_step_reference(path) -> dict:
    """A step fixture's arrays by name, with its ``settings`` (the original's names) as a dict."""
    with np.load(path) as data:
        out = {k: data[k] for k in data.files}
    out["settings"] = ast.literal_eval(str(out["settings"]))
    return out


def recorded_decisions(ref, mask: torch.Tensor) -> VFMDecisions:
    """The original's draws (step fixture) as hrda_d2's decisions, ``mask`` the masked pass's. Flips per image
    (``source_flips``) or one per batch (``source_flip``); grayscale and blur only where the fixture has them; the
    feature-distance jitter where the fixture has that pass."""
    n = len(ref["source_image"])

    def pipeline(prefix):
        out = []
        for i in range(len(ref[f"{prefix}_jitter_applied"])):
            jitter = None
            if ref[f"{prefix}_jitter_applied"][i]:
                jitter = JitterDecision(tuple(int(v) for v in ref[f"{prefix}_jitter_order"][i]),
                                        *(float(v) for v in ref[f"{prefix}_jitter_factors"][i]))
            sigma = ref.get(f"{prefix}_blur_sigma", [np.nan] * n)[i]
            gray = bool(ref.get(f"{prefix}_grayscale", [False] * n)[i])
            out.append(AugmentationDecision(jitter, gray, None if np.isnan(sigma) else float(sigma)))
        return out

    def flips(which):
        if f"{which}_flips" in ref:
            return [bool(f) for f in ref[f"{which}_flips"]]
        return [bool(ref[f"{which}_flip"])] * n

    fd = {}
    if "fd_source_weak_jitter_applied" in ref:
        fd = {"fd_source_weak": pipeline("fd_source_weak"), "fd_target_weak": pipeline("fd_target_weak")}
    return VFMDecisions(
        source_flips=flips("source"), target_flips=flips("target"), source_aug=pipeline("source_aug"),
        class_masks=torch.from_numpy(ref["class_masks"]).long(), target_weak=pipeline("target_weak"),
        mixed_aug=pipeline("mixed_aug"), masked_aug=pipeline("masked_aug"), mask=mask, **fd)


def step_batches(ref):
    """The fixture's inputs as one ``(source, target)`` pair of mapper dicts (target: valid = not ignored)."""
    source = [{"image": torch.from_numpy(im), "sem_seg": torch.from_numpy(lb)}
              for im, lb in zip(ref["source_image"], ref["source_label"])]
    target = [{"image": torch.from_numpy(im), "valid_pseudo_mask": torch.from_numpy((ig != 255).astype(np.uint8))}
              for im, ig in zip(ref["target_image"], ref["target_ignore_mask"])]
    return source, target


def param_lrs(optimizer) -> dict:
    """Each parameter's lr by name."""
    return {n: g["lr"] for g in optimizer.param_groups for n in g["param_names"]}


def run_one_step(step, seed: int, optimizer, scheduler) -> dict:
    """Iteration 0 of ``step`` seeded as the original (torch and NumPy), then the scheduler's step; the lrs after."""
    step.iter = 0
    torch.manual_seed(seed)
    np.random.seed(seed)
    with EventStorage(0):
        step.run_step()
    scheduler.step()
    return param_lrs(optimizer)


class ReplayStep(VFMUDAStepTrainer):
    """The step with the original's decisions and a record of what it computes (no change to the arithmetic) in
    ``seen``: the drawn decisions, each augmentation's output, the batch and the mix, the loss and the student's global
    gradient norm after each backward, the losses, gradients and parameters before the optimizer step."""

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

    def mix(self, batch, pseudo, decisions):
        self.seen["batch"] = batch
        self.seen["mixed"] = super().mix(batch, pseudo, decisions)
        return self.seen["mixed"]

    def backward(self, loss):
        self.seen.setdefault("backward_losses", []).append(float(loss.detach()))
        super().backward(loss)
        grads = [p.grad.detach().double().flatten() for p in self.student.parameters() if p.grad is not None]
        self.seen.setdefault("grad_norm_after_backward", []).append(float(torch.cat(grads).norm()))

    def finish_step(self, it):
        self.seen["losses"] = {k: float(v.detach()) for k, v in it.losses.items()}
        self.seen["grads"] = {n: p.grad.detach().clone() for n, p in self.named_trainable_parameters()
                              if p.grad is not None}
        self.seen["before"] = {n: p.detach().clone() for n, p in self.named_trainable_parameters()}
        super().finish_step(it)


def assert_draws_equal(drawn: VFMDecisions, recorded: VFMDecisions):
    """Every decision hrda_d2 drew equals the original's (fields absent on both sides: None on both)."""
    for field in dataclasses.fields(VFMDecisions):
        got, expected = getattr(drawn, field.name), getattr(recorded, field.name)
        if isinstance(expected, torch.Tensor):
            assert torch.equal(got, expected), field.name
        else:
            assert got == expected, field.name


def assert_group_lrs(ref, lrs, lrs_after, our_name):
    """The lr of each of the original's param groups (by its first parameter) before and after the step."""
    for lr, first in zip(ref["group_lrs"], ref["group_first_param"]):
        assert lrs[our_name(str(first))] == pytest.approx(float(lr), rel=1e-14)
    for lr, first in zip(ref["lr_after_step"], ref["group_first_param"]):
        assert lrs_after[our_name(str(first))] == pytest.approx(float(lr), rel=1e-14)


def gradient_norms(ref, grads, our_name):
    """``(names, norms)``: the original's parameter names and the norm of hrda_d2's gradient of each, after checking
    that both sides have gradients for the same parameters."""
    names = [str(n) for n in ref["param_names"]]
    assert sorted(our_name(n) for n in names) == sorted(grads)
    return names, np.array([float(grads[our_name(n)].double().norm()) for n in names])


def change_norms(after, before, names, our_name):
    """Norm of ``after - before`` per parameter (the original's ``names``), float64."""
    return np.array([float((after[our_name(n)].detach() - before[our_name(n)]).double().norm()) for n in names])
