"""``build_timm_backbone`` (hrda_d2/modeling/backbone/timm_backbone.py): names, strides and exact sizes of
``res2``..``res5`` for a CNN, two hierarchical models (ConvNeXt, Swin) and a DINOv2 ViT on a non-square input
whose sides are multiples of 32 but not of 14; the options (freezing, activation checkpointing, weight
files); parameter counts of DINOv2 ViT-S/B/L/14 against the architecture's formula and the published figures.

Expected channels are the published architectures': ResNet-50 stage widths 256/512/1024/2048 (He et al. 2016,
Table 1), ConvNeXt-T 96/192/384/768 (Liu et al. 2022), Swin-T 96/192/384/768 (Liu et al. 2021), DINOv2
ViT-S/14 width 384 (Oquab et al. 2023).
"""
import math

import pytest
import timm
import torch
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model

from hrda_d2 import add_hrda_config
from hrda_d2.modeling.backbone import TimmHierarchicalBackbone, TimmViTBackbone, build_timm_backbone
from hrda_d2.modeling.backbone.timm_backbone import TimmViTTrunk, default_vit_out_indices
from hrda_d2.solver import build_optimizer

H, W = 256, 384  # multiples of 32, not of 14
STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def timm_cfg(name: str, **timm_keys):
    cfg = add_hrda_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_timm_backbone"
    cfg.MODEL.TIMM.NAME = name
    cfg.MODEL.TIMM.DROP_PATH_RATE = 0.0
    for key, value in timm_keys.items():
        cfg.MODEL.TIMM[key] = value
    return cfg


@pytest.mark.parametrize("name, kind, channels", [
    ("resnet50", TimmHierarchicalBackbone, {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}),
    ("convnext_tiny", TimmHierarchicalBackbone, {"res2": 96, "res3": 192, "res4": 384, "res5": 768}),
    # Swin-T (Liu et al. 2021): 96/192/384/768, NHWC features returned as NCHW, any input size
    ("swin_tiny_patch4_window7_224", TimmHierarchicalBackbone, {"res2": 96, "res3": 192, "res4": 384, "res5": 768}),
    ("vit_small_patch14_dinov2", TimmViTBackbone,
     {"res2": 256, "res3": 256, "res4": 256, "res5": 256, "vit_tokens": 384}),
])
def test_outputs_are_res2_to_res5_at_strides_4_to_32(name, kind, channels):
    backbone = build_timm_backbone(timm_cfg(name)).eval()
    assert isinstance(backbone, kind)
    strides = dict(STRIDES, **({"vit_tokens": 16} if kind is TimmViTBackbone else {}))
    shapes = backbone.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {k: (channels[k], strides[k]) for k in strides}
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, H, W))
    assert list(out) == list(strides)
    for k, t in out.items():
        assert tuple(t.shape) == (2, channels[k], H // strides[k], W // strides[k]), k
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("out_indices", [[0, 1, 2, 3], [1, 2, 3, 9]])
def test_out_indices_must_give_strides_4_to_32(out_indices):
    with pytest.raises(ValueError, match=r"MODEL.TIMM.OUT_INDICES=.*res2..res5 need \[4, 8, 16, 32\]"):
        build_timm_backbone(timm_cfg("resnet18", OUT_INDICES=out_indices))


def test_vit_token_grid_is_ceil_of_sixteenth_for_other_sizes():
    """Sides that are not multiples of 16 are padded: grid ceil(H/16); res2 = 4x, res5 = floor(grid / 2)."""
    trunk = TimmViTTrunk("vit_small_patch14_dinov2", img_size=(64, 64))
    x = torch.randn(1, 3, 100, 70)
    resized = trunk.resize_to_grid(x)
    assert tuple(resized.shape[-2:]) == (7 * 14, 5 * 14)
    backbone = build_timm_backbone(timm_cfg("vit_small_patch14_dinov2")).eval()
    with torch.no_grad():
        out = backbone(x)
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "res2": (28, 20), "res3": (14, 10), "res4": (7, 5), "res5": (3, 2), "vit_tokens": (7, 5)}


def test_vit_default_blocks_and_input_resize():
    backbone = build_timm_backbone(timm_cfg("vit_small_patch14_dinov2"))
    assert backbone.net.out_indices == [2, 5, 8, 11]
    # the position embedding is stored for MODEL.TIMM.IMG_SIZE 512 x 512 = 32 x 32 tokens (+ class position)
    assert backbone.net.vit.pos_embed.shape == (1, 1 + 32 * 32, 384)
    assert backbone.net.resize_to_grid(torch.zeros(1, 3, H, W)).shape[-2:] == (H * 14 // 16, W * 14 // 16)
    assert default_vit_out_indices(24) == [5, 11, 17, 23]  # ViT-L: the last block of each quarter
    shallow = build_timm_backbone(timm_cfg("vit_small_patch14_dinov2", OUT_INDICES=[1, 3, 5, 7]))
    assert len(shallow.net.vit.blocks) == 8  # blocks 8..11 would get no gradient (DDP): removed
    out = shallow(torch.randn(1, 3, 64, 64))
    sum(t.sum() for t in out.values()).backward()
    assert all(p.grad is not None for p in shallow.parameters()), "every parameter takes part"


def test_each_vit_token_sees_exactly_its_16x16_input_cell():
    """The alignment HRDA needs: after the 14/16 resize, patch token (i, j) is computed from the input pixels
    ``[16i, 16i+16) x [16j, 16j+16)`` and from no other (bilinear sampling at (y' + 0.5) * 16/14 - 0.5 keeps
    patch rows 14i..14i+13 inside input rows 16i..16i+15). Checked on the patch embedding by perturbing every
    pixel of a 512-pixel row and of a 512-pixel column (HRDA's crop size) one at a time."""
    trunk = TimmViTTrunk("vit_small_patch14_dinov2", img_size=(512, 512)).eval()
    proj = trunk.vit.patch_embed.proj
    for shape in ((16, 512), (512, 16)):
        x = torch.randn(1, 3, *shape)
        with torch.no_grad():
            base = proj(trunk.resize_to_grid(x))
            positions = range(512)
            changed = x.repeat(512, 1, 1, 1)
            for n in positions:
                if shape[0] == 16:
                    changed[n, :, 7, n] += 10.0
                else:
                    changed[n, :, n, 7] += 10.0
            diff = (proj(trunk.resize_to_grid(changed)) - base).abs().amax(dim=1).flatten(1)  # 512 x 32 tokens
        touched = [(d > 1e-5).nonzero().flatten().tolist() for d in diff]
        assert touched == [[n // 16] for n in positions], shape


def test_freeze_at():
    resnet = build_timm_backbone(timm_cfg("resnet18", FREEZE_AT=2))
    frozen = {n.split(".")[1] for n, p in resnet.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "layer1"}  # the stem's and layer1's BatchNorms hold buffers only now
    assert isinstance(resnet.body.bn1, FrozenBatchNorm2d) and isinstance(resnet.body.layer1[0].bn1, FrozenBatchNorm2d)
    assert isinstance(resnet.body.layer2[0].bn1, torch.nn.BatchNorm2d)
    assert all(p.requires_grad for n, p in resnet.named_parameters() if n.startswith("body.layer2."))
    vit = build_timm_backbone(timm_cfg("vit_small_patch14_dinov2", FREEZE_AT=2))
    frozen = {n for n, p in vit.named_parameters() if not p.requires_grad}
    assert {"net.vit.cls_token", "net.vit.pos_embed", "net.vit.patch_embed.proj.weight"} <= frozen
    assert {int(n.split(".")[3]) for n in frozen if n.startswith("net.vit.blocks.")} == {0, 1, 2}  # up to res2's


def test_activation_checkpointing_gives_the_same_gradients():
    grads = []
    for on in (False, True):
        torch.manual_seed(0)
        backbone = build_timm_backbone(timm_cfg("vit_small_patch14_dinov2", CHECKPOINT_ACTIVATIONS=on))
        torch.manual_seed(1)
        out = backbone(torch.randn(1, 3, 64, 96))
        sum(t.square().mean() for t in out.values()).backward()
        grads.append({n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-7, msg=n)


def test_weights_file_is_local_only(tmp_path):
    cfg = timm_cfg("resnet18", WEIGHTS=str(tmp_path / "missing.safetensors"))
    how_to = r"(?s)MODEL.TIMM.WEIGHTS=.*missing.safetensors.*huggingface-cli download"
    with pytest.raises(FileNotFoundError, match=how_to):
        build_timm_backbone(cfg)
    reference = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    backbone = build_timm_backbone(timm_cfg("resnet18", WEIGHTS=str(path)))
    assert torch.equal(backbone.body.conv1.weight, reference.conv1.weight)
    assert torch.equal(backbone.body.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    # a timm DINOv2 file (518-pixel pretraining grid 37 x 37): timm's filter resizes the position embedding
    vit_reference = timm.create_model("vit_small_patch14_dinov2", pretrained=False)
    torch.save(vit_reference.state_dict(), tmp_path / "vits.pth")
    vit = build_timm_backbone(timm_cfg("vit_small_patch14_dinov2", WEIGHTS=str(tmp_path / "vits.pth"))).net.vit
    assert vit_reference.pos_embed.shape == (1, 1 + 37 * 37, 384) and vit.pos_embed.shape == (1, 1 + 32 * 32, 384)
    assert torch.equal(vit.blocks[3].attn.qkv.weight, vit_reference.blocks[3].attn.qkv.weight)


def test_new_pyramid_trains_at_the_head_learning_rate():
    cfg = timm_cfg("vit_small_patch14_dinov2")
    cfg.MODEL.SEM_SEG_HEAD.EMBED_DIM = 32
    cfg.MODEL.HRDA.ATTENTION_EMBED_DIM = 32
    cfg.SOLVER.HEAD_LR_PARAM_PREFIXES = ["backbone.simfp_"]
    model = build_model(cfg)
    lr_of = {n: g["lr"] for g in build_optimizer(cfg, model).param_groups for n in g["param_names"]}
    base = cfg.SOLVER.BASE_LR
    assert lr_of["backbone.simfp_2.0.weight"] == pytest.approx(base * 10)
    assert lr_of["sem_seg_head.head.conv_seg.weight"] == pytest.approx(base * 10)
    assert lr_of["backbone.net.vit.blocks.0.attn.qkv.weight"] == pytest.approx(base)


# ------------------------------------------------------------------------------------- parameter counts
# DINOv2 README (github facebookresearch/dinov2, "Pretrained models" table, "# of params"): ViT-S/14 21 M,
# ViT-B/14 86 M, ViT-L/14 300 M (figures rounded there; the same with registers).
PUBLISHED_MILLIONS = {"vit_small_patch14_dinov2": 21, "vit_base_patch14_dinov2": 86, "vit_large_patch14_dinov2": 300}
ARCH = {"vit_small_patch14_dinov2": (384, 12), "vit_base_patch14_dinov2": (768, 12),
        "vit_large_patch14_dinov2": (1024, 24)}


def dinov2_parameter_count(dim: int, depth: int, grid: int = 37, registers: int = 0) -> int:
    """Parameters of DINOv2's ViT/14 at its 518-pixel pretraining grid (37 x 37), without the mask token:
    per block 2 LayerNorms (4d), qkv (3d^2 + 3d), projection (d^2 + d), MLP with ratio 4 (8d^2 + 5d), 2
    LayerScales (2d) = 12 d^2 + 15 d; patch embedding 3*14*14*d + d; position embedding (1 + grid^2) d; class
    token d; registers r*d; final LayerNorm 2d."""
    block = 12 * dim * dim + 15 * dim
    return depth * block + (3 * 14 * 14 * dim + dim) + (1 + grid * grid) * dim + dim + registers * dim + 2 * dim


@pytest.mark.parametrize("name", list(PUBLISHED_MILLIONS))
def test_dinov2_parameter_counts(name):
    dim, depth = ARCH[name]
    with torch.device("meta"):  # shapes only: ViT-L's 304 M parameters are never allocated
        trunk = TimmViTTrunk(name, img_size=(37 * 16, 37 * 16))
    count = sum(p.numel() for p in trunk.vit.parameters())
    assert count == dinov2_parameter_count(dim, depth)
    with torch.device("meta"):
        reg = TimmViTTrunk(name.replace("_patch14_", "_patch14_reg4_"), img_size=(37 * 16, 37 * 16))
    # registers: 4 tokens more; the class position is folded into the class token (one position less)
    assert sum(p.numel() for p in reg.vit.parameters()) == count + 4 * dim - dim
    published = PUBLISHED_MILLIONS[name] * 1e6
    print(f"{name}: {count / 1e6:.2f} M parameters (DINOv2 README: {PUBLISHED_MILLIONS[name]} M, "
          f"{100 * (count - published) / published:+.1f}%)")
    # the README rounds: within 5.5 % (ViT-S: 22.06 M vs "21 M"; ViT-B +0.7 %, ViT-L +1.5 %)
    assert math.isclose(count, published, rel_tol=0.055)
