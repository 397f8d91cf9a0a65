"""MiT backbone: published variant settings, shapes/strides, parameter counts, numerics against the original
implementation's reference outputs and against HuggingFace transformers' SegformerModel."""
import math
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from torch import nn

from hrda_d2 import add_hrda_config
from hrda_d2.checkpoint import convert_checkpoint, load_checkpoint_file, mit_state_dict_shapes
from hrda_d2.modeling.backbone import MIT_VARIANTS, MixVisionTransformer, build_mit_backbone
from tests.helpers.paths import REFERENCE_DIR, REPO_ROOT
from tests.helpers.scripts import import_script
from tests.fixtures.hrda_reference import make_original_files as mof

REF = REFERENCE_DIR

# docs section 2.1 (embed_dims, num_heads, depths)
PUBLISHED = {
    "mit_b0": ([32, 64, 160, 256], [1, 2, 5, 8], [2, 2, 2, 2]),
    "mit_b1": ([64, 128, 320, 512], [1, 2, 5, 8], [2, 2, 2, 2]),
    "mit_b2": ([64, 128, 320, 512], [1, 2, 5, 8], [3, 4, 6, 3]),
    "mit_b3": ([64, 128, 320, 512], [1, 2, 5, 8], [3, 4, 18, 3]),
    "mit_b4": ([64, 128, 320, 512], [1, 2, 5, 8], [3, 8, 27, 3]),
    "mit_b5": ([64, 128, 320, 512], [1, 2, 5, 8], [3, 6, 40, 3]),
}
# Parameter counts without the ImageNet classifier. Derived by hand from the layer list of docs 2.2
# (see mit_param_count_from_reference) and equal to transformers' SegformerModel for the same config:
#   b0: 3,319,392   b5: 81,443,008
MIT_B0_PARAMS = 3_319_392
MIT_B5_PARAMS = 81_443_008


def mit_cfg(variant: str, **mit_overrides):
    cfg = add_hrda_config(get_cfg())
    cfg.MODEL.MIT.VARIANT = variant
    for key, value in mit_overrides.items():
        cfg.MODEL.MIT[key] = value
    return cfg


def mit_param_count_from_reference(dims, depths, mlp_ratio=4, sr_ratios=(8, 4, 2, 1), in_channels=3) -> int:
    """Count of docs 2.2: patch-embed conv + LN; per block norm1, q, kv, proj, [sr conv + LN], norm2, fc1,
    depthwise 3x3, fc2; stage LN."""
    total, prev = 0, in_channels
    for s, (c, depth) in enumerate(zip(dims, depths)):
        k, r, hidden = (7 if s == 0 else 3), sr_ratios[s], mlp_ratio * c
        total += k * k * prev * c + c + 2 * c
        block = 2 * c + (c * c + c) + (2 * c * c + 2 * c) + (c * c + c)
        block += (c * c * r * r + c + 2 * c) if r > 1 else 0
        block += 2 * c + (hidden * c + hidden) + (hidden * 9 + hidden) + (c * hidden + c)
        total += depth * block + 2 * c
        prev = c
    return total


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def rel_max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# ------------------------------------------------------------------------------------------------------------
# variants, shapes, parameter counts
# ------------------------------------------------------------------------------------------------------------
def test_variant_table_is_the_published_one():
    assert sorted(MIT_VARIANTS) == sorted(PUBLISHED)
    for name, (dims, heads, depths) in PUBLISHED.items():
        v = MIT_VARIANTS[name]
        assert (list(v.embed_dims), list(v.num_heads), list(v.depths)) == (dims, heads, depths), name
        assert list(v.mlp_ratios) == [4, 4, 4, 4] and list(v.sr_ratios) == [8, 4, 2, 1]


def check_output_shapes(variant: str, device: str, h: int, w: int) -> None:
    with torch.device(device):
        model = build_mit_backbone(mit_cfg(variant)).eval()
        x = torch.randn(1, 3, h, w)
    dims = PUBLISHED[variant][0]
    specs = model.output_shape()
    assert list(specs) == ["res2", "res3", "res4", "res5"]
    assert [specs[k].channels for k in specs] == dims
    assert [specs[k].stride for k in specs] == [4, 8, 16, 32]
    with torch.no_grad():
        out = model(x)
    for (name, y), c, s in zip(out.items(), dims, (4, 8, 16, 32)):
        assert tuple(y.shape) == (1, c, h // s, w // s), name


# b0-b2 run on CPU; the deep variants b3-b5 propagate shapes on the meta device (no weights, no compute) to keep
# the default run short (their real forward: the slow test below and the transformers cross-check of b2).
@pytest.mark.parametrize("variant,device", [("mit_b0", "cpu"), ("mit_b1", "cpu"), ("mit_b2", "cpu"),
                                            ("mit_b3", "meta"), ("mit_b4", "meta"), ("mit_b5", "meta")])
def test_output_shapes_and_strides(variant, device):
    check_output_shapes(variant, device, 64, 96)


@pytest.mark.slow
def test_output_shapes_mit_b5_cpu():
    check_output_shapes("mit_b5", "cpu", 64, 64)


def test_non_divisible_input_sizes_ceil_in_embeddings_floor_in_spatial_reduction():
    model = build_mit_backbone(mit_cfg("mit_b0")).eval()
    reduced = {}
    for s in (1, 2, 3):
        getattr(model, f"block{s}")[0].attn.sr.register_forward_hook(
            lambda m, i, o, s=s: reduced.__setitem__(s, tuple(o.shape[-2:])))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 100, 164))
    # ceil(100/4)=25, ceil(164/4)=41, then ceil(/2) per stage
    assert [tuple(y.shape[-2:]) for y in out.values()] == [(25, 41), (13, 21), (7, 11), (4, 6)]
    # keys/values: floor(25/8) x floor(41/8), floor(13/4) x floor(21/4), floor(7/2) x floor(11/2)
    assert reduced == {1: (3, 5), 2: (3, 5), 3: (3, 5)}


def test_out_features_subset():
    model = build_mit_backbone(mit_cfg("mit_b0", OUT_FEATURES=["res3", "res5"]))
    assert list(model.output_shape()) == ["res3", "res5"]
    with torch.no_grad():
        assert list(model(torch.randn(1, 3, 64, 64))) == ["res3", "res5"]
    with pytest.raises(ValueError, match="res6"):
        build_mit_backbone(mit_cfg("mit_b0", OUT_FEATURES=["res6"]))
    with pytest.raises(ValueError, match="mit_b9"):
        build_mit_backbone(mit_cfg("mit_b9"))


def test_parameter_counts_b0_b5_match_reference_formula_and_transformers():
    transformers = pytest.importorskip("transformers")
    for variant, expected in (("mit_b0", MIT_B0_PARAMS), ("mit_b5", MIT_B5_PARAMS)):
        dims, heads, depths = PUBLISHED[variant]
        assert mit_param_count_from_reference(dims, depths) == expected
        config = transformers.SegformerConfig(hidden_sizes=dims, num_attention_heads=heads, depths=depths)
        with torch.device("meta"):
            assert n_params(transformers.SegformerModel(config)) == expected
            assert n_params(build_mit_backbone(mit_cfg(variant))) == expected


@pytest.mark.parametrize("variant", sorted(PUBLISHED))
def test_state_dict_keys_and_shapes_are_the_official_layout(variant):
    with torch.device("meta"):
        model = build_mit_backbone(mit_cfg(variant))
    shapes = OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items())
    assert shapes == mit_state_dict_shapes(MIT_VARIANTS[variant])


# ------------------------------------------------------------------------------------------------------------
# module details of docs 2.2 / 2.3
# ------------------------------------------------------------------------------------------------------------
def test_layer_norm_eps_values():
    model = build_mit_backbone(mit_cfg("mit_b0"))
    eps = {name: m.eps for name, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    assert len(eps) == 4 + 8 * 2 + 6 + 4  # patch embeds, block norm1/norm2, attn.norm (stages 1-3), stage norms
    for name, value in eps.items():
        expected = 1e-5 if re.fullmatch(r"patch_embed\d\.norm|block\d\.\d+\.attn\.norm", name) else 1e-6
        assert value == expected, name


def test_drop_path_linear_schedule_b5():
    with torch.device("meta"):
        model = build_mit_backbone(mit_cfg("mit_b5", DROP_PATH_RATE=0.1))
    blocks = [b for s in range(1, 5) for b in getattr(model, f"block{s}")]
    assert len(blocks) == 52
    assert isinstance(blocks[0].drop_path, nn.Identity)
    for k, block in enumerate(blocks[1:], start=1):
        assert block.drop_path.drop_prob == pytest.approx(0.1 * k / 51, rel=1e-6)
    assert blocks[-1].drop_path.drop_prob == pytest.approx(0.1)


def test_drop_path_is_per_sample_and_only_in_training():
    model = build_mit_backbone(mit_cfg("mit_b0", DROP_PATH_RATE=0.9))
    x = torch.randn(4, 3, 32, 32)  # 8 x 8 tokens in stage 1
    with torch.no_grad():
        model.eval()
        ref = model(x)["res5"]
        assert torch.equal(ref, model(x)["res5"])
        model.train()
        assert not torch.allclose(model(x)["res5"], model(x)["res5"])


def test_segformer_init_statistics():
    model = build_mit_backbone(mit_cfg("mit_b1"))
    fc1 = torch.cat([b.mlp.fc1.weight.flatten() for b in model.block3])
    assert fc1.std().item() == pytest.approx(0.02, rel=0.05) and fc1.abs().max().item() <= 2.0
    # Conv2d: N(0, sqrt(2 / fan_out)), fan_out = k*k*out/groups
    pe = model.patch_embed1.proj.weight
    assert pe.std().item() == pytest.approx(math.sqrt(2 / (7 * 7 * 64)), rel=0.05)
    dw = torch.cat([b.mlp.dwconv.dwconv.weight.flatten() for b in model.block3])
    assert dw.std().item() == pytest.approx(math.sqrt(2 / 9), rel=0.05)
    sr = model.block1[0].attn.sr.weight
    assert sr.std().item() == pytest.approx(math.sqrt(2 / (8 * 8 * 64)), rel=0.05)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert not p.any(), name
        elif "norm" in name:
            assert torch.all(p == 1), name


def test_sdpa_attention_equals_explicit_softmax():
    model = build_mit_backbone(mit_cfg("mit_b0"))
    for stage, (h, w) in ((2, (13, 21)), (3, (7, 11)), (4, (4, 6))):  # sr 4, 2, 1 and 2, 5, 8 heads
        attn = getattr(model, f"block{stage}")[0].attn
        for p in attn.parameters():
            nn.init.normal_(p, std=0.3)
        c, heads = attn.q.in_features, attn.num_heads
        d = c // heads
        x = torch.randn(2, h * w, c)
        with torch.no_grad():
            ours = attn(x, h, w)
            kv_in = x
            if attn.sr_ratio > 1:
                grid = F.conv2d(x.transpose(1, 2).reshape(2, c, h, w), attn.sr.weight, attn.sr.bias, stride=attn.sr_ratio)
                kv_in = F.layer_norm(grid.flatten(2).transpose(1, 2), (c,), attn.norm.weight, attn.norm.bias, 1e-5)
            q, kv = attn.q(x), attn.kv(kv_in)
            heads_out = []
            for i in range(heads):
                qi, ki, vi = q[..., i * d:(i + 1) * d], kv[..., i * d:(i + 1) * d], kv[..., c + i * d:c + (i + 1) * d]
                weights = torch.softmax(qi @ ki.transpose(1, 2) * d ** -0.5, dim=-1)
                heads_out.append(weights @ vi)
            explicit = attn.proj(torch.cat(heads_out, dim=-1))
        assert (ours - explicit).abs().max().item() <= 1e-5 * explicit.abs().max().item(), stage


# ------------------------------------------------------------------------------------------------------------
# numerics: the original implementation and transformers
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def imagenet_format_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("original") / mof.MIT_FILE
    torch.save(mof.mit_state_dict(mof.load_spec()), path)
    return path


def load_backbone_through_converter(path: Path, variant: str) -> MixVisionTransformer:
    converted = convert_checkpoint(load_checkpoint_file(path), source=str(path))
    assert converted.backbone == variant
    model = build_mit_backbone(mit_cfg(variant))
    model.load_state_dict({k[len("backbone."):]: v for k, v in converted.state_dict.items()}, strict=True)
    return model.eval()


def test_matches_original_implementation_reference(imagenet_format_file):
    io = np.load(REF / "mit_b0_io.npz")
    model = load_backbone_through_converter(imagenet_format_file, "mit_b0")
    with torch.no_grad():
        out = model(mof.normalize_uint8(io["image_rgb_uint8"]))
    for i, (name, y) in enumerate(out.items()):
        ref = torch.from_numpy(io[f"features_{i}"])
        assert y.shape == ref.shape, name
        assert rel_max_err(y, ref) <= 1e-4, (name, rel_max_err(y, ref))


def test_one_layer_norm_eps_everywhere_would_miss_the_reference(imagenet_format_file):
    """The reference weights make LayerNorm inputs tiny (README), so the two-eps quirk is visible."""
    io = np.load(REF / "mit_b0_io.npz")
    model = load_backbone_through_converter(imagenet_format_file, "mit_b0")
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            m.eps = 1e-5
    with torch.no_grad():
        out = model(mof.normalize_uint8(io["image_rgb_uint8"]))
    assert rel_max_err(out["res5"], torch.from_numpy(io["features_3"])) > 1e-2


def random_official_state_dict(variant: str, generator: torch.Generator) -> "OrderedDict[str, torch.Tensor]":
    """Random weights in the official SegFormer ImageNet layout (incl. the classifier)."""
    sd = OrderedDict()
    for key, shape in mit_state_dict_shapes(MIT_VARIANTS[variant]).items():
        if key.endswith("bias"):
            sd[key] = 0.1 * torch.randn(shape, generator=generator)
        elif len(shape) == 1:  # LayerNorm weights
            sd[key] = 1.0 + 0.2 * torch.randn(shape, generator=generator)
        else:
            fan_in = math.prod(shape[1:])
            sd[key] = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
    c = MIT_VARIANTS[variant].embed_dims[-1]
    sd["head.weight"] = torch.randn(1000, c, generator=generator) / math.sqrt(c)
    sd["head.bias"] = torch.zeros(1000)
    return sd


@pytest.mark.parametrize("variant", ["mit_b0", "mit_b2"])
def test_matches_transformers_segformer(variant, tmp_path):
    """Same random official-layout weights: ours through the converter, transformers' SegformerModel through the
    key mapping of transformers' SegFormer conversion script (tools/benchmarks/transformers_segformer.py)."""
    pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    load_transformers_segformer = import_script(
        REPO_ROOT / "tools" / "benchmarks" / "transformers_segformer.py", "transformers_segformer").load_transformers_segformer

    official = random_official_state_dict(variant, torch.Generator().manual_seed(3))
    path = tmp_path / "official.pth"
    torch.save(official, path)
    ours = load_backbone_through_converter(path, variant)
    # raises unless from_pretrained reports no missing / unexpected / mis-shaped keys; sets the original's 1e-6
    # eps on the block and stage norms (transformers uses 1e-5 for every LayerNorm)
    hf = load_transformers_segformer(official, variant, tmp_path / "hf")

    x = torch.randn(1, 3, 100, 164)
    with torch.no_grad():
        mine = list(ours(x).values())
        theirs = hf(x, output_hidden_states=True).hidden_states
    assert len(theirs) == 4
    for a, b in zip(mine, theirs):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= 1e-4
