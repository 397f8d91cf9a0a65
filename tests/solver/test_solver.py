"""Tests of hrda_d2.solver: AdamW param groups (reference 11.1) and the mmcv poly + linear warm-up schedule
(reference 11.2), stepped by Detectron2's own LRScheduler hook."""
import pytest
import torch
from detectron2.engine import TrainerBase, hooks
from detectron2.modeling import build_model
from torch import nn

from tests.helpers.tiny_configs import tiny_hrda_cfg
from hrda_d2.solver import build_lr_scheduler, build_optimizer


def _reference_lr(t, lr0, min_lr=0.0, max_iters=40000, warmup_iters=1500, warmup_ratio=1e-6, power=1.0):
    """mmcv PolyLrUpdaterHook with linear warm-up, as written in the reference section 11.2."""
    regular = (lr0 - min_lr) * (1 - t / max_iters) ** power + min_lr
    if t < warmup_iters:
        k = (1 - t / warmup_iters) * (1 - warmup_ratio)
        return regular * (1 - k)
    return regular


class _TinySegmenter(nn.Module):
    """Parameter names as in the HRDA meta-architecture, a few parameters only."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.block1 = nn.ModuleList([nn.Module()])
        self.backbone.block1[0].norm1 = nn.LayerNorm(4)
        self.backbone.block1[0].attn = nn.Module()
        self.backbone.block1[0].attn.q = nn.Linear(4, 4)
        self.sem_seg_head = nn.Module()
        self.sem_seg_head.fuse_layer = nn.Module()
        self.sem_seg_head.fuse_layer.bottleneck = nn.Module()
        self.sem_seg_head.fuse_layer.bottleneck.bn = nn.BatchNorm2d(4)
        self.sem_seg_head.conv_seg = nn.Conv2d(4, 3, 1)


@pytest.fixture(scope="module")
def hrda_model():
    torch.manual_seed(0)
    return build_model(tiny_hrda_cfg())


def _group_of(optimizer, param):
    groups = [g for g in optimizer.param_groups if any(p is param for p in g["params"])]
    assert len(groups) == 1
    return groups[0]


def test_param_groups_follow_the_mmcv_custom_keys(hrda_model):
    cfg = tiny_hrda_cfg()
    optimizer = build_optimizer(cfg, hrda_model)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert len(optimizer.param_groups) == 3
    for group in optimizer.param_groups:
        assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8 and not group["amsgrad"]

    params = dict(hrda_model.named_parameters())
    head_lr, base_lr = 6e-5 * 10, 6e-5
    expectations = {
        "sem_seg_head.head.fuse_layer.bottleneck.bn.weight": (head_lr, 0.01),
        "sem_seg_head.head.fuse_layer.bottleneck.bn.bias": (head_lr, 0.01),
        "sem_seg_head.head.conv_seg.weight": (head_lr, 0.01),
        "sem_seg_head.scale_attention.fuse_layer.bn.weight": (head_lr, 0.01),
        "sem_seg_head.scale_attention.embed_layers.0.proj.weight": (head_lr, 0.01),
        "backbone.block1.0.norm1.weight": (base_lr, 0.0),
        "backbone.block1.0.attn.norm.bias": (base_lr, 0.0),
        "backbone.patch_embed1.norm.weight": (base_lr, 0.0),
        "backbone.norm4.weight": (base_lr, 0.0),
        "backbone.block1.0.attn.q.weight": (base_lr, 0.01),
        "backbone.block1.0.mlp.dwconv.dwconv.bias": (base_lr, 0.01),
        "backbone.patch_embed1.proj.weight": (base_lr, 0.01),
    }
    for name, (lr, decay) in expectations.items():
        group = _group_of(optimizer, params[name])
        assert group["lr"] == pytest.approx(lr, rel=1e-12), name
        assert group["weight_decay"] == decay, name

    # every trainable parameter exactly once
    ids = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(params)
    names = [n for g in optimizer.param_groups for n in g["param_names"]]
    assert sorted(names) == sorted(params)


def test_frozen_parameters_are_left_out():
    model = _TinySegmenter()
    model.backbone.block1[0].attn.q.requires_grad_(False)
    optimizer = build_optimizer(tiny_hrda_cfg(), model)
    ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert id(model.backbone.block1[0].attn.q.weight) not in ids
    assert id(model.backbone.block1[0].attn.q.bias) not in ids
    assert len(ids) == 6  # norm1 (2), bn (2), conv_seg (2)


def test_gradient_clipping_option():
    cfg = tiny_hrda_cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.5
    model = _TinySegmenter()
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW) and "GradientClip" in type(optimizer).__name__
    # every parameter has a gradient, as in a DACS step (Detectron2's per-parameter clipper fails on
    # parameters without .grad under torch 2.14's foreach clip_grad_value_)
    for param in model.parameters():
        param.grad = torch.full_like(param, -7.0)
    weight = model.sem_seg_head.conv_seg.weight
    weight.grad = torch.full_like(weight, 7.0)
    optimizer.step()
    assert weight.grad.abs().max().item() == 0.5
    assert model.backbone.block1[0].norm1.weight.grad.min().item() == -0.5


def test_sgd_of_the_table2_rows():
    """SOLVER.OPTIMIZER SGD (docs/method.md §18.6): momentum 0.9, weight decay 5e-4, one group without the head
    multiplier and the norm rule (the original's pmult=False: no custom keys for a ResNet)."""
    cfg = tiny_hrda_cfg()
    cfg.SOLVER.OPTIMIZER, cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY = "SGD", 0.0025, 5e-4
    cfg.SOLVER.HEAD_LR_MULTIPLIER, cfg.SOLVER.BACKBONE_NORM_DECAY_MULTIPLIER = 1.0, 1.0
    optimizer = build_optimizer(cfg, _TinySegmenter())
    assert isinstance(optimizer, torch.optim.SGD) and len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["dampening"], group["nesterov"]) == (
        0.0025, 0.9, 5e-4, 0, False)


def test_bad_solver_keys_are_rejected():
    cfg = tiny_hrda_cfg()
    cfg.SOLVER.OPTIMIZER = "LAMB"
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_optimizer(cfg, _TinySegmenter())
    cfg = tiny_hrda_cfg()
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupCosineLR"
    with pytest.raises(ValueError, match="LR_SCHEDULER_NAME"):
        build_lr_scheduler(cfg, build_optimizer(cfg, _TinySegmenter()))


class _LRRecorder(TrainerBase):
    """A trainer whose step only records the lr of every param group used in that iteration."""

    def __init__(self, optimizer, record_at):
        super().__init__()
        self.optimizer = optimizer
        self.record_at = set(record_at)
        self.recorded = {}

    def run_step(self):
        if self.iter in self.record_at:
            self.recorded[self.iter] = [g["lr"] for g in self.optimizer.param_groups]
        self.optimizer.step()


def _run_schedule(cfg, record_at, num_iters):
    model = _TinySegmenter()
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    trainer = _LRRecorder(optimizer, record_at)
    trainer.register_hooks([hooks.LRScheduler(optimizer, scheduler)])
    trainer.train(0, num_iters)
    return optimizer, trainer.recorded


def test_lr_schedule_matches_mmcv_poly_with_warmup_under_detectron2_stepping():
    cfg = tiny_hrda_cfg()
    iterations = [0, 1, 750, 1499, 1500, 1501, 20000]
    optimizer, recorded = _run_schedule(cfg, iterations, num_iters=20001)
    group_lr0 = [g["initial_lr"] for g in optimizer.param_groups]
    assert sorted(group_lr0) == pytest.approx(sorted([6e-5, 6e-5, 6e-4]), rel=1e-12)
    for t in iterations:
        for lr0, lr in zip(group_lr0, recorded[t]):
            assert lr == pytest.approx(_reference_lr(t, lr0), rel=1e-12, abs=0), (t, lr0)
    head = max(group_lr0)
    # spot values written out: lr(0) = 1e-6 * lr0, lr(1500) = lr0 * (1 - 1500/40000), lr(20000) = lr0 / 2
    head_index = group_lr0.index(head)
    assert recorded[0][head_index] == pytest.approx(6e-4 * 1e-6, rel=1e-12)
    assert recorded[750][head_index] == pytest.approx(6e-4 * (1 - 750 / 40000) * (1 - 0.5 * (1 - 1e-6)), rel=1e-12)
    assert recorded[1500][head_index] == pytest.approx(6e-4 * 0.9625, rel=1e-12)
    assert recorded[20000][head_index] == pytest.approx(3e-4, rel=1e-12)
    backbone_index = group_lr0.index(6e-5)
    assert recorded[20000][backbone_index] == pytest.approx(3e-5, rel=1e-12)


def test_lr_schedule_min_lr_is_absolute_per_group():
    cfg = tiny_hrda_cfg()
    cfg.SOLVER.POLY_LR_MIN_LR = 1e-6
    cfg.SOLVER.MAX_ITER = 100
    cfg.SOLVER.WARMUP_ITERS = 10
    cfg.SOLVER.POLY_LR_POWER = 0.9
    iterations = [0, 5, 10, 50, 99]
    optimizer, recorded = _run_schedule(cfg, iterations, num_iters=100)
    for t in iterations:
        for group, lr in zip(optimizer.param_groups, recorded[t]):
            expected = _reference_lr(
                t, group["initial_lr"], min_lr=1e-6, max_iters=100, warmup_iters=10, power=0.9
            )
            assert lr == pytest.approx(expected, rel=1e-12), (t, group["initial_lr"])


def test_scheduler_state_round_trip_continues_the_schedule():
    """What a resumed run does: fresh optimizer + scheduler, then both state dicts loaded."""
    cfg = tiny_hrda_cfg()
    optimizer = build_optimizer(cfg, _TinySegmenter())
    scheduler = build_lr_scheduler(cfg, optimizer)
    for _ in range(100):
        optimizer.step()
        scheduler.step()
    optimizer_state, scheduler_state = optimizer.state_dict(), scheduler.state_dict()

    resumed_optimizer = build_optimizer(cfg, _TinySegmenter())
    resumed_scheduler = build_lr_scheduler(cfg, resumed_optimizer)
    resumed_optimizer.load_state_dict(optimizer_state)
    resumed_scheduler.load_state_dict(scheduler_state)
    for t in (100, 101):
        for group in resumed_optimizer.param_groups:
            assert group["lr"] == pytest.approx(_reference_lr(t, group["initial_lr"]), rel=1e-12), t
        resumed_optimizer.step()
        resumed_scheduler.step()
