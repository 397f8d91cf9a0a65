"""hrda_d2's layer-wise lr decay and WarmupLinearLR against the ORIGINAL VFM-UDA / VFM-UDA++ optimizer set-up
(docs/method.md §21.1, §21.2).

The fixture ``tests/fixtures/vfm_solver_reference/vfm_solver_reference.json`` holds the originals' param groups and
the lr of each group for iterations 0..30 (warm-up 10, max_steps 30, total batch 8, layer decay 0.9), made by
running their ``configure_optimizers`` on the stand-in networks of ``standin.py`` (README.md there). Here the same
stand-ins are rebuilt with hrda_d2's names (``backbone.*``, ``sem_seg_head.head.*``, the FD head as an extra
module) and every parameter's lr and weight decay are compared at every iteration.
"""
import json
import os

import numpy as np
import pytest
from detectron2.engine import TrainerBase, hooks
from torch import nn

from tests.fixtures.vfm_solver_reference.standin import (
    TinyDinoEncoder, attach_adapter_parts, tiny_decoder, tiny_feature_head,
)
from tests.helpers.tiny_configs import tiny_hrda_cfg
from tests.helpers.vfm_reference import NARROW, apply_original_solver, vfm_adapter_model_cfg, vfm_model_cfg
from hrda_d2.solver import build_lr_scheduler, build_optimizer

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "vfm_solver_reference", "vfm_solver_reference.json")
ADAPTER_PARTS = ["level_embed", "spm", "interactions", "up", "norm1", "norm2", "norm3", "norm4"]


class _RolesEncoder(TinyDinoEncoder):
    """The stand-in encoder with hrda_d2's ``layer_decay_groups()`` (roles of the original's param_defs)."""

    def __init__(self, adapter: bool):
        super().__init__(with_mask_token_and_norm=not adapter)
        self.adapter = adapter
        if adapter:
            attach_adapter_parts(self)

    def layer_decay_groups(self):
        stems = ["pos_embed", "patch_embed", "cls_token"] + ([] if self.adapter else ["mask_token", "norm"])
        return {"decoder": ADAPTER_PARTS if self.adapter else [],
                "blocks": [f"blocks.{index}" for index in range(len(self.blocks))], "stems": stems}


class _Segmenter(nn.Module):
    def __init__(self, adapter: bool):
        super().__init__()
        self.backbone = _RolesEncoder(adapter)
        self.sem_seg_head = nn.Module()
        self.sem_seg_head.head = tiny_decoder()


def _our_name(original: str) -> str:
    for old, new in (("network.encoder.", "backbone."), ("network.", "sem_seg_head.head."),
                     ("network_feature_head.", "fd_head.")):
        if original.startswith(old):
            return new + original[len(old):]
    raise KeyError(original)


class _Recorder(TrainerBase):
    def __init__(self, optimizer):
        super().__init__()
        self.optimizer = optimizer
        self.recorded = []

    def run_step(self):
        self.recorded.append([g["lr"] for g in self.optimizer.param_groups])
        self.optimizer.step()


def _lrs_of_the_run(cfg, optimizer):
    """Each group's lr at iterations 0..SOLVER.MAX_ITER, stepped by cfg's scheduler through the LRScheduler hook."""
    scheduler = build_lr_scheduler(cfg, optimizer)
    trainer = _Recorder(optimizer)
    trainer.register_hooks([hooks.LRScheduler(optimizer, scheduler)])
    trainer.train(0, cfg.SOLVER.MAX_ITER)
    return trainer.recorded + [[g["lr"] for g in optimizer.param_groups]]


def _config(settings):
    return apply_original_solver(tiny_hrda_cfg(), settings)


@pytest.mark.parametrize("case", ["vfm_uda", "vfm_uda_plusplus"])
def test_param_groups_and_lrs_equal_the_original(case):
    with open(FIXTURE) as f:
        reference = json.load(f)["cases"][case]
    settings = reference["settings"]
    cfg = _config(settings)
    model = _Segmenter(adapter=case == "vfm_uda_plusplus")
    extra = {}
    if case == "vfm_uda_plusplus":
        extra = {"fd_head": tiny_feature_head()}
        cfg.SOLVER.HEAD_LR_PARAM_PREFIXES = ["fd_head."]
    optimizer = build_optimizer(cfg, model, extra_modules=extra)
    lrs = _lrs_of_the_run(cfg, optimizer)
    assert len(lrs) == settings["max_steps"] + 1

    group_of = {name: index for index, group in enumerate(optimizer.param_groups) for name in group["param_names"]}
    original_names = [_our_name(n) for group in reference["groups"] for n in group["param_names"]]
    assert sorted(original_names) == sorted(group_of), "the same parameters are optimised"
    worst = 0.0
    for group in reference["groups"]:
        ours = {group_of[_our_name(n)] for n in group["param_names"]}
        for index in ours:  # the original's group may be split by weight decay or merged by lr, never mixed
            assert optimizer.param_groups[index]["weight_decay"] == group["weight_decay"]
            for t, expected in enumerate(group["lrs"]):
                got = lrs[t][index]
                assert got == pytest.approx(expected, rel=1e-14, abs=1e-22), (case, group["param_names"][0], t)
                if expected:
                    worst = max(worst, abs(got - expected) / expected)
    assert worst < 1e-14  # observed: 3.2e-16 (VFM-UDA: lr * 0.1 * 10 vs lr), 0 (VFM-UDA++)
    for group in optimizer.param_groups:
        assert tuple(group["betas"]) == tuple(reference["betas"]) and group["eps"] == reference["eps"]


def test_defaults_keep_the_hrda_groups_and_a_vit_at_decay_one_gets_base_lr():
    """LAYER_DECAY 1.0: blocks and stems at BASE_LR (the plain rules); the roles' "decoder" at the head lr."""
    cfg = tiny_hrda_cfg()
    model = _Segmenter(adapter=True)
    optimizer = build_optimizer(cfg, model)
    lr_of = {n: g["lr"] for g in optimizer.param_groups for n in g["param_names"]}
    decay_of = {n: g["weight_decay"] for g in optimizer.param_groups for n in g["param_names"]}
    assert lr_of["backbone.blocks.0.attn.qkv.weight"] == lr_of["backbone.cls_token"] == cfg.SOLVER.BASE_LR
    assert lr_of["backbone.spm.0.weight"] == lr_of["sem_seg_head.head.out.weight"] == pytest.approx(6e-4, rel=1e-15)
    assert decay_of["backbone.blocks.0.norm1.weight"] == 0.0  # BACKBONE_NORM_DECAY_MULTIPLIER 0 (default)
    assert decay_of["backbone.norm1.weight"] == 0.01  # adapter norms are "decoder": full decay, as the heads


def test_layer_decay_is_refused_without_roles_and_roles_must_cover_every_parameter():
    cfg = tiny_hrda_cfg()
    cfg.SOLVER.LAYER_DECAY = 0.9
    model = _Segmenter(adapter=False)
    model.backbone = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="SOLVER.LAYER_DECAY=0.9 needs a backbone with layer_decay_groups"):
        build_optimizer(cfg, model)
    model = _Segmenter(adapter=False)
    model.backbone.extra_token = nn.Parameter(model.backbone.cls_token.detach().clone())
    with pytest.raises(ValueError, match=r"no role, e.g. \['extra_token'\]"):
        build_optimizer(cfg, model)
    model = _Segmenter(adapter=False)
    roles = dict(model.backbone.layer_decay_groups(), decoder=["blocks.3"])
    model.backbone.layer_decay_groups = lambda: roles
    with pytest.raises(ValueError, match="two roles"):
        build_optimizer(cfg, model)


def test_warmup_linear_lr_table_edges_and_exact_resume():
    cfg = tiny_hrda_cfg()
    cfg.SOLVER.LR_SCHEDULER_NAME, cfg.SOLVER.WARMUP_FACTOR = "WarmupLinearLR", 1e-3
    cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.MAX_ITER = 0, 4
    optimizer = build_optimizer(cfg, _Segmenter(adapter=False))
    scheduler = build_lr_scheduler(cfg, optimizer)
    head = max(range(len(optimizer.param_groups)), key=lambda i: optimizer.param_groups[i]["lr"])
    seen = []
    for _ in range(6):  # beyond MAX_ITER the factor stays 0
        seen.append(optimizer.param_groups[head]["lr"] / optimizer.param_groups[head]["initial_lr"])
        optimizer.step()
        scheduler.step()
    assert seen == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]

    cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.MAX_ITER = 10, 30
    first = build_optimizer(cfg, _Segmenter(adapter=False))
    first_scheduler = build_lr_scheduler(cfg, first)
    for _ in range(7):
        first.step()
        first_scheduler.step()
    resumed = build_optimizer(cfg, _Segmenter(adapter=False))
    resumed_scheduler = build_lr_scheduler(cfg, resumed)
    resumed_scheduler.load_state_dict(first_scheduler.state_dict())
    for _ in range(10):
        first.step()
        first_scheduler.step()
        resumed.step()
        resumed_scheduler.step()
        assert [g["lr"] for g in resumed.param_groups] == [g["lr"] for g in first.param_groups]

    cfg.SOLVER.WARMUP_ITERS = -1
    with pytest.raises(ValueError, match="SOLVER.WARMUP_ITERS must be >= 0"):
        build_lr_scheduler(cfg, build_optimizer(cfg, _Segmenter(adapter=False)))
    # a warm-up longer than the run stays on the warm-up ramp (the original's table: linspace(1e-3, 1, 40)[t])
    cfg.SOLVER.WARMUP_ITERS = 40
    long_warmup = build_optimizer(cfg, _Segmenter(adapter=False))
    long_scheduler = build_lr_scheduler(cfg, long_warmup)
    lr0 = [g["lr"] for g in long_warmup.param_groups]
    ramp = np.linspace(cfg.SOLVER.WARMUP_FACTOR, 1.0, 40)
    for t in range(1, cfg.SOLVER.MAX_ITER + 1):
        long_warmup.step()
        long_scheduler.step()
        np.testing.assert_allclose([g["lr"] for g in long_warmup.param_groups],
                                   [lr / ramp[0] * ramp[t] for lr in lr0], rtol=1e-12)
    cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.POLY_LR_MIN_LR = 10, 1e-6
    with pytest.raises(ValueError, match="POLY_LR_MIN_LR"):
        build_lr_scheduler(cfg, build_optimizer(cfg, _Segmenter(adapter=False)))


def test_vfm_vit_backbone_roles_give_the_original_lrs():
    """The real ``VFMViT`` (ViT-S/14, 12 blocks, with and without register tokens): every parameter has a role, the
    lrs follow §21.1 (block 11 at BASE_LR, block 0 at 0.9^11, the stems at 0.9^12), the head at the head lr."""
    from detectron2.modeling import build_model

    for name in ("vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2"):
        cfg = vfm_model_cfg(7)
        cfg.MODEL.TIMM.NAME = name
        cfg.SOLVER.LAYER_DECAY, cfg.SOLVER.BASE_LR, cfg.SOLVER.HEAD_LR_MULTIPLIER = 0.9, 1e-5, 10.0
        model = build_model(cfg)
        optimizer = build_optimizer(cfg, model)
        lr_of = {n: g["lr"] for g in optimizer.param_groups for n in g["param_names"]}
        assert sorted(lr_of) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
        assert lr_of["backbone.vit.blocks.11.attn.qkv.weight"] == 1e-5
        assert lr_of["backbone.vit.blocks.0.mlp.fc2.bias"] == pytest.approx(1e-5 * 0.9 ** 11, rel=1e-14)
        stems = ["backbone.vit.cls_token", "backbone.vit.pos_embed", "backbone.vit.mask_token",
                 "backbone.vit.patch_embed.proj.weight", "backbone.vit.norm.weight"]
        if "reg4" in name:
            stems.append("backbone.vit.register_tokens")
        for stem in stems:
            assert lr_of[stem] == pytest.approx(1e-5 * 0.9 ** 12, rel=1e-14), stem
        heads = [n for n in lr_of if n.startswith("sem_seg_head.")]
        assert heads and all(lr_of[n] == pytest.approx(1e-4, rel=1e-15) for n in heads)


def _reference_role(original: str):
    """Role of an original VFM-UDA++ parameter name: ("block", i), "stems", "decoder", or None (the FD head)."""
    if original.startswith("network_feature_head."):
        return None
    if original.startswith("network.encoder.blocks."):
        return ("block", int(original.split(".")[3]))
    if original.startswith(("network.encoder.pos_embed", "network.encoder.patch_embed.", "network.encoder.cls_token")):
        return "stems"
    return "decoder"  # the head's out / upscale and the adapter's level_embed, spm, interactions, up, norm1..4


def test_vfm_vit_adapter_backbone_roles_give_the_original_lrs():
    """The real ``VFMViTAdapter`` + ``VFMPyramidHead`` (narrow trunk with the stand-in's 4 blocks, SPM width 16):
    every parameter gets, at every iteration, the lr and weight decay the original VFM-UDA++ gives the parameters
    of the same role (adapter modules and head: decoder; block i; stems), fixture case ``vfm_uda_plusplus``."""
    import functools

    from detectron2.modeling import build_model

    from hrda_d2.modeling.backbone import dinov2_vit

    with open(FIXTURE) as f:
        reference = json.load(f)["cases"]["vfm_uda_plusplus"]
    settings = reference["settings"]
    expected = {}  # role -> (lrs, weight decay), one value per role across the original's groups
    for group in reference["groups"]:
        for name in group["param_names"]:
            role = _reference_role(name)
            if role is not None:
                assert expected.setdefault(role, (group["lrs"], group["weight_decay"])) == \
                    (group["lrs"], group["weight_decay"]), role
    assert {r for r in expected if isinstance(r, tuple)} == {("block", i) for i in range(NARROW["depth"])}

    cfg = _config(settings)
    model_cfg = vfm_adapter_model_cfg()
    cfg.MODEL = model_cfg.MODEL
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dinov2_vit, "create_timm_model", functools.partial(dinov2_vit.create_timm_model, **NARROW))
        model = build_model(cfg)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert not any(n.startswith(("backbone.vit.mask_token", "backbone.vit.norm.")) for n in names)
    optimizer = build_optimizer(cfg, model)
    lrs = _lrs_of_the_run(cfg, optimizer)
    group_of = {name: index for index, group in enumerate(optimizer.param_groups) for name in group["param_names"]}
    assert sorted(group_of) == sorted(names)

    def role(name):
        if name.startswith("backbone.vit.blocks."):
            return ("block", int(name.split(".")[3]))
        return "stems" if name.startswith("backbone.vit.") else "decoder"

    for name in names:
        want_lrs, want_decay = expected[role(name)]
        index = group_of[name]
        assert optimizer.param_groups[index]["weight_decay"] == want_decay, name
        got = [lrs[t][index] for t in range(len(want_lrs))]
        assert got == pytest.approx(want_lrs, rel=1e-14, abs=1e-22), name
