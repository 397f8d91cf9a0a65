"""Leaf converter: the DeepLabV2 parts of the original (docs/method.md §13, §18.1, §18.2).

* ResNet-V1c backbones (mmseg ``ResNetV1c``; the mmcv model-zoo ImageNet file ``open-mmlab://resnet101_v1c``, or
  ``backbone.*`` of a segmentor) -> Detectron2's ResNet names (``modeling/backbone/resnet_v1c.py``):

  =====================================  ==========================================
  original                               here
  =====================================  ==========================================
  ``stem.{0,3,6}.weight``                ``stem.conv{1,2,3}.weight``
  ``stem.{1,4,7}.*`` (BN)                ``stem.conv{1,2,3}.norm.*``
  ``layer<k>.<i>.conv<j>.weight``        ``res<k+1>.<i>.conv<j>.weight``
  ``layer<k>.<i>.bn<j>.*``               ``res<k+1>.<i>.conv<j>.norm.*``
  ``layer<k>.<i>.downsample.0.weight``   ``res<k+1>.<i>.shortcut.weight``
  ``layer<k>.<i>.downsample.1.*``        ``res<k+1>.<i>.shortcut.norm.*``
  ``fc.*`` (ImageNet classifier)         dropped
  =====================================  ==========================================

* DeepLabV2 heads (``DLV2Head``): ``aspp_modules.<i>.conv.{weight,bias}`` -> ``aspp_modules.<i>.{weight,bias}``.

The depth is read from the number of blocks per stage; every key and shape is checked against the architecture.
"""
import re
from collections import OrderedDict
from typing import Any, Mapping, Optional, Tuple

import torch

from ..modeling.backbone.resnet_v1c import RESNET_BLOCKS_PER_STAGE
from .conversion_types import (
    CheckpointConversionError,
    ConversionRequest,
    ConvertedCheckpoint,
    HeadSummary,
    OriginalLayout,
    first_items,
    shape_mismatches,
)

__all__ = [
    "LAYOUTS",
    "LAYOUT_RESNET_IMAGENET",
    "convert_dlv2_head",
    "convert_resnet_v1c",
    "is_dlv2_head",
    "is_resnet_v1c",
    "resnet_v1c_key",
    "resnet_v1c_state_dict_shapes",
]

LAYOUT_RESNET_IMAGENET = "mmcv ResNet-V1c ImageNet state dict"
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_STEM = {"0": "conv1", "1": "conv1.norm", "3": "conv2", "4": "conv2.norm", "6": "conv3", "7": "conv3.norm"}


def is_resnet_v1c(sd: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``sd`` (backbone keys, original names) is a ResNet with the V1c deep stem."""
    return "stem.0.weight" in sd and "stem.6.weight" in sd and any(k.startswith("layer1.") for k in sd)


def is_dlv2_head(sd: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``sd`` (decode-head keys) is a ``DLV2Head``: nothing but ``aspp_modules.<i>.conv.*``."""
    return bool(sd) and all(re.match(r"aspp_modules\.\d+\.conv\.(weight|bias)$", k) for k in sd)


def resnet_v1c_state_dict_shapes(depth: int, in_channels: int = 3, stem: int = 64) -> "OrderedDict[str, Tuple]":
    """Key -> shape of an original ResNet-V1c state dict (without ``fc.*``); BN entries include
    ``num_batches_tracked`` (shape ``()``)."""
    shapes: "OrderedDict[str, Tuple]" = OrderedDict()

    def bn(prefix: str, channels: int) -> None:
        shapes.update({f"{prefix}.{p}": (() if p == "num_batches_tracked" else (channels,)) for p in _BN})

    half = stem // 2
    for index, (cin, cout) in zip(("0", "3", "6"), ((in_channels, half), (half, half), (half, stem))):
        shapes[f"stem.{index}.weight"] = (cout, cin, 3, 3)
        bn(f"stem.{int(index) + 1}", cout)
    inplanes, planes = stem, 64
    for k, blocks in enumerate(RESNET_BLOCKS_PER_STAGE[depth], start=1):
        for i in range(blocks):
            p = f"layer{k}.{i}"
            cin = inplanes if i == 0 else planes * 4
            for j, (a, b, size) in enumerate(((cin, planes, 1), (planes, planes, 3), (planes, planes * 4, 1)), 1):
                shapes[f"{p}.conv{j}.weight"] = (b, a, size, size)
                bn(f"{p}.bn{j}", b)
            if i == 0:
                shapes[f"{p}.downsample.0.weight"] = (planes * 4, cin, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
        inplanes, planes = planes * 4, planes * 2
    return shapes


def _depth_of(sd: Mapping[str, torch.Tensor], where: str) -> int:
    blocks = tuple(len({m.group(1) for key in sd for m in [re.match(rf"layer{k}\.(\d+)\.", key)] if m})
                   for k in range(1, 5))
    depth = next((d for d, b in RESNET_BLOCKS_PER_STAGE.items() if b == blocks), None)
    if depth is None:
        known = ", ".join(f"ResNet-{d}: {list(b)}" for d, b in RESNET_BLOCKS_PER_STAGE.items())
        raise CheckpointConversionError(f"{where}: ResNet with {list(blocks)} blocks per stage is not a known depth "
                                        f"({known})")
    return depth


def resnet_v1c_key(key: str) -> str:
    """This project's name of an original ResNet-V1c key (``layer3.22.conv2.weight`` -> ``res4.22.conv2.weight``)."""
    parts = key.split(".")
    if parts[0] == "stem":
        return f"stem.{_STEM[parts[1]]}.{'.'.join(parts[2:])}"
    stage, block, layer = f"res{int(parts[0][5:]) + 1}", parts[1], parts[2]
    if layer == "downsample":
        return f"{stage}.{block}.shortcut{'.norm' if parts[3] == '1' else ''}.{'.'.join(parts[4:])}"
    j = layer[-1]
    return f"{stage}.{block}.conv{j}{'.norm' if layer.startswith('bn') else ''}.{'.'.join(parts[3:])}"


def convert_resnet_v1c(sd: Mapping[str, torch.Tensor], where: str) -> Tuple["OrderedDict[str, torch.Tensor]", str]:
    """Original ResNet-V1c keys (``fc.*`` ignored) -> Detectron2 ResNet keys; returns ``(state dict, name)``,
    name ``resnet<depth>_v1c``. Missing / unexpected keys and wrong shapes raise, naming them."""
    backbone = OrderedDict((k, v) for k, v in sd.items() if not k.startswith("fc."))
    depth = _depth_of(backbone, where)
    expected = resnet_v1c_state_dict_shapes(depth, int(backbone["stem.0.weight"].shape[1]),
                                            int(backbone["stem.6.weight"].shape[0]))
    optional = [k for k in expected if k.endswith("num_batches_tracked")]  # older torch saves have none
    missing, unexpected, wrong = shape_mismatches(backbone, expected, optional)
    if missing or unexpected or wrong:
        raise CheckpointConversionError(
            f"{where}: inconsistent ResNet-{depth}-V1c weights: missing [{first_items(missing)}], unexpected "
            f"[{first_items(unexpected)}], wrong shapes [{first_items(wrong)}]")
    return OrderedDict((resnet_v1c_key(k), v) for k, v in backbone.items()), f"resnet{depth}_v1c"


def convert_dlv2_head(sd: Mapping[str, torch.Tensor], in_channels: int, where: str) -> Tuple[
        "OrderedDict[str, torch.Tensor]", HeadSummary]:
    """``DLV2Head`` keys -> this project's ``DLV2Head`` keys and what they say (classes, branches)."""
    branches = sorted({int(k.split(".")[1]) for k in sd})
    if branches != list(range(len(branches))):
        raise CheckpointConversionError(f"{where}: DLV2Head branches {branches}; expected aspp_modules.0 ... <n-1>")
    weights = [sd.get(f"aspp_modules.{i}.conv.weight") for i in branches]
    if any(w is None or w.dim() != 4 or w.shape[1] != in_channels or w.shape[0] != weights[0].shape[0]
           or f"aspp_modules.{i}.conv.bias" not in sd for i, w in enumerate(weights)):
        raise CheckpointConversionError(
            f"{where}: DLV2Head branches must each hold a conv [K, {in_channels}, k, k] with a bias, found "
            f"[{first_items(f'{k} {tuple(v.shape)}' for k, v in sd.items())}]")
    state = OrderedDict((k.replace(".conv.", "."), v) for k, v in sd.items())
    return state, HeadSummary(int(weights[0].shape[0]), 0, in_channels, "dlv2", len(branches))


def _is_resnet_imagenet(sd: Mapping[str, torch.Tensor]) -> bool:
    return is_resnet_v1c(sd) and not any(k.startswith(("backbone.", "decode_head.")) for k in sd)


def _convert_imagenet(sd: Mapping[str, torch.Tensor], meta: Optional[Mapping[str, Any]],
                      request: ConversionRequest) -> ConvertedCheckpoint:
    backbone, name = convert_resnet_v1c(sd, request.source)
    state = OrderedDict(("backbone." + k, v) for k, v in backbone.items())
    dropped = [k for k in sd if k.startswith("fc.")]
    return ConvertedCheckpoint(state, LAYOUT_RESNET_IMAGENET, name, "", None, None, meta, dropped)


LAYOUTS = (
    OriginalLayout(
        name=LAYOUT_RESNET_IMAGENET,
        expected="the mmcv model-zoo ResNet-V1c ImageNet weights (open-mmlab://resnet101_v1c, resnet101_v1c-*.pth):\n"
                 "     stem.0.weight, stem.1.*, ..., layer1.0.conv1.weight, ..., layer4.2.bn3.* (+ fc.weight, fc.bias)",
        description="an mmcv ResNet-V1c ImageNet file (stem.* / layer1.* keys)",
        detect=_is_resnet_imagenet,
        convert=_convert_imagenet,
    ),
)

