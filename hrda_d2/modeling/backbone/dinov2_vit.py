"""DINOv2 ViTs with the official forward semantics, and the VFM-UDA backbone ``VFMViT`` (docs/method.md §19).

* :class:`DINOv2ViT`: the official ``DinoVisionTransformer`` (facebookresearch/dinov2,
  ``dinov2/models/vision_transformer.py``) with the patch embedding, blocks and final norm of timm's
  ``vit_{small,base,large,giant2}_patch14[_reg4]_dinov2`` (same parameter names and arithmetic) and the official
  prefix parameters: ``cls_token`` 1 x 1 x C, ``pos_embed`` 1 x (1 + 37*37) x C (class position first, the
  518-px pretraining grid, also with registers), ``register_tokens`` 1 x R x C, ``mask_token`` 1 x C. Its state
  dict therefore has exactly the keys of an official checkpoint (``dinov2_vit*14[_reg4]_pretrain.pth``) and of
  the VFM-UDA ``network.encoder.*`` weights, which load unchanged.
* :class:`VFMViT` (``BACKBONE_REGISTRY``): VFM-UDA's encoder use: bilinear resize of the input by
  ``MODEL.VFM.INPUT_SCALE`` to a multiple of the patch size, optional token masking, output
  ``{"vit_tokens": N x C x h x w}`` (final-norm patch tokens).

Token order after :meth:`DINOv2ViT.prepare_tokens`: ``[cls, reg_1..reg_R, patch_(0,0), patch_(0,1), ...]``
(row-major patches); the class token carries ``pos_embed[:, 0]``, the registers no position, as the official
model. The position grid is resampled by :meth:`DINOv2ViT.interpolate_pos_encoding` exactly as the official
``interpolate_pos_encoding`` (bicubic; with ``interpolate_offset`` > 0 through ``scale_factor = (g + offset) / 37``,
else through the target size; antialias per model), rows of the grid along the image height.
"""
import logging
import os
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from torch import Tensor, nn

from ..activation_checkpointing import checkpointed_call, should_checkpoint
from .timm_backbone import VIT_TOKENS, create_timm_model

__all__ = [
    "DINOV2_PRETRAIN_GRID",
    "DINOv2ViT",
    "VFMViT",
    "flatten_block_chunks",
    "is_official_dinov2_state_dict",
    "vfm_input_size",
]

logger = logging.getLogger(__name__)

# the official models store their position embedding for 518 x 518 images: 37 x 37 patches of 14 px
DINOV2_PRETRAIN_GRID = 37
DINOV2_PATCH_SIZE = 14


def flatten_block_chunks(sd: Mapping[str, Tensor]) -> "OrderedDict[str, Tensor]":
    """``blocks.<chunk>.<i>.X`` (official checkpoints saved with ``block_chunks > 0``) -> ``blocks.<i>.X``
    (block indices are global in the chunked layout); other keys unchanged, order kept."""
    out: "OrderedDict[str, Tensor]" = OrderedDict()
    for k, v in sd.items():
        m = re.match(r"blocks\.\d+\.(\d+)\.(.+)$", k)
        out[f"blocks.{m.group(1)}.{m.group(2)}" if m else k] = v
    return out


def is_official_dinov2_state_dict(sd: Mapping[str, Tensor]) -> bool:
    """Whether ``sd`` has the top-level keys of an official DINOv2 backbone (class token, position embedding,
    patch embedding, LayerScale ``ls1.gamma`` in the blocks)."""
    return {"cls_token", "pos_embed", "patch_embed.proj.weight"} <= set(sd) and any(
        re.match(r"blocks\.(\d+\.)?\d+\.ls1\.gamma$", k) for k in sd)


def vfm_input_size(image_hw: Sequence[int], input_scale: float, patch_size: int) -> Tuple[int, int]:
    """The ViT input size of an ``image_hw`` image: ``int(side * input_scale) // patch * patch`` per side
    (VFM-UDA: 1024 -> int(1126.4) // 14 * 14 = 1120; 512 -> 560)."""
    return tuple(int(int(s * input_scale) // patch_size * patch_size) for s in image_hw)  # type: ignore[return-value]


class DINOv2ViT(nn.Module):
    """The official DINOv2 ViT (module docstring) built from timm's blocks.

    Attributes: ``patch_embed`` (timm ``PatchEmbed``, NHWC output), ``blocks`` (timm blocks with LayerScale),
    ``norm`` (final LayerNorm), ``cls_token``, ``pos_embed``, ``register_tokens`` (None without registers),
    ``mask_token``, ``embed_dim`` (C), ``patch_size`` (14), ``num_register_tokens`` (R),
    ``num_prefix_tokens`` (1 + R), ``interpolate_offset`` / ``interpolate_antialias`` (the official hub values:
    0.1 / False without registers, 0.0 / True with registers).
    """

    def __init__(self, name: str, weights: str = "", drop_path_rate: float = 0.0,
                 checkpoint_activations: bool = False):
        """
        Args:
            name: timm DINOv2 name, ``vit_{small,base,large,giant2}_patch14[_reg4]_dinov2`` (``MODEL.TIMM.NAME``).
            weights: local file (``MODEL.TIMM.WEIGHTS``): an official DINOv2 state dict (``.pth``, loaded with its
                own key names; ViT-S/B/L, whose MLP keys timm shares; ViT-g's SwiGLU ``mlp.w12`` / ``mlp.w3`` keys
                are not mapped) or a timm-layout file (``model.safetensors`` of ``timm/<name>``); "" = random init.
            drop_path_rate: stochastic depth, linear over the blocks from 0 (as the official model).
            checkpoint_activations: recompute each block in the backward pass of training forwards.
        """
        super().__init__()
        official = _read_official_weights(weights)
        timm_weights = "" if official is not None else weights
        vit = create_timm_model(name, timm_weights, num_classes=0, global_pool="", dynamic_img_size=True,
                                img_size=DINOV2_PRETRAIN_GRID * DINOV2_PATCH_SIZE, drop_path_rate=drop_path_rate)
        patch = tuple(vit.patch_embed.patch_size)
        if patch != (DINOV2_PATCH_SIZE, DINOV2_PATCH_SIZE) or not hasattr(vit.blocks[0], "ls1"):
            raise ValueError(f"MODEL.TIMM.NAME={name!r} is not a DINOv2 ViT (patch {patch}, LayerScale blocks); "
                             f"use vit_{{small,base,large,giant2}}_patch14[_reg4]_dinov2")
        self.patch_embed = vit.patch_embed
        self.blocks = vit.blocks
        self.norm = vit.norm
        self.embed_dim = int(vit.embed_dim)
        self.patch_size = DINOV2_PATCH_SIZE
        self.num_register_tokens = int(getattr(vit, "num_reg_tokens", 0))
        self.num_prefix_tokens = 1 + self.num_register_tokens
        # the official hub models: dinov2_vit*14 (offset 0.1, no antialias), dinov2_vit*14_reg (0.0, antialias)
        self.interpolate_offset = 0.0 if self.num_register_tokens else 0.1
        self.interpolate_antialias = bool(self.num_register_tokens)
        self.checkpoint_activations = bool(checkpoint_activations)

        # official prefix parameters from timm's (exact: with registers timm's class token already holds the class
        # position, which becomes a zero class position here)
        grid_pos = vit.pos_embed.detach()[:, -DINOV2_PRETRAIN_GRID ** 2:]
        cls_pos = vit.pos_embed.detach()[:, :1] if not vit.no_embed_class else torch.zeros_like(grid_pos[:, :1])
        self.cls_token = nn.Parameter(vit.cls_token.detach().clone())
        self.pos_embed = nn.Parameter(torch.cat([cls_pos, grid_pos], dim=1).clone())
        self.register_tokens = (nn.Parameter(vit.reg_token.detach().clone()) if self.num_register_tokens
                                else None)
        self.mask_token = nn.Parameter(torch.zeros(1, self.embed_dim))
        del vit
        if official is not None:
            self.load_state_dict(official, strict=True)
            logger.info("%s: official DINOv2 weights from %s", name, weights)

    # ------------------------------------------------------------------------------------------------------
    def grid(self, image_hw: Sequence[int]) -> Tuple[int, int]:
        """Token grid ``(h, w)`` of an input of ``image_hw`` pixels (sides multiples of 14)."""
        return int(image_hw[0]) // self.patch_size, int(image_hw[1]) // self.patch_size

    def interpolate_pos_encoding(self, grid: Tuple[int, int], dtype: torch.dtype) -> Tensor:
        """``1 x (1 + h*w) x C`` position embedding (class position first) for a ``grid = (h, w)`` token grid:
        the stored one for the 37 x 37 grid, else its patch part resampled bicubically in float32 (official
        arithmetic, see the module docstring) and cast to ``dtype``."""
        side = DINOV2_PRETRAIN_GRID
        if tuple(grid) == (side, side):
            return self.pos_embed
        pos = self.pos_embed.float()
        patch_pos = pos[:, 1:].reshape(1, side, side, self.embed_dim).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            resize = {"scale_factor": tuple((g + self.interpolate_offset) / side for g in grid)}
        else:
            resize = {"size": tuple(grid)}
        patch_pos = F.interpolate(patch_pos, mode="bicubic", antialias=self.interpolate_antialias, **resize)
        if tuple(patch_pos.shape[-2:]) != tuple(grid):
            raise RuntimeError(f"position embedding resampled to {tuple(patch_pos.shape[-2:])}, wanted {grid}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, self.embed_dim)
        return torch.cat([pos[:, :1], patch_pos], dim=1).to(dtype)

    def prepare_tokens(self, x: Tensor, token_mask: Optional[Tensor] = None) -> Tensor:
        """``N x 3 x H x W`` (sides multiples of 14) -> tokens ``N x (1 + R + h*w) x C``.

        ``token_mask`` (``N x h x w`` bool, True = masked): those patch tokens are replaced by ``mask_token``
        after the patch embedding and before the class token / position embedding are added (official
        ``prepare_tokens_with_masks``; VFM-UDA's token masking).
        """
        n, _, height, width = x.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"DINOv2ViT: input {height} x {width} is not a multiple of the patch size "
                             f"{self.patch_size}")
        patches = self.patch_embed(x)  # N x h x w x C
        grid = (int(patches.shape[1]), int(patches.shape[2]))  # ints also under torch.jit.trace (fvcore)
        if token_mask is not None:
            if token_mask.dtype != torch.bool or tuple(token_mask.shape) != (n, *grid):
                raise ValueError(f"token_mask must be a bool tensor N x h x w = {(n, *grid)} (the token grid of the "
                                 f"{height} x {width} ViT input), got {token_mask.dtype} {tuple(token_mask.shape)}")
            patches = torch.where(token_mask.unsqueeze(-1), self.mask_token.to(patches.dtype)[0], patches)
        # no casts of the prefix tokens: under autocast the concatenation promotes as in the official model
        tokens = torch.cat([self.cls_token.expand(n, -1, -1), patches.flatten(1, 2)], dim=1)
        tokens = tokens + self.interpolate_pos_encoding(grid, tokens.dtype)
        if self.register_tokens is not None:
            tokens = torch.cat([tokens[:, :1], self.register_tokens.expand(n, -1, -1), tokens[:, 1:]], dim=1)
        return tokens

    def forward_tokens(self, x: Tensor, token_mask: Optional[Tensor] = None) -> Tensor:
        """All tokens after the blocks and the final norm, ``N x (1 + R + h*w) x C`` (official ``x_norm``)."""
        tokens = self.prepare_tokens(x, token_mask)
        checkpointing = should_checkpoint(self.checkpoint_activations, self)
        for block in self.blocks:
            tokens = checkpointed_call(block, tokens, module=block) if checkpointing else block(tokens)
        return self.norm(tokens)

    def forward(self, x: Tensor, token_mask: Optional[Tensor] = None) -> Tensor:
        """Final-norm patch tokens as a map ``N x C x h x w`` (official ``x_norm_patchtokens``, row-major)."""
        n, _, height, width = x.shape
        h, w = self.grid((height, width))
        patches = self.forward_tokens(x, token_mask)[:, self.num_prefix_tokens:]
        return patches.transpose(1, 2).reshape(n, self.embed_dim, h, w)


def _read_official_weights(weights: str) -> Optional["OrderedDict[str, Tensor]"]:
    """The official DINOv2 state dict in ``weights`` (block chunks flattened), or None for "" and timm-layout
    files (safetensors, or a torch file without the official keys)."""
    if not weights or weights.endswith(".safetensors"):
        return None
    if not os.path.isfile(weights):
        return None  # create_timm_model reports the missing file with the fix
    obj = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "mask_token" in obj and is_official_dinov2_state_dict(obj):
        return flatten_block_chunks(obj)
    return None


@BACKBONE_REGISTRY.register()
class VFMViT(Backbone):
    """VFM-UDA's encoder (docs/method.md §19.1): ``forward(x: N x 3 x H x W, token_mask=None) ->
    {"vit_tokens": N x C x h x w}``.

    The input is resized bilinearly (align_corners False) to :func:`vfm_input_size` (``MODEL.VFM.INPUT_SCALE``,
    1.1 in VFM-UDA: a 1024 crop is seen as 1120 px, 80 x 80 tokens) and run through :class:`DINOv2ViT` (child
    ``vit``). ``token_mask`` (``N x h x w`` bool, grid :meth:`token_grid`) replaces patch tokens by the mask
    token. The stride reported for ``vit_tokens`` is the nominal ``round(14 / INPUT_SCALE)`` (13 for 1.1): the
    exact one is not an integer; heads resize their logits to the input size.
    """

    @configurable
    def __init__(self, *, name: str, weights: str = "", input_scale: float = 1.1, drop_path_rate: float = 0.0,
                 checkpoint_activations: bool = False):
        """
        Args:
            name, weights, drop_path_rate, checkpoint_activations: of :class:`DINOv2ViT` (``MODEL.TIMM.*``).
            input_scale: ``MODEL.VFM.INPUT_SCALE``, > 0.
        """
        super().__init__()
        if not input_scale > 0:
            raise ValueError(f"MODEL.VFM.INPUT_SCALE={input_scale} must be > 0 (VFM-UDA: 1.1)")
        self.vit = DINOv2ViT(name, weights, drop_path_rate, checkpoint_activations)
        self.input_scale = float(input_scale)
        self._out_features = [VIT_TOKENS]
        self._out_feature_channels = {VIT_TOKENS: self.vit.embed_dim}
        self._out_feature_strides = {VIT_TOKENS: max(1, int(round(self.vit.patch_size / self.input_scale)))}

    @classmethod
    def from_config(cls, cfg, input_shape: Optional[ShapeSpec] = None) -> Dict:
        if input_shape is not None and input_shape.channels not in (None, 3):
            raise ValueError(f"VFMViT: {input_shape.channels}-channel input; the DINOv2 ViT takes RGB")
        t = cfg.MODEL.TIMM
        return {
            "name": t.NAME,
            "weights": t.WEIGHTS,
            "input_scale": cfg.MODEL.VFM.INPUT_SCALE,
            "drop_path_rate": t.DROP_PATH_RATE,
            "checkpoint_activations": t.CHECKPOINT_ACTIVATIONS,
        }

    @property
    def supports_token_mask(self) -> bool:
        """``forward`` takes ``token_mask`` (the meta-architecture checks this before passing one)."""
        return True

    def layer_decay_groups(self) -> Dict[str, List[str]]:
        """Parameter-name prefixes by role for the layer-wise lr decay of the solver (docs/method.md §21.1): no
        decoder-like module, ``vit.blocks.<i>`` (block 0 first), and the stems ``vit.patch_embed``,
        ``vit.cls_token``, ``vit.pos_embed``, ``vit.register_tokens``, ``vit.mask_token``, ``vit.norm`` (VFM-UDA's
        ``param_defs_encoder_stems``, plus the register tokens of the ``_reg4_`` models)."""
        stems = ["vit.patch_embed", "vit.cls_token", "vit.pos_embed", "vit.mask_token", "vit.norm"]
        if self.vit.register_tokens is not None:
            stems.append("vit.register_tokens")
        return {"decoder": [], "blocks": [f"vit.blocks.{i}" for i in range(len(self.vit.blocks))], "stems": stems}

    def input_size(self, image_hw: Sequence[int]) -> Tuple[int, int]:
        """Size ``(H', W')`` the ViT sees for an input of ``image_hw``."""
        return vfm_input_size(image_hw, self.input_scale, self.vit.patch_size)

    def token_grid(self, image_hw: Sequence[int]) -> Tuple[int, int]:
        """Token grid ``(h, w)`` for an input of ``image_hw`` pixels (the shape a ``token_mask`` needs)."""
        return self.vit.grid(self.input_size(image_hw))

    def forward(self, x: Tensor, token_mask: Optional[Tensor] = None) -> Dict[str, Tensor]:
        size = self.input_size(x.shape[-2:])
        if min(size) < self.vit.patch_size:
            raise ValueError(f"VFMViT: input {tuple(x.shape[-2:])} x {self.input_scale:g} has less than one "
                             f"{self.vit.patch_size}-px patch per side")
        if tuple(size) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return {VIT_TOKENS: self.vit(x, token_mask)}
