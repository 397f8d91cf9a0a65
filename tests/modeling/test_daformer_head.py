"""DAFormer head: module tree and parameter names of the original (reference 3.4), initialisation (3.3) and
forward (3.2) checked against an independent functional re-implementation of the reference text."""
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_sem_seg_head
from torch import nn
from torch.nn import functional as F

from hrda_d2 import add_hrda_config
from hrda_d2.modeling.heads import DAFormerHead

MIT_B0_SHAPES = {
    "res2": ShapeSpec(channels=32, stride=4),
    "res3": ShapeSpec(channels=64, stride=8),
    "res4": ShapeSpec(channels=160, stride=16),
    "res5": ShapeSpec(channels=256, stride=32),
}
IN_FEATURES = ["res2", "res3", "res4", "res5"]


def _head(**kwargs) -> DAFormerHead:
    args = dict(in_features=IN_FEATURES, num_classes=19)
    args.update(kwargs)
    return DAFormerHead(MIT_B0_SHAPES, **args)


def _expected_keys(fusion: str, dilations=(1, 6, 12, 18)):
    """Parameter/buffer names and shapes of reference section 3.4 (embed 256, channels 256, 19 classes)."""
    bn = lambda p, c: {f"{p}.bn.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")} | {
        f"{p}.bn.num_batches_tracked": ()
    }
    keys = {}
    for i, c in enumerate((32, 64, 160, 256)):
        keys[f"embed_layers.{i}.proj.weight"] = (256, c)
        keys[f"embed_layers.{i}.proj.bias"] = (256,)
    if fusion == "aspp":
        for k, d in enumerate(dilations):
            p = f"fuse_layer.aspp_modules.{k}"
            if d == 1:
                keys[f"{p}.conv.weight"] = (256, 1024, 1, 1)
                keys |= bn(p, 256)
            else:
                keys[f"{p}.depthwise_conv.conv.weight"] = (1024, 1, 3, 3)
                keys |= bn(f"{p}.depthwise_conv", 1024)
                keys[f"{p}.pointwise_conv.conv.weight"] = (256, 1024, 1, 1)
                keys |= bn(f"{p}.pointwise_conv", 256)
        keys["fuse_layer.bottleneck.conv.weight"] = (256, 1024, 3, 3)
        keys |= bn("fuse_layer.bottleneck", 256)
    else:
        keys["fuse_layer.conv.weight"] = (256, 1024, 1, 1)
        keys |= bn("fuse_layer", 256)
    keys["conv_seg.weight"] = (19, 256, 1, 1)
    keys["conv_seg.bias"] = (19,)
    return keys


@pytest.mark.parametrize("fusion", ["aspp", "conv"])
def test_state_dict_names_and_shapes_equal_the_original(fusion):
    head = _head(fusion=fusion)
    got = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert got == _expected_keys(fusion)
    assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1


def test_registered_and_built_from_config():
    cfg = add_hrda_config(get_cfg())
    cfg.MODEL.SEM_SEG_HEAD.EMBED_DIM = 64
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 7
    cfg.MODEL.SEM_SEG_HEAD.ASPP_DILATIONS = [1, 2]
    cfg.MODEL.SEM_SEG_HEAD.DROPOUT = 0.25
    head = build_sem_seg_head(cfg, MIT_B0_SHAPES)
    assert isinstance(head, DAFormerHead)
    assert head.conv_seg.weight.shape == (7, 64, 1, 1)
    assert head.fuse_layer.aspp_modules[1].depthwise_conv.conv.dilation == (2, 2)
    assert head.fuse_layer.bottleneck.conv.weight.shape == (64, 128, 3, 3)
    assert head.dropout.p == 0.25


def test_norm_option_uses_detectron2_norms():
    sync = _head(norm="SyncBN", embed_dim=16, channels=16)
    assert isinstance(sync.fuse_layer.bottleneck.bn, nn.SyncBatchNorm)
    plain = _head(norm="", embed_dim=16, channels=16, fusion="conv")
    assert plain.fuse_layer.bn is None and plain.fuse_layer.conv.bias is not None  # bias only without norm
    assert _head(embed_dim=16, channels=16).fuse_layer.bottleneck.conv.bias is None


def test_bad_config_values_raise_clear_errors():
    with pytest.raises(ValueError, match="IN_FEATURES"):
        _head(in_features=["res2", "p6"])
    with pytest.raises(ValueError, match="FUSION"):
        _head(fusion="sum")


def test_initialisation_follows_mmcv():
    torch.manual_seed(0)
    head = _head()
    # conv_seg N(0, 0.01), bias 0
    assert abs(head.conv_seg.weight.std().item() - 0.01) < 0.001 and head.conv_seg.bias.abs().max() == 0
    # ConvModules: kaiming normal, fan_out = out_channels * k * k (torch's fan_out ignores groups), ReLU gain
    for conv in (
        head.fuse_layer.aspp_modules[0].conv,
        head.fuse_layer.aspp_modules[1].depthwise_conv.conv,
        head.fuse_layer.aspp_modules[2].pointwise_conv.conv,
        head.fuse_layer.bottleneck.conv,
    ):
        w = conv.weight
        fan_out = w.shape[0] * w.shape[2] * w.shape[3]
        expected = math.sqrt(2.0 / fan_out)
        assert abs(w.std().item() / expected - 1) < 0.05, conv
    for m in head.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    # embedding Linear: torch default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
    for i, c in enumerate((32, 64, 160, 256)):
        proj = head.embed_layers[str(i)].proj
        bound = 1 / math.sqrt(c)
        assert proj.weight.abs().max() <= bound and proj.bias.abs().max() <= bound
        assert abs(proj.weight.std().item() / (bound / math.sqrt(3)) - 1) < 0.05


def _reference_forward(head: DAFormerHead, feats, dilations):
    """Section 3.2 written with functional ops from the head's weights (eval-mode BN)."""
    sd = head.state_dict()

    def cbr(x, p, **conv_kw):
        x = F.conv2d(x, sd[f"{p}.conv.weight"], None, **conv_kw)
        x = F.batch_norm(x, sd[f"{p}.bn.running_mean"], sd[f"{p}.bn.running_var"], sd[f"{p}.bn.weight"],
                         sd[f"{p}.bn.bias"], training=False, eps=1e-5)
        return F.relu(x)

    size = feats[0].shape[-2:]
    embedded = []
    for i, f in enumerate(feats):
        e = torch.einsum("nchw,dc->ndhw", f, sd[f"embed_layers.{i}.proj.weight"])
        e = e + sd[f"embed_layers.{i}.proj.bias"].view(1, -1, 1, 1)
        if e.shape[-2:] != size:
            e = F.interpolate(e, size=size, mode="bilinear", align_corners=False)
        embedded.append(e)
    x = torch.cat(embedded, 1)
    branches = []
    for k, d in enumerate(dilations):
        p = f"fuse_layer.aspp_modules.{k}"
        if d == 1:
            branches.append(cbr(x, p))
        else:
            y = cbr(x, f"{p}.depthwise_conv", padding=d, dilation=d, groups=x.shape[1])
            branches.append(cbr(y, f"{p}.pointwise_conv"))
    x = cbr(torch.cat(branches, 1), "fuse_layer.bottleneck", padding=1)
    return F.conv2d(x, sd["conv_seg.weight"], sd["conv_seg.bias"])


def test_forward_equals_reference_formula():
    dilations = (1, 2, 3)
    head = _head(embed_dim=16, channels=24, aspp_dilations=dilations, num_classes=5)
    # non-trivial BN statistics and conv_seg so that every term matters
    with torch.no_grad():
        for m in head.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        head.conv_seg.weight.normal_(0, 0.3)
    head.eval()
    feats = [torch.randn(2, c, h, w) for c, (h, w) in zip((32, 64, 160, 256), ((17, 29), (9, 15), (5, 8), (3, 4)))]
    with torch.no_grad():
        out = head(dict(zip(IN_FEATURES, feats)))
        ref = _reference_forward(head, feats, dilations)
    assert out.shape == (2, 5, 17, 29)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_dropout2d_drops_whole_channels_in_training_only():
    head = _head(embed_dim=16, channels=16, fusion="conv", dropout=0.5, num_classes=1)
    with torch.no_grad():
        head.conv_seg.weight.fill_(1.0)
        head.conv_seg.weight[0, 1:] = 0.0  # the output is channel 0 of the fused features
    feats = {n: torch.randn(1, s.channels, 8 >> i, 8 >> i) for i, (n, s) in enumerate(MIT_B0_SHAPES.items())}
    head.eval()
    with torch.no_grad():
        kept = head(feats)
    head.train()
    torch.manual_seed(3)
    with torch.no_grad():
        outs = [head(feats) for _ in range(20)]
    # each draw either zeroes channel 0 everywhere or scales it by 2 (BN uses batch stats in train mode,
    # so compare the pattern: the map is constant 0 or a non-zero map)
    patterns = {bool(torch.all(o == 0)) for o in outs}
    assert patterns == {True, False}
    assert kept.abs().sum() > 0
