"""Official DINOv2 checkpoints -> ``build_timm_backbone`` (hrda_d2/checkpoint/dinov2_conversion.py, the CLI).

The independent cross-check: a random state dict in the OFFICIAL DINOv2 key layout (facebookresearch/dinov2,
``DinoVisionTransformer`` of ViT-S/14) goes (a) through this project's converter into our backbone and (b)
through transformers' own DINOv2 conversion (the key renaming and q/k/v split of
``src/transformers/models/dinov2/convert_dinov2_to_hf.py``, written out here, then ``from_pretrained`` of a
local folder, which applies the installed transformers' own legacy-name mapping) into
``transformers.Dinov2Model`` / ``Dinov2WithRegistersModel`` (eager attention). Both must give the same
last-block patch tokens (after the final LayerNorm) at an input where both use the checkpoint's own 4 x 4
token grid: 64 x 64 for ours (stride 16), the same image resized to 56 x 56 for transformers (patch 14), our
backbone's documented resize.
"""
import importlib.util
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from hrda_d2 import add_hrda_config
from hrda_d2.checkpoint import CheckpointConversionError, convert_checkpoint
from hrda_d2.modeling.backbone import build_timm_backbone

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "convert_mmseg_checkpoint.py"
VITS = {"dim": 384, "depth": 12, "heads": 6}
GRID = 4  # token grid of the random "checkpoint" (official files: 37 = 518 / 14)


def official_dinov2_state_dict(dim: int, depth: int, grid: int, registers: int = 0, chunks: int = 0,
                               seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """Random tensors under the key names and shapes of an official DINOv2 backbone file (MLP blocks,
    LayerScale, qkv with bias, 14 x 14 patches, position embedding with the class position first)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, std=0.05, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    sd = OrderedDict()
    sd["cls_token"] = rand(1, 1, dim, std=0.5)
    sd["pos_embed"] = rand(1, 1 + grid * grid, dim, std=0.5)
    if registers:
        sd["register_tokens"] = rand(1, registers, dim, std=0.5)
    sd["mask_token"] = rand(1, dim)
    sd["patch_embed.proj.weight"] = rand(dim, 3, 14, 14)
    sd["patch_embed.proj.bias"] = rand(dim)
    for i in range(depth):
        b = f"blocks.{i // (depth // chunks)}.{i}" if chunks else f"blocks.{i}"
        sd.update({
            f"{b}.norm1.weight": rand(dim, std=0.1, mean=1.0), f"{b}.norm1.bias": rand(dim),
            f"{b}.attn.qkv.weight": rand(3 * dim, dim), f"{b}.attn.qkv.bias": rand(3 * dim),
            f"{b}.attn.proj.weight": rand(dim, dim), f"{b}.attn.proj.bias": rand(dim),
            f"{b}.ls1.gamma": rand(dim, std=0.1, mean=0.5),
            f"{b}.norm2.weight": rand(dim, std=0.1, mean=1.0), f"{b}.norm2.bias": rand(dim),
            f"{b}.mlp.fc1.weight": rand(4 * dim, dim), f"{b}.mlp.fc1.bias": rand(4 * dim),
            f"{b}.mlp.fc2.weight": rand(dim, 4 * dim), f"{b}.mlp.fc2.bias": rand(dim),
            f"{b}.ls2.gamma": rand(dim, std=0.1, mean=0.5),
        })
    sd["norm.weight"] = rand(dim, std=0.1, mean=1.0)
    sd["norm.bias"] = rand(dim)
    return sd


def transformers_state_dict(sd, depth: int, dim: int) -> "OrderedDict[str, torch.Tensor]":
    """transformers' conversion of an official DINOv2 state dict (convert_dinov2_to_hf.py: create_rename_keys,
    read_in_q_k_v; registers: embeddings.register_tokens), restated here."""
    out = OrderedDict()
    out["embeddings.cls_token"] = sd["cls_token"]
    out["embeddings.mask_token"] = sd["mask_token"]
    out["embeddings.position_embeddings"] = sd["pos_embed"]
    if "register_tokens" in sd:
        out["embeddings.register_tokens"] = sd["register_tokens"]
    out["embeddings.patch_embeddings.projection.weight"] = sd["patch_embed.proj.weight"]
    out["embeddings.patch_embeddings.projection.bias"] = sd["patch_embed.proj.bias"]
    for i in range(depth):
        src, dst = f"blocks.{i}", f"encoder.layer.{i}"
        for name in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                     "mlp.fc2.weight", "mlp.fc2.bias"):
            out[f"{dst}.{name}"] = sd[f"{src}.{name}"]
        out[f"{dst}.layer_scale1.lambda1"] = sd[f"{src}.ls1.gamma"]
        out[f"{dst}.layer_scale2.lambda1"] = sd[f"{src}.ls2.gamma"]
        out[f"{dst}.attention.output.dense.weight"] = sd[f"{src}.attn.proj.weight"]
        out[f"{dst}.attention.output.dense.bias"] = sd[f"{src}.attn.proj.bias"]
        w, b = sd[f"{src}.attn.qkv.weight"], sd[f"{src}.attn.qkv.bias"]
        for j, part in enumerate(("query", "key", "value")):
            out[f"{dst}.attention.attention.{part}.weight"] = w[j * dim:(j + 1) * dim]
            out[f"{dst}.attention.attention.{part}.bias"] = b[j * dim:(j + 1) * dim]
    out["layernorm.weight"] = sd["norm.weight"]
    out["layernorm.bias"] = sd["norm.bias"]
    return out


def transformers_model(sd, folder: Path, registers: int):
    """``Dinov2Model`` (or ``Dinov2WithRegistersModel``) from a local folder holding the converted weights."""
    from safetensors.torch import save_file
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    common = dict(hidden_size=VITS["dim"], num_hidden_layers=VITS["depth"], num_attention_heads=VITS["heads"],
                  image_size=GRID * 14, patch_size=14, layer_norm_eps=1e-6, mlp_ratio=4)
    config_cls, model_cls = (Dinov2WithRegistersConfig, Dinov2WithRegistersModel) if registers else (
        Dinov2Config, Dinov2Model)
    config = config_cls(num_register_tokens=registers, **common) if registers else config_cls(**common)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    hf = transformers_state_dict(sd, VITS["depth"], VITS["dim"])
    save_file({k: v.contiguous() for k, v in hf.items()}, str(folder / "model.safetensors"))
    # eager attention: softmax(q k^T / sqrt(d)) v written out, not the fused kernel timm also calls
    model, info = model_cls.from_pretrained(folder, output_loading_info=True, attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def timm_cfg(name: str, img_size=(GRID * 16, GRID * 16)):
    cfg = add_hrda_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_timm_backbone"
    cfg.MODEL.TIMM.NAME = name
    cfg.MODEL.TIMM.DROP_PATH_RATE = 0.0
    cfg.MODEL.TIMM.IMG_SIZE = list(img_size)
    return cfg


def load_converted(cfg, state_dict):
    """Our backbone with a converted state dict (``backbone.*`` keys) loaded through Detectron2's checkpointer;
    returns ``(backbone, missing backbone keys, unexpected keys)``."""
    backbone = build_timm_backbone(cfg).eval()
    wrapper = torch.nn.Module()
    wrapper.backbone = backbone
    incompatible = DetectionCheckpointer(wrapper)._load_model({"model": dict(state_dict), "__author__": "test"})
    return backbone, incompatible.missing_keys, incompatible.unexpected_keys


@pytest.mark.parametrize("registers", [0, 4])
def test_converted_dinov2_matches_transformers_dinov2(tmp_path, registers):
    sd = official_dinov2_state_dict(VITS["dim"], VITS["depth"], GRID, registers=registers)
    result = convert_checkpoint({k: v.clone() for k, v in sd.items()}, source="dinov2_vits14.pth",
                                      vit_img_size=(GRID * 16, GRID * 16))
    name = "vit_small_patch14_reg4_dinov2" if registers else "vit_small_patch14_dinov2"
    assert result.backbone == name and result.dropped_keys == ["mask_token"]
    backbone, missing, unexpected = load_converted(timm_cfg(name), result.state_dict)
    assert unexpected == []
    assert [k for k in missing if not k.startswith("backbone.simfp_")] == [], missing  # only the new pyramid

    hf = transformers_model(sd, tmp_path / "hf", registers)
    x = torch.randn(2, 3, GRID * 16, GRID * 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = backbone(x)["vit_tokens"]  # N x C x 4 x 4 (deepest default block = the last, 11)
        theirs = hf(pixel_values=F.interpolate(x, size=(GRID * 14, GRID * 14), mode="bilinear",
                                               align_corners=False)).last_hidden_state
    prefix = 1 + registers
    theirs = theirs[:, prefix:].transpose(1, 2).reshape(2, VITS["dim"], GRID, GRID)
    diff = (ours - theirs).abs().max().item()
    print(f"DINOv2 ViT-S/14 (registers={registers}) ours vs transformers: max abs diff {diff:.3g}, "
          f"feature std {theirs.std().item():.3g}")
    assert ours.dtype == torch.float32 and diff <= 1e-4


def test_position_embedding_is_resized_and_chunked_blocks_flattened():
    """37 x 37 -> 32 x 32 (MODEL.TIMM.IMG_SIZE 512) for a chunked ViT-S file with registers; the class position
    is folded into the class token (timm's no_embed_class layout for register models)."""
    sd = official_dinov2_state_dict(VITS["dim"], VITS["depth"], 37, registers=4, chunks=4)
    result = convert_checkpoint(sd, source="chunked.pth")
    out = result.state_dict
    p = "backbone.net.vit."
    assert out[p + "pos_embed"].shape == (1, 32 * 32, VITS["dim"])
    assert torch.equal(out[p + "cls_token"], sd["cls_token"] + sd["pos_embed"][:, :1])
    assert torch.equal(out[p + "blocks.11.attn.qkv.weight"], sd["blocks.3.11.attn.qkv.weight"])
    # the resized grid is the bicubic (antialiased) image resize of the 37 x 37 grid
    grid = sd["pos_embed"][:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
    assert torch.allclose(out[p + "pos_embed"], expected.permute(0, 2, 3, 1).reshape(1, 1024, -1), atol=1e-6)
    _, missing, unexpected = load_converted(timm_cfg("vit_small_patch14_reg4_dinov2", (512, 512)), out)
    assert unexpected == [] and [k for k in missing if not k.startswith("backbone.simfp_")] == []


@pytest.fixture(scope="module")
def tool():
    module_spec = importlib.util.spec_from_file_location("convert_mmseg_checkpoint_cli", TOOL)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_cli_writes_a_checkpoint_for_model_weights(tool, tmp_path, capsys):
    sd = official_dinov2_state_dict(VITS["dim"], VITS["depth"], GRID)
    src, dst = tmp_path / "dinov2_vits14_pretrain.pth", tmp_path / "out" / "dinov2_vits14_d2.pth"
    torch.save(sd, src)
    assert tool.main([str(src), str(dst), "--vit-img-size", "64", "96"]) == 0
    text = capsys.readouterr().out
    assert "MODEL.TIMM.NAME vit_small_patch14_dinov2" in text and "MODEL.TIMM.IMG_SIZE [64, 96]" in text
    data = torch.load(dst, map_location="cpu", weights_only=True)
    assert data["model"]["backbone.net.vit.pos_embed"].shape == (1, 1 + 4 * 6, VITS["dim"])
    # MODEL.WEIGHTS of a whole HRDA model: Detectron2's checkpointer loads every ViT tensor unchanged
    cfg = timm_cfg("vit_small_patch14_dinov2", (64, 96))
    cfg.MODEL.SEM_SEG_HEAD.EMBED_DIM = cfg.MODEL.HRDA.ATTENTION_EMBED_DIM = 32
    model = build_model(cfg)
    DetectionCheckpointer(model).load(str(dst))
    vit = model.backbone.net.vit
    assert torch.equal(vit.blocks[11].mlp.fc2.weight, sd["blocks.11.mlp.fc2.weight"])
    assert torch.equal(vit.patch_embed.proj.weight, sd["patch_embed.proj.weight"])
    assert torch.equal(vit.cls_token, sd["cls_token"]) and vit.pos_embed.shape == (1, 25, VITS["dim"])


@pytest.mark.parametrize("case", ["giant_swiglu", "eight_registers", "two_blocks", "unknown_layout"])
def test_other_layouts_give_a_clear_error_and_no_file(tool, tmp_path, capsys, case):
    sd = official_dinov2_state_dict(VITS["dim"], 2, GRID, registers=8 if case == "eight_registers" else 0)
    if case == "giant_swiglu":
        sd = OrderedDict((k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3"), v) for k, v in sd.items())
    elif case == "unknown_layout":
        sd = OrderedDict(("encoder." + k, v) for k, v in sd.items())
    src, dst = tmp_path / "in.pth", tmp_path / "out.pth"
    torch.save(sd, src)
    assert tool.main([str(src), str(dst)]) == 1
    err = capsys.readouterr().err
    expected = {"giant_swiglu": "SwiGLU", "eight_registers": "8 register tokens", "two_blocks": "2 blocks of width 384",
                "unknown_layout": "DINOv2 backbone"}
    assert expected[case] in err, err
    assert not dst.exists() and list(tmp_path.iterdir()) == [src]
    if case != "unknown_layout":
        with pytest.raises(CheckpointConversionError):
            convert_checkpoint(sd)
