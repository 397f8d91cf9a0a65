"""Official MiT weights -> HuggingFace ``transformers.SegformerModel``, for the backbone cross-check test and
``bench_mit.py`` only (``transformers`` is an optional, test-time dependency and is imported lazily).

The key mapping is the one of transformers' ``models/segformer/convert_segformer_original_to_pytorch.py``
(``rename_keys(encoder_only=True)`` + ``read_in_k_v``): it produces transformers' legacy SegFormer key layout
(``segformer.encoder.block.0.0.attention.self.key.weight``, ...), which ``SegformerModel.from_pretrained`` maps
to its current module names with transformers' own checkpoint-conversion rules.
"""
import re
from collections import OrderedDict
from pathlib import Path
from typing import Mapping, Union

import torch
from torch import nn

from hrda_d2.modeling.backbone.mit import BLOCK_NORM_EPS, MIT_VARIANTS

__all__ = ["load_transformers_segformer", "official_mit_to_transformers_legacy"]


def _legacy_key(key: str) -> str:
    key = "segformer.encoder." + key
    key = re.sub(r"patch_embed(\d)", lambda m: f"patch_embeddings.{int(m.group(1)) - 1}", key)
    key = key.replace("norm", "layer_norm")
    key = re.sub(r"encoder\.layer_norm(\d)", lambda m: f"encoder.layer_norm.{int(m.group(1)) - 1}", key)
    key = key.replace("layer_norm1", "layer_norm_1").replace("layer_norm2", "layer_norm_2")
    key = re.sub(r"block(\d)", lambda m: f"block.{int(m.group(1)) - 1}", key)
    key = key.replace("attn.q", "attention.self.query").replace("attn.proj", "attention.output.dense")
    key = key.replace("attn", "attention.self")
    return key.replace("fc1", "dense1").replace("fc2", "dense2")


def official_mit_to_transformers_legacy(
    state_dict: Mapping[str, torch.Tensor]
) -> "OrderedDict[str, torch.Tensor]":
    """Official MiT state dict (``head.*`` ignored) -> transformers' legacy SegFormer keys; each ``kv`` is split
    into ``key`` (first C rows) and ``value`` (last C rows)."""
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, value in state_dict.items():
        if key.startswith("head."):
            continue
        new = _legacy_key(key)
        match = re.search(r"\.attention\.self\.kv\.(weight|bias)$", new)
        if match:
            stem, kind, c = new[: match.start()], match.group(1), value.shape[0] // 2
            out[f"{stem}.attention.self.key.{kind}"] = value[:c].clone()
            out[f"{stem}.attention.self.value.{kind}"] = value[c:].clone()
        else:
            out[new] = value.clone()
    return out


def load_transformers_segformer(
    state_dict: Mapping[str, torch.Tensor], variant: str, workdir: Union[str, Path], original_eps: bool = True
) -> nn.Module:
    """``transformers.SegformerModel`` of ``variant`` with the official-layout weights ``state_dict``, eval mode.

    The weights go through ``from_pretrained`` (a safetensors file in ``workdir``), which must report no missing,
    unexpected or mis-shaped key (ValueError otherwise). transformers builds every LayerNorm with eps 1e-5;
    with ``original_eps`` the block and stage norms are set to the original's 1e-6 (docs/method.md §2.2).
    """
    import transformers
    from safetensors.torch import save_file

    v = MIT_VARIANTS[variant]
    workdir = Path(workdir)
    config = transformers.SegformerConfig(
        hidden_sizes=list(v.embed_dims), num_attention_heads=list(v.num_heads), depths=list(v.depths),
        sr_ratios=list(v.sr_ratios), mlp_ratios=list(v.mlp_ratios),
    )
    config.save_pretrained(workdir)
    save_file(official_mit_to_transformers_legacy(state_dict), str(workdir / "model.safetensors"),
              metadata={"format": "pt"})
    model, info = transformers.SegformerModel.from_pretrained(workdir, output_loading_info=True)
    problems = {k: sorted(info[k]) for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info[k]}
    if problems:
        raise ValueError(f"transformers.SegformerModel did not accept the converted weights: {problems}")
    if original_eps:
        for name, m in model.named_modules():
            if isinstance(m, nn.LayerNorm) and re.search(r"layernorm_(before|after)$|stages\.\d\.layer_norm$", name):
                m.eps = BLOCK_NORM_EPS
    return model.eval()
