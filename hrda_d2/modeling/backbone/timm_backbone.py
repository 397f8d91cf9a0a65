"""Any ``timm`` model as a Detectron2 backbone with the outputs ``res2``..``res5`` (strides 4, 8, 16, 32).

``build_timm_backbone`` (in ``BACKBONE_REGISTRY``) reads ``cfg.MODEL.TIMM`` and builds one of two backbones:

* :class:`TimmHierarchicalBackbone` for models with a feature hierarchy (ResNet, ConvNeXt, Swin, ...): timm's
  ``features_only`` wrapper, the levels of reduction 4, 8, 16 and 32 named ``res2``..``res5``;
* :class:`TimmViTBackbone` for plain vision transformers (timm's ``VisionTransformer``, e.g. DINOv2's
  ``vit_{small,base,large}_patch14_dinov2`` and their ``_reg4_`` variants with 4 registers): a simple feature
  pyramid (ViTDet; Detectron2's ``SimpleFeaturePyramid``, subclassed) on the normalised patch tokens of four
  blocks, plus the map ``vit_tokens`` (the deepest of those blocks, stride 16, ``embed_dim`` channels) for the
  ImageNet feature distance (``UDA.FD.FEATURE``).

These are the names and strides the DAFormer head and HRDA's crop alignment read (docs/method.md §3, §5.2):
HRDA maps a detail-crop box to logit pixels by dividing its corners by the stride of ``res2``, so the output
maps must be exactly ``H/4 x W/4`` (... ``H/32 x W/32``) of their input for every crop or slide window.

Weights: ``MODEL.TIMM.WEIGHTS`` is a local file in timm's own layout (``model.safetensors`` /
``pytorch_model.bin`` of the ``timm/<name>`` repositories on the Hugging Face hub), loaded through timm's
checkpoint filter (which resizes a ViT position embedding); nothing is ever downloaded. Official DINOv2
checkpoints are converted once with ``tools/convert_mmseg_checkpoint.py`` into a Detectron2 checkpoint for
``MODEL.WEIGHTS`` instead (``hrda_d2/checkpoint/dinov2_conversion.py``).
"""
import logging
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from detectron2.modeling.backbone.vit import SimpleFeaturePyramid
from timm.models.vision_transformer import VisionTransformer
from torch import nn

__all__ = [
    "PYRAMID_NAMES",
    "PYRAMID_STRIDES",
    "VIT_TOKENS",
    "VIT_TOKEN_STRIDE",
    "TimmHierarchicalBackbone",
    "TimmViTTrunk",
    "TimmViTBackbone",
    "build_timm_backbone",
    "create_timm_model",
    "default_vit_out_indices",
    "is_plain_vit",
]

logger = logging.getLogger(__name__)

PYRAMID_NAMES: Tuple[str, ...] = ("res2", "res3", "res4", "res5")
PYRAMID_STRIDES: Tuple[int, ...] = (4, 8, 16, 32)
# the extra output of a plain ViT: normalised patch tokens of its deepest selected block
VIT_TOKENS = "vit_tokens"
# every ViT token stands for VIT_TOKEN_STRIDE x VIT_TOKEN_STRIDE input pixels, whatever its patch size
VIT_TOKEN_STRIDE = 16
# name of the timm ViT inside TimmViTBackbone (state-dict prefix below ``backbone.``), for the converters
VIT_TRUNK_PREFIX = "net.vit."


def is_plain_vit(name: str) -> bool:
    """Whether the timm model ``name`` (optionally with a ``.tag``) is a plain ViT: a timm
    ``VisionTransformer`` (or subclass, e.g. DeiT), one token grid, no hierarchy. Built on the meta device."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    return isinstance(model, VisionTransformer)


def default_vit_out_indices(depth: int) -> List[int]:
    """The last block of each quarter of the depth, 0-based: 12 -> [2, 5, 8, 11], 24 -> [5, 11, 17, 23]
    (the blocks the DINOv2 / ViT-Adapter segmentation heads read for ViT-L)."""
    if depth < 4:
        raise ValueError(f"a plain ViT needs at least 4 blocks for res2..res5, this one has {depth}")
    return [depth * q // 4 - 1 for q in (1, 2, 3, 4)]


def create_timm_model(name: str, weights: str = "", **kwargs) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` with random weights, or with the weights of the LOCAL file
    ``weights`` (timm layout; timm's checkpoint filter adapts it, e.g. resizes a position embedding).

    Raises:
        FileNotFoundError: ``weights`` is set but is not a file; the message says how to get it.
    """
    if not weights:
        return timm.create_model(name, pretrained=False, **kwargs)
    if not os.path.isfile(weights):
        arch = name.split(".")[0]
        raise FileNotFoundError(
            f"MODEL.TIMM.WEIGHTS='{weights}' does not exist (MODEL.TIMM.NAME={name!r}). Nothing is downloaded at "
            f"run time: fetch the file once on a machine with internet access, e.g.\n"
            f"  huggingface-cli download timm/<{arch}.tag> model.safetensors --local-dir pretrained/{arch}\n"
            f"(the tags are listed by `python -c \"import timm; print(timm.list_pretrained('{arch}*'))\"`), and set "
            f"MODEL.TIMM.WEIGHTS to that file; or set MODEL.TIMM.WEIGHTS '' for random initialisation. For an "
            f"official DINOv2 checkpoint (dinov2_vit*14*_pretrain.pth) run tools/convert_mmseg_checkpoint.py and "
            f"use the result as MODEL.WEIGHTS instead.")
    logger.info("timm %s: weights from %s", name, weights)
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": weights}, **kwargs)


def _freeze(modules: Sequence[nn.Module]) -> None:
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(False)


def _freeze_parameters(params: Sequence[nn.Parameter]) -> None:
    for p in params:
        p.requires_grad_(False)


# ------------------------------------------------------------------------------------------------------------
# hierarchical models
# ------------------------------------------------------------------------------------------------------------
class TimmHierarchicalBackbone(Backbone):
    """A timm model with a feature hierarchy; ``forward(x: N x 3 x H x W) -> {res2: N x C2 x H/4 x W/4, ...,
    res5: N x C5 x H/32 x W/32}`` (exact sizes for sides that are multiples of 32; otherwise those of the timm
    model's convolutions/patch merging). NHWC features (Swin) are returned as NCHW.

    Child ``body`` is timm's ``features_only`` wrapper; its parameter names are the timm model's with the
    nesting dots of the top-level modules flattened (``stages_0``...).
    """

    @configurable
    def __init__(self, *, name: str, weights: str = "", out_indices: Sequence[int] = (),
                 drop_path_rate: float = 0.0, freeze_at: int = 0, checkpoint_activations: bool = False):
        """
        Args:
            name: timm model name (``resnet50``, ``convnext_base``, ``swin_base_patch4_window12_384``, ...).
            weights: local timm-layout weights file, or "" for random initialisation.
            out_indices: 4 indices into the model's ``feature_info`` giving res2..res5; empty = the levels of
                reduction 4, 8, 16, 32.
            drop_path_rate: stochastic depth (models that have it).
            freeze_at: 0 trains everything; k >= 1 freezes the stem (k = 1) and the stages of res2..res_k
                (Detectron2's ResNet convention); their BatchNorms become FrozenBatchNorm2d.
            checkpoint_activations: timm's gradient checkpointing of the stages (recompute in backward).
        """
        super().__init__()
        kwargs = {"features_only": True}
        if drop_path_rate > 0:
            kwargs["drop_path_rate"] = drop_path_rate
        with torch.device("meta"):
            try:  # window transformers (Swin) take any input size only with dynamic_img_size (masks per forward)
                probe = timm.create_model(name, pretrained=False, dynamic_img_size=True, **kwargs)
                kwargs["dynamic_img_size"] = True
            except TypeError:  # models without the option (CNNs) take any size anyway
                probe = timm.create_model(name, pretrained=False, **kwargs)
        reductions = probe.feature_info.reduction()
        del probe
        if not out_indices:
            missing = [s for s in PYRAMID_STRIDES if s not in reductions]
            if missing:
                raise ValueError(f"MODEL.TIMM.NAME={name!r} has feature reductions {reductions}, none at "
                                 f"{missing}: set MODEL.TIMM.OUT_INDICES to 4 indices for strides 4, 8, 16, 32")
            out_indices = [reductions.index(s) for s in PYRAMID_STRIDES]
        out_indices = [int(i) for i in out_indices]
        in_range = all(0 <= i < len(reductions) for i in out_indices)
        if len(out_indices) != 4 or not in_range or [reductions[i] for i in out_indices] != list(PYRAMID_STRIDES):
            raise ValueError(f"MODEL.TIMM.OUT_INDICES={out_indices} of {name!r} give reductions "
                             f"{[reductions[i] for i in out_indices if 0 <= i < len(reductions)]}; res2..res5 need "
                             f"{list(PYRAMID_STRIDES)} (the model has {reductions})")
        self.body = create_timm_model(name, weights, out_indices=tuple(out_indices), **kwargs)
        channels = self.body.feature_info.channels()
        self.nhwc = str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC")
        self._out_features = list(PYRAMID_NAMES)
        self._out_feature_channels = dict(zip(PYRAMID_NAMES, channels))
        self._out_feature_strides = dict(zip(PYRAMID_NAMES, PYRAMID_STRIDES))
        if checkpoint_activations:
            self.body.set_grad_checkpointing(True)
        self._freeze_at(freeze_at)

    @classmethod
    def from_config(cls, cfg, input_shape: Optional[ShapeSpec] = None) -> Dict:
        return _timm_config(cfg)

    def _freeze_at(self, freeze_at: int) -> None:
        if freeze_at <= 0:
            return
        if freeze_at > 5:
            raise ValueError(f"MODEL.TIMM.FREEZE_AT={freeze_at}: at most 5 (stem + res2..res5)")
        # children in forward order; the stem is everything before the module of res2
        children = list(self.body.named_children())
        stage_modules = [m.replace(".", "_") for m in self.body.feature_info.module_name()]
        last = stage_modules[freeze_at - 2] if freeze_at >= 2 else stage_modules[0]
        names = [n for n, _ in children]
        if last not in names:
            raise ValueError(f"MODEL.TIMM.FREEZE_AT={freeze_at} is not supported for {type(self.body).__name__} of "
                             f"this model (stage module {last!r} not among its children {names}); use 0")
        end = names.index(last) + (1 if freeze_at >= 2 else 0)
        frozen = [n for n, _ in children[:end]]
        for n in frozen:
            module = getattr(self.body, n)
            _freeze([module])
            setattr(self.body, n, FrozenBatchNorm2d.convert_frozen_batchnorm(module))
        logger.info("MODEL.TIMM.FREEZE_AT=%d: frozen %s", freeze_at, frozen)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.body(x)
        if self.nhwc:
            features = [f.permute(0, 3, 1, 2).contiguous() for f in features]
        return dict(zip(PYRAMID_NAMES, features))


# ------------------------------------------------------------------------------------------------------------
# plain ViTs
# ------------------------------------------------------------------------------------------------------------
class TimmViTTrunk(Backbone):
    """A timm ``VisionTransformer`` whose token grid has stride 16 in the input, for any patch size.

    ``forward(x: N x 3 x H x W) -> {"block<i>": N x C x ceil(H/16) x ceil(W/16)}`` for the selected blocks
    ``i`` (0-based), each normalised by the final LayerNorm (DINOv2's ``x_norm_patchtokens``; prefix tokens
    dropped). Blocks after the deepest selected one are removed (they would receive no gradient).

    How patch 14 becomes stride 16: the input is zero-padded at the bottom/right to a multiple of 16 (a no-op
    for HRDA's crops and windows, which are multiples of 32), then resized bilinearly by ``patch / 16`` (e.g.
    512 -> 448 for patch 14), so token ``(i, j)`` covers exactly the input pixels ``[16i, 16i+16) x
    [16j, 16j+16)``. Resizing the input was chosen over the alternatives because it keeps both the pretrained
    patch embedding and the alignment exact: (a) interpolating the position embedding alone cannot change the
    stride of the 14-pixel patch convolution; (b) resizing the patch-embedding kernel to 16 (FlexiViT) changes
    the pretrained weights; (c) VFM-UDA's resize of a 512 crop to 518 gives 37 tokens per 512 pixels, a stride of
    13.84 that no integer output stride matches. With this, the detail-crop boxes (multiples of
    ``CROP_COORD_DIVISIBLE``) map to whole logit pixels at stride 4 and overlapping slide windows see identical
    token boundaries relative to their own origin. The price is a 14/16 lower sampling density than the
    checkpoint's pretraining (a 512 crop is seen as 448 pixels).

    The position embedding is stored for ``img_size`` (input pixels of this project, i.e. a grid of
    ``img_size / 16``) and resampled by timm (bicubic) for other grids.
    """

    def __init__(self, name: str, weights: str = "", out_indices: Sequence[int] = (), drop_path_rate: float = 0.0,
                 img_size: Sequence[int] = (512, 512), checkpoint_activations: bool = False):
        super().__init__()
        probe_kwargs = {"num_classes": 0, "global_pool": ""}
        with torch.device("meta"):
            probe = timm.create_model(name, pretrained=False, **probe_kwargs)
        patch = probe.patch_embed.patch_size
        depth = len(probe.blocks)
        del probe
        self.patch_size: Tuple[int, int] = (int(patch[0]), int(patch[1]))
        self.grid_size: Tuple[int, int] = tuple(int(math.ceil(s / VIT_TOKEN_STRIDE)) for s in img_size)
        vit_img_size = tuple(g * p for g, p in zip(self.grid_size, self.patch_size))
        kwargs = dict(probe_kwargs, img_size=vit_img_size, dynamic_img_size=True, drop_path_rate=drop_path_rate)
        self.vit = create_timm_model(name, weights, **kwargs)
        self.out_indices = [int(i) for i in out_indices] if out_indices else default_vit_out_indices(depth)
        if len(self.out_indices) != 4 or sorted(set(self.out_indices)) != self.out_indices or not all(
                0 <= i < depth for i in self.out_indices):
            raise ValueError(f"MODEL.TIMM.OUT_INDICES={self.out_indices} for {name!r}: need 4 increasing block "
                             f"indices in [0, {depth - 1}] (the sources of res2, res3, res4, res5)")
        if self.out_indices[-1] < depth - 1:  # blocks after the deepest selected one would get no gradient
            self.vit.prune_intermediate_layers(self.out_indices, prune_norm=False, prune_head=True)
            logger.info("%s: blocks %d..%d removed (MODEL.TIMM.OUT_INDICES %s)", name, self.out_indices[-1] + 1,
                        depth - 1, self.out_indices)
        if checkpoint_activations:
            self.vit.set_grad_checkpointing(True)
        self.embed_dim = int(self.vit.embed_dim)
        self._out_features = [f"block{i}" for i in self.out_indices]
        self._out_feature_channels = {f: self.embed_dim for f in self._out_features}
        self._out_feature_strides = {f: VIT_TOKEN_STRIDE for f in self._out_features}

    def stem_parameters(self) -> List[nn.Parameter]:
        """Patch embedding, position embedding, class/register tokens (FREEZE_AT = 1)."""
        params = list(self.vit.patch_embed.parameters())
        for attr in ("pos_embed", "cls_token", "reg_token"):
            p = getattr(self.vit, attr, None)
            if isinstance(p, nn.Parameter):
                params.append(p)
        return params

    def resize_to_grid(self, x: torch.Tensor) -> torch.Tensor:
        """``N x 3 x H x W`` -> ``N x 3 x (h * p) x (w * p)`` with ``h = ceil(H/16)``: zero padding to a
        multiple of 16, then a bilinear resize (align_corners False, no antialiasing) unless ``p == 16``."""
        height, width = x.shape[-2:]
        grid = (int(math.ceil(height / VIT_TOKEN_STRIDE)), int(math.ceil(width / VIT_TOKEN_STRIDE)))
        pad_h, pad_w = grid[0] * VIT_TOKEN_STRIDE - height, grid[1] * VIT_TOKEN_STRIDE - width
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        size = (grid[0] * self.patch_size[0], grid[1] * self.patch_size[1])
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"TimmViTTrunk expects N x C x H x W images, got shape {tuple(x.shape)}")
        maps = self.vit.forward_intermediates(self.resize_to_grid(x), indices=self.out_indices, norm=True,
                                              stop_early=True, output_fmt="NCHW", intermediates_only=True)
        return dict(zip(self._out_features, maps))


class TimmViTBackbone(SimpleFeaturePyramid):
    """Plain ViT + simple feature pyramid (ViTDet) on four blocks -> ``res2``..``res5`` and ``vit_tokens``.

    ``forward(x: N x 3 x H x W) -> {res2: N x C_p x 4h x 4w, res3: N x C_p x 2h x 2w, res4: N x C_p x h x w,
    res5: N x C_p x floor(h/2) x floor(w/2), vit_tokens: N x C_vit x h x w}`` with ``h = ceil(H/16)``
    (``H/4`` ... ``H/32`` exactly for multiples of 32) and ``C_p = pyramid_channels``.

    Detectron2's ``SimpleFeaturePyramid`` builds the four scale stages (2 transposed convs / 1 transposed conv
    / identity / max-pool, then 1x1 and 3x3 convs with LayerNorm) on ONE input map; here stage ``k`` reads the
    tokens of block ``out_indices[k]`` (finest scale from the shallowest block, as in DINOv2's ViT-Adapter /
    BEiT segmentation set-ups), so the module names (``simfp_2`` .. ``simfp_5``, ``net``) are Detectron2's.
    The pyramid is newly initialised (Detectron2's defaults): weight files of the ViT hold only ``net.vit.*``.
    """

    @configurable
    def __init__(self, *, name: str, weights: str = "", out_indices: Sequence[int] = (),
                 drop_path_rate: float = 0.0, freeze_at: int = 0, checkpoint_activations: bool = False,
                 img_size: Sequence[int] = (512, 512), pyramid_channels: int = 256):
        """
        Args:
            name: timm ViT name, e.g. ``vit_base_patch14_dinov2`` or ``vit_large_patch14_reg4_dinov2``.
            weights: local timm-layout weights file, or "" (random, or loaded later through MODEL.WEIGHTS).
            out_indices: the 4 blocks (0-based) feeding res2..res5; empty = the last block of each depth quarter.
            drop_path_rate: stochastic depth of the last block (timm's linear schedule).
            freeze_at: 0 trains everything; 1 freezes the patch/position embeddings and prefix tokens; k >= 2
                also freezes blocks ``0 .. out_indices[k - 2]`` (everything res_k is computed from).
            checkpoint_activations: recompute each ViT block in the backward pass (timm gradient checkpointing).
            img_size: ``(H, W)`` input size whose grid (``H/16 x W/16``) the position embedding is stored for.
            pyramid_channels: channels of res2..res5.
        """
        trunk = TimmViTTrunk(name, weights, out_indices, drop_path_rate, img_size, checkpoint_activations)
        super().__init__(trunk, in_feature=trunk._out_features[-1], out_channels=pyramid_channels,
                         scale_factors=(4.0, 2.0, 1.0, 0.5), norm="LN")
        self.in_features = list(trunk._out_features)
        self._out_features = list(PYRAMID_NAMES) + [VIT_TOKENS]
        self._out_feature_strides = dict(zip(PYRAMID_NAMES, PYRAMID_STRIDES), **{VIT_TOKENS: VIT_TOKEN_STRIDE})
        self._out_feature_channels = dict({n: pyramid_channels for n in PYRAMID_NAMES},
                                          **{VIT_TOKENS: trunk.embed_dim})
        self._size_divisibility = 0  # any size: the trunk pads to a multiple of 16 itself
        if freeze_at > 0:
            if freeze_at > 5:
                raise ValueError(f"MODEL.TIMM.FREEZE_AT={freeze_at}: at most 5 (embeddings + res2..res5 blocks)")
            _freeze_parameters(trunk.stem_parameters())
            if freeze_at >= 2:
                _freeze(trunk.vit.blocks[: trunk.out_indices[freeze_at - 2] + 1])
            logger.info("MODEL.TIMM.FREEZE_AT=%d: ViT embeddings%s frozen", freeze_at,
                        f" and blocks 0..{trunk.out_indices[freeze_at - 2]}" if freeze_at >= 2 else "")

    @classmethod
    def from_config(cls, cfg, input_shape: Optional[ShapeSpec] = None) -> Dict:
        return dict(_timm_config(cfg), img_size=tuple(cfg.MODEL.TIMM.IMG_SIZE),
                    pyramid_channels=cfg.MODEL.TIMM.PYRAMID_CHANNELS)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        blocks = self.net(x)
        outputs = {name: stage(blocks[source]) for name, stage, source in
                   zip(PYRAMID_NAMES, self.stages, self.in_features)}
        outputs[VIT_TOKENS] = blocks[self.in_features[-1]]
        return outputs


def _timm_config(cfg) -> Dict:
    t = cfg.MODEL.TIMM
    if not t.NAME:
        raise ValueError("MODEL.TIMM.NAME is empty: name the timm model (e.g. convnext_base, vit_base_patch14_dinov2)")
    return {
        "name": t.NAME,
        "weights": t.WEIGHTS,
        "out_indices": tuple(t.OUT_INDICES),
        "drop_path_rate": t.DROP_PATH_RATE,
        "freeze_at": t.FREEZE_AT,
        "checkpoint_activations": t.CHECKPOINT_ACTIVATIONS,
    }


@BACKBONE_REGISTRY.register()
def build_timm_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> Backbone:
    """The timm model ``cfg.MODEL.TIMM.NAME`` as a Detectron2 backbone (plain ViT -> :class:`TimmViTBackbone`,
    else :class:`TimmHierarchicalBackbone`), outputs ``res2``..``res5`` at strides 4, 8, 16, 32."""
    if input_shape is not None and input_shape.channels not in (None, 3):
        raise ValueError(f"build_timm_backbone: {input_shape.channels}-channel input; timm models here take RGB")
    if is_plain_vit(cfg.MODEL.TIMM.NAME):
        return TimmViTBackbone(cfg)
    return TimmHierarchicalBackbone(cfg)
