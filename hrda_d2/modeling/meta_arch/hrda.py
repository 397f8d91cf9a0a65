"""HRDA multi-resolution meta-architecture (docs/method.md §4, §5); plain DAFormer with one scale.

Two scales (sorted ascending, e.g. ``[0.5, 1.0]``): the *context* branch sees the whole image resized by the
LR scale, the *detail* branch a random HR crop (training) or overlapping HR tiles (inference). The meta-architecture
keeps the scales, crops and windows; its ``sem_seg_head`` is the registered ``HRDAHead``
(``MODEL.HRDA.HEAD_NAME``, :mod:`.hrda_head`): the single-scale head for both branches, the scale attention, the
fusion (§5.3) and the losses (§5.4). Windowed inference with HR-tile reuse is :mod:`.slide_inference`.

One scale (``MODEL.HRDA.SCALES: [1.0]``): the original ``EncoderDecoder`` (plain DAFormer): ``sem_seg_head`` is the
registered ``SingleScaleHead`` with the same interface (the single-scale head on the whole image, loss
``MODEL.SEM_SEG_HEAD.LOSS_WEIGHT * CE`` of the logits resized to the input size); the one scale is the whole image:
no detail crop, no HR tiles, no blur, features at scale 1.

Resolutions: the heads return logits at stride ``output_stride`` of the scale-1 image (``N x C x H/os x W/os``,
fused with two scales). The training forward's prediction (``HRDATrainOutputs.logits``) is these logits bilinearly
resized to the output scale ``s = FEATURE_SCALE`` (one scale: 1): ``N x C x int(H*s) x int(W*s)``, what AdvSeg /
MinEnt adapt (docs/method.md §18.4, §18.5). Inference returns them resized to the input size ``N x C x H x W``.

Tensor conventions: ``images`` are normalised ``N x 3 x H x W`` float32; labels ``N x H x W`` int64 with
``ignore_value`` (255). Crop boxes are ``(y1, y2, x1, x2)`` half-open, in pixels of the tensor they refer to, and are
always passed explicitly (never kept on the module).
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY, Backbone, build_backbone
from torch import Tensor, nn
from torch.nn import functional as F

from ...config import check_choice
from ..pixel_normalizer import PixelNormalizer
from .crop_utils import CropBox, crop, merge_windows, random_crop_box, sliding_window_boxes, stack_windows
from .hrda_head import ScaleOutputs, SingleScaleHead, TiledFeatures
from .slide_inference import shared_tile_window_logits, window_logits

__all__ = ["HRDA", "HRDATrainOutputs", "TiledFeatures"]


@dataclass
class HRDATrainOutputs:
    """What the training forward (``HRDA.forward_train``, ``model(images=...)``) returns.

    losses: the loss terms, each already weighted, summing to the total loss (empty without labels):
        ``loss_sem_seg`` (fused, or the single-scale CE), ``loss_sem_seg_hr`` (detail crop, if HR_LOSS_WEIGHT > 0),
        ``loss_sem_seg_lr`` (attention-scaled context logits, if LR_LOSS_WEIGHT > 0); every CE averaged over all
        ``N*H*W`` label pixels.
    metrics: pixel accuracies in percent (``acc_sem_seg``, ``acc_sem_seg_hr``, ...), detached, for logging (empty
        without labels).
    logits: this forward's prediction, float32 with its graph, at the output scale ``s`` = FEATURE_SCALE (one
        scale: 1): ``N x C x int(H*s) x int(W*s)``, the head logits (fused with two scales: detail crop inserted,
        attention masked to it) bilinearly resized - what AdvSeg / MinEnt adapt (docs/method.md §18.4, §18.5).
    features: backbone maps (``res2``..``res5``) at FEATURE_SCALE of this forward pass, with their graph (for the
        ImageNet feature distance). Two scales: the LR context features of the whole resized image for
        FEATURE_SCALE = LR scale (the paper's setting). One scale: the full-image features.
    crop_box: the detail crop used, ``(y1, y2, x1, x2)`` in input pixels (None with one scale / no HR crop).
    scale_features: the backbone maps of every scale, context first, then the scale-1 image's (the detail crop's;
        the feature distance on all scales, ``UDA.FD.ALL_SCALES``; the original's ``feature_scale='all'``).
    """

    losses: Dict[str, Tensor]
    metrics: Dict[str, Tensor]
    logits: Tensor
    features: Dict[str, Tensor]
    crop_box: Optional[CropBox]
    scale_features: List[Dict[str, Tensor]]


def _as_pair(values: Optional[Sequence[int]], key: str) -> Optional[Tuple[int, int]]:
    if values is None or len(values) == 0:
        return None
    if len(values) != 2 or min(values) <= 0:
        raise ValueError(f"{key} must be [height, width] with positive values, got {list(values)}")
    return int(values[0]), int(values[1])


@META_ARCH_REGISTRY.register()
class HRDA(nn.Module):
    """HRDA encoder-decoder (two scales) or plain DAFormer (one scale). See the module docstring.

    Attributes: ``backbone`` (MiT, or any backbone), ``sem_seg_head`` (the ``HRDAHead`` or ``SingleScaleHead``,
    holding the single-scale ``head`` and the ``scale_attention``, None with one scale),
    ``pixel_normalizer`` (``PixelNormalizer``: non-persistent ``pixel_mean``/``pixel_std`` buffers, ``3 x 1 x 1``).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        scales: Sequence[float],
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        ignore_value: int = 255,
        hr_crop_size: Optional[Sequence[int]] = (512, 512),
        crop_coord_divisible: int = 8,
        feature_scale: float = 0.5,
        hr_slide_inference: bool = True,
        hr_slide_overlapping: bool = True,
        blur_hr_crop: bool = False,
        test_mode: str = "slide",
        test_crop_size: Sequence[int] = (1024, 1024),
        test_stride: Sequence[int] = (512, 512),
        test_batched: bool = True,
        reuse_hr_tiles: bool = True,
        compile_modules: bool = False,
        slide_merge: str = "logits",
    ):
        """
        Args:
            backbone: returns the feature dict the heads read.
            sem_seg_head: a head with the interface of :class:`~.hrda_head.HRDAHead` taking ``len(scales)`` inputs
                (its ``num_scales``): the ``HRDAHead`` for two scales, the ``SingleScaleHead`` for one.
            scales: image scales; sorted ascending; ``[1.0]`` or ``[lr, 1.0]`` with ``0 < lr <= 1``. ``[1.0, 1.0]`` is
                the original's ``samescale`` ablation (HRDA Table 6 "LR1.0+LR0.5" on 512 crops): the context branch
                sees the whole image at full resolution, the detail crop comes from that same image, and the fusion
                places the detail logits without upsampling (use FEATURE_SCALE 1.0).
            pixel_mean, pixel_std: RGB normalisation of 0..255 images.
            ignore_value: label value without loss.
            hr_crop_size: detail crop ``(h, w)`` in HR pixels (also the HR tile size); None = whole HR image.
                With one scale, ``hr_crop_size``, ``hr_slide_inference`` and ``blur_hr_crop`` are off and
                ``feature_scale`` is 1: the one scale is the whole image.
            crop_coord_divisible: detail-crop offsets are multiples of this.
            feature_scale: scale whose features ``HRDATrainOutputs.features``/``extract_features`` return, and the
                scale of the training forward's prediction ``HRDATrainOutputs.logits``.
            hr_slide_inference: HR branch on overlapping tiles at inference (else on the whole HR image).
            hr_slide_overlapping: HR tile stride = crop // 2 (else = crop).
            blur_hr_crop: HR branch sees the image downscaled x0.5 and upscaled x2.
            test_mode: "slide" or "whole".
            test_crop_size, test_stride: test windows ``(h, w)``.
            test_batched: all test windows in one batch (else one window at a time).
            reuse_hr_tiles: slide inference computes each distinct HR tile of the overlapping windows once
                (exact, see ``slide_inference``); False runs every window's tiles as the original does.
            compile_modules: ``torch.compile`` the backbone and the heads in place (``nn.Module.compile``:
                parameter names and checkpoints unchanged); each new input shape compiles once.
            slide_merge: ``TEST.SLIDE.MERGE``: slide inference averages the windows' "logits", or their softmax
                "probabilities" (VFM-UDA's rule; :meth:`inference` then returns averaged probabilities, whose
                argmax is the prediction, docs/method.md §19.4).
        """
        super().__init__()
        scales = sorted(float(s) for s in scales)
        if len(scales) not in (1, 2) or scales[-1] != 1.0 or scales[0] <= 0:
            raise ValueError(
                f"MODEL.HRDA.SCALES={list(scales)}: use [1.0] (plain DAFormer) or two scales [1.0, s] with "
                f"0 < s <= 1 (the detail scale must be 1.0; at most 2 scales are supported)"
            )
        check_choice("TEST.MODE", test_mode)
        check_choice("TEST.SLIDE.MERGE", slide_merge)
        if getattr(sem_seg_head, "num_scales", None) != len(scales):
            raise ValueError(f"MODEL.HRDA.SCALES={scales} needs a head for {len(scales)} scale(s); "
                             f"{type(sem_seg_head).__name__} takes {getattr(sem_seg_head, 'num_scales', '?')}")
        if len(scales) == 1:  # the plain segmentor: its one scale is the whole image
            hr_crop_size, hr_slide_inference, blur_hr_crop, feature_scale = None, False, False, 1.0
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.scales = scales
        self.ignore_value = ignore_value
        self.output_stride = sem_seg_head.output_stride
        self.pixel_normalizer = PixelNormalizer(pixel_mean, pixel_std)

        self.hr_crop_size = _as_pair(hr_crop_size, "MODEL.HRDA.HR_CROP_SIZE")
        self.crop_coord_divisible = int(crop_coord_divisible)
        self.feature_scale = float(feature_scale)
        self.hr_slide_inference = bool(hr_slide_inference)
        self.hr_slide_overlapping = bool(hr_slide_overlapping)
        self.blur_hr_crop = bool(blur_hr_crop)
        self.test_mode = test_mode
        self.test_crop_size = _as_pair(test_crop_size, "TEST.SLIDE.CROP_SIZE")
        self.test_stride = _as_pair(test_stride, "TEST.SLIDE.STRIDE")
        self.test_batched = bool(test_batched)
        self.reuse_hr_tiles = bool(reuse_hr_tiles)
        self.slide_merge = slide_merge

        if self.feature_scale not in self.scales:
            raise ValueError(
                f"MODEL.HRDA.FEATURE_SCALE={self.feature_scale} is not one of MODEL.HRDA.SCALES {self.scales}"
            )
        if self.hr_slide_inference and self.hr_crop_size is None:
            raise ValueError("MODEL.HRDA.HR_SLIDE_INFERENCE needs MODEL.HRDA.HR_CROP_SIZE (the tile size)")
        if compile_modules:
            for module in (self.backbone, *self.decoding_heads):
                module.compile()

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        hrda = cfg.MODEL.HRDA
        head_name = hrda.HEAD_NAME if len(hrda.SCALES) > 1 else SingleScaleHead.__name__
        return {
            "backbone": backbone,
            "sem_seg_head": SEM_SEG_HEADS_REGISTRY.get(head_name)(cfg, shapes),
            "scales": list(hrda.SCALES),
            "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": list(cfg.MODEL.PIXEL_STD),
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "hr_crop_size": list(hrda.HR_CROP_SIZE) if hrda.HR_CROP_SIZE else None,
            "crop_coord_divisible": hrda.CROP_COORD_DIVISIBLE,
            "feature_scale": hrda.FEATURE_SCALE,
            "hr_slide_inference": hrda.HR_SLIDE_INFERENCE,
            "hr_slide_overlapping": hrda.HR_SLIDE_OVERLAPPING,
            "blur_hr_crop": hrda.BLUR_HR_CROP,
            "test_mode": cfg.TEST.MODE,
            "test_crop_size": list(cfg.TEST.SLIDE.CROP_SIZE),
            "test_stride": list(cfg.TEST.SLIDE.STRIDE),
            "test_batched": cfg.TEST.SLIDE.BATCHED,
            "reuse_hr_tiles": cfg.TEST.SLIDE.REUSE_HR_TILES,
            "compile_modules": cfg.MODEL.COMPILE,
            "slide_merge": cfg.TEST.SLIDE.MERGE,
        }

    # ------------------------------------------------------------------------------------------------------
    # basics
    # ------------------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.pixel_normalizer.pixel_mean.device

    @property
    def is_multi_scale(self) -> bool:
        """Two scales (context and detail): the scale maps of ``forward_scales`` exist."""
        return len(self.scales) == 2

    @property
    def lr_scale(self) -> float:
        return self.scales[0]

    @property
    def single_scale_head(self) -> nn.Module:
        """The head that turns one image's features into logits (``sem_seg_head.head``)."""
        return self.sem_seg_head.head

    @property
    def decoding_heads(self) -> Tuple[nn.Module, ...]:
        """The heads that run on backbone features: the single-scale head and, if learned, the scale attention."""
        attention = self.sem_seg_head.scale_attention
        return (self.sem_seg_head.head,) + (() if attention is None else (attention,))

    def normalize(self, images: Tensor) -> Tensor:
        """``N x 3 x H x W`` RGB 0..255 (any dtype, any device) -> ``(x - pixel_mean) / pixel_std`` in float32 on
        the model's device."""
        return self.pixel_normalizer.normalize(images.to(self.device))

    @staticmethod
    def _rescale(images: Tensor, scale: float) -> Tensor:
        """bilinear x ``scale`` (align_corners False; output ``floor(size * scale)``); identity for 1."""
        if scale == 1.0:
            return images
        return F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)

    def _detail_image(self, images: Tensor) -> Tensor:
        """The HR-branch image: the input, or with BLUR_HR_CROP the input resized x0.5 then x2."""
        if not self.blur_hr_crop:
            return images
        return F.interpolate(self._rescale(images, 0.5), scale_factor=2.0, mode="bilinear", align_corners=False)

    # ------------------------------------------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------------------------------------------
    def forward_train(
        self,
        images: Tensor,
        sem_seg: Optional[Tensor] = None,
        weight: Optional[Tensor] = None,
        crop_box: Optional[Sequence[int]] = None,
        token_mask: Optional[Tensor] = None,
    ) -> HRDATrainOutputs:
        """The training forward (docs/method.md §4.3, §5.4, §6): losses, accuracies and the named outputs.

        Args:
            images: normalised ``N x 3 x H x W``.
            sem_seg: ``N x H x W`` int64 labels (``ignore_value`` ignored), or None: the same training forward
                without losses and metrics (unlabelled target images of AdvSeg / MinEnt).
            weight: optional ``N x H x W`` per-pixel loss weights (only with labels).
            crop_box: detail crop ``(y1, y2, x1, x2)`` in input pixels; when None a random box with offsets
                divisible by CROP_COORD_DIVISIBLE is drawn from NumPy's global RNG (one box per batch).
            token_mask: ``N x h x w`` bool, True = the patch token is replaced by the backbone's mask token
                (VFM-UDA's token masking, docs/method.md §19.1), on the grid
                ``backbone.token_grid(images.shape[-2:])``; one scale and a backbone with ``supports_token_mask``
                (``VFMViT``) only.

        Returns:
            :class:`HRDATrainOutputs` (losses, metrics, the prediction at FEATURE_SCALE, features, crop box).
        """
        if sem_seg is None and weight is not None:
            raise ValueError("forward_train got a weight map but no labels (sem_seg=None): pass both or neither")
        if sem_seg is not None:
            if sem_seg.dim() != 3 or images.dim() != 4 or sem_seg.shape != (images.shape[0], *images.shape[-2:]):
                raise ValueError(
                    f"forward_train expects images N x 3 x H x W and sem_seg N x H x W of the same size, got "
                    f"{tuple(images.shape)} and {tuple(sem_seg.shape)}"
                )
            if weight is not None and weight.shape != sem_seg.shape:
                raise ValueError(f"weight {tuple(weight.shape)} must have the shape of sem_seg {tuple(sem_seg.shape)}")
        detail = self._detail_image(images)
        box = self._detail_box(detail.shape[-2:], crop_box)
        if token_mask is None:
            scale_features = self._scale_features(images, detail, box)
        else:
            self._check_token_mask(images, token_mask)
            scale_features = [self.backbone(images, token_mask=token_mask)]
        output_size = [int(e * self.feature_scale) for e in images.shape[-2:]]
        out = self.sem_seg_head(scale_features, box, output_size)
        losses, metrics = ({}, {}) if sem_seg is None else self.sem_seg_head.losses(out, sem_seg.long(), weight, box)
        features = scale_features[self.scales.index(self.feature_scale)]
        return HRDATrainOutputs(losses, metrics, out.prediction, features, box, scale_features)

    def _detail_box(self, detail_hw: Sequence[int], crop_box: Optional[Sequence[int]]) -> Optional[CropBox]:
        """The detail crop in the ``detail_hw`` image: ``crop_box`` checked, or a random box (NumPy); None without
        HR_CROP_SIZE (and with one scale)."""
        if self.hr_crop_size is None:
            if crop_box is not None:
                raise ValueError(f"crop_box {tuple(crop_box)} given but the model has no detail crop (one scale in "
                                 f"MODEL.HRDA.SCALES, or MODEL.HRDA.HR_CROP_SIZE empty)")
            return None
        if crop_box is None:
            return random_crop_box(detail_hw, self.hr_crop_size, self.crop_coord_divisible)
        box: CropBox = tuple(int(c) for c in crop_box)  # type: ignore[assignment]
        self._check_crop_box(box, detail_hw)
        return box

    def _scale_features(self, images: Tensor, detail: Tensor, box: Optional[CropBox]) -> List[Dict[str, Tensor]]:
        """Backbone features of every scale: the whole image resized to each context scale, then ``detail`` (the
        scale-1 image) cut with ``box`` (None: the whole of it)."""
        context = [self.backbone(self._rescale(images, s)) for s in self.scales[:-1]]
        return context + [self.backbone(detail if box is None else crop(detail, box))]

    def _check_token_mask(self, images: Tensor, token_mask: Tensor) -> None:
        """A token mask needs one scale, a backbone that takes it, and the backbone's grid for ``images``."""
        if self.is_multi_scale:
            raise ValueError(f"token_mask is supported with one scale only (MODEL.HRDA.SCALES {self.scales}); use "
                             f"MODEL.HRDA.SCALES [1.0] or image-block masking (UDA.MIC.MASK_TYPE 'blocks')")
        if not getattr(self.backbone, "supports_token_mask", False):
            raise ValueError(f"token_mask given, but the backbone {type(self.backbone).__name__} has no token masking; "
                             f"use MODEL.BACKBONE.NAME 'VFMViT' or image-block masking (UDA.MIC.MASK_TYPE 'blocks')")
        grid = tuple(self.backbone.token_grid(images.shape[-2:]))
        expected = (images.shape[0], *grid)
        if token_mask.dtype != torch.bool or tuple(token_mask.shape) != expected:
            raise ValueError(f"token_mask must be a bool tensor N x h x w = {expected} (backbone.token_grid of the "
                             f"{tuple(images.shape[-2:])} images), got {token_mask.dtype} {tuple(token_mask.shape)}")

    def _check_crop_box(self, box: CropBox, image_hw: Sequence[int]) -> None:
        y1, y2, x1, x2 = box
        if (y2 - y1, x2 - x1) != self.hr_crop_size or y1 < 0 or x1 < 0 or y2 > image_hw[0] or x2 > image_hw[1]:
            raise ValueError(
                f"crop_box {box} must be a {self.hr_crop_size} box (MODEL.HRDA.HR_CROP_SIZE) inside the "
                f"{tuple(image_hw)} image"
            )

    def extract_features(self, images: Tensor) -> Dict[str, Tensor]:
        """Backbone features of normalised images at FEATURE_SCALE (one scale: at full resolution), e.g. for
        the frozen ImageNet copy of the feature distance."""
        return self.backbone(self._rescale(images, self.feature_scale))

    def extract_scale_features(self, images: Tensor, crop_box: Optional[CropBox]) -> List[Dict[str, Tensor]]:
        """Backbone features of every scale as a training forward sees them: the context image, then the detail
        image (blurred with BLUR_HR_CROP) cut with ``crop_box`` (the student's detail crop; None = the whole image)
        - the original's ``extract_feat`` with ``feature_scale='all'`` (docs/method.md §7.2 step 5)."""
        return self._scale_features(images, self._detail_image(images), crop_box)

    # ------------------------------------------------------------------------------------------------------
    # inference
    # ------------------------------------------------------------------------------------------------------
    @property
    def hr_tile_stride(self) -> Optional[Tuple[int, int]]:
        """Stride of the HR inference tiles: half the tile (HR_SLIDE_OVERLAPPING) or the tile itself; None without
        HR tiles (no HR_CROP_SIZE, one scale)."""
        tile = self.hr_crop_size
        if tile is None:
            return None
        return tuple(c // 2 for c in tile) if self.hr_slide_overlapping else tile  # type: ignore[return-value]

    def _inference_scales(self, images: Tensor, hr_logits: Optional[Tensor] = None) -> ScaleOutputs:
        """Context branch on the resized image; detail branch on HR tiles (one backbone and one head call for
        all tiles) or on the whole HR image, unless ``hr_logits`` (``N x C x H/os x W/os``, the merged HR tiles)
        are given; no crop box, so no attention masking (docs/method.md §4.4). One scale: the whole image. The
        prediction is at the input size."""
        context = [self.backbone(self._rescale(images, s)) for s in self.scales[:-1]]
        hr_input: Union[Dict[str, Tensor], TiledFeatures, Tensor]
        if hr_logits is not None:
            hr_input = hr_logits
        elif self.hr_slide_inference:
            hr_images = self._detail_image(images)
            boxes = sliding_window_boxes(hr_images.shape[-2:], self.hr_crop_size, self.hr_tile_stride)
            hr_input = TiledFeatures(self.backbone(stack_windows(hr_images, boxes)), boxes)
        else:
            hr_input = self.backbone(self._detail_image(images))
        return self.sem_seg_head(context + [hr_input], None, images.shape[-2:])

    def whole_inference(self, images: Tensor, hr_logits: Optional[Tensor] = None) -> Tensor:
        """Logits ``N x C x H x W`` (float32) of the whole normalised image (mmseg ``encode_decode``): the fused
        HRDA prediction (or the single-scale head output) bilinearly resized to the input size. ``hr_logits``:
        see ``_inference_scales`` (two scales only)."""
        return self._inference_scales(images, hr_logits).prediction

    def generate_pseudo_label(self, images: Tensor) -> Tensor:
        """Fused logits ``N x C x H x W`` at input size for pseudo-labels (whole image, HR tiles).

        Runs in the module's current mode: a teacher kept in train mode (dropout/drop-path off) normalises
        with the statistics of this batch, as in the original DACS.
        """
        return self.whole_inference(images)

    def slide_inference(self, images: Tensor) -> Tensor:
        """Sliding-window logits ``N x C x H x W``: TEST.SLIDE windows (shrunk to small images), each through
        ``whole_inference`` (all at once when TEST.SLIDE.BATCHED), averaged with a count matrix
        (:mod:`.slide_inference`). With TEST.SLIDE.MERGE "probabilities" each window's softmax is averaged
        instead, and the result is ``N x C x H x W`` probabilities (VFM-UDA, docs/method.md §19.4).

        With TEST.SLIDE.REUSE_HR_TILES the HR tiles that several windows share are computed once (see
        ``tiles_can_be_shared``); the result equals the per-window computation up to float rounding of a
        different batch composition.
        """
        boxes = sliding_window_boxes(images.shape[-2:], self.test_crop_size, self.test_stride)
        if self.tiles_can_be_shared:
            windows = shared_tile_window_logits(
                images, boxes, tile_size=self.hr_crop_size, tile_stride=self.hr_tile_stride,
                batched=self.test_batched, decode_tiles=lambda tiles: self.sem_seg_head.head(self.backbone(tiles)),
                merge_tiles=self.sem_seg_head.merge_tiles, window_fn=self.whole_inference)
        else:
            windows = window_logits(images, boxes, self.whole_inference, self.test_batched)
        return merge_windows(windows, boxes, images.shape[-2:], softmax=self.slide_merge == "probabilities")

    def merge_test_windows(self, images: Tensor, window_fn: Callable[[Tensor], Tensor]) -> Tensor:
        """``window_fn`` over the TEST.MODE windows of ``images`` (``N x 3 x H x W``) one window at a time, merged
        with the count matrix of :meth:`slide_inference` (one window = the whole image in "whole" mode), for maps
        other than the logits (e.g. the scale attention of ``forward_scales``). ``window_fn`` maps a window
        ``N x 3 x h x w`` to ``N x K x h x w``; returns ``N x K x H x W``."""
        if self.test_mode == "whole":
            return window_fn(images)
        boxes = sliding_window_boxes(images.shape[-2:], self.test_crop_size, self.test_stride)
        return merge_windows(window_logits(images, boxes, window_fn, batched=False), boxes, images.shape[-2:])

    @property
    def tiles_can_be_shared(self) -> bool:
        """Whether slide inference may share HR tiles between windows exactly: REUSE_HR_TILES is on, two scales
        with HR slide inference and no HR blur (a blurred window is not a crop of the blurred image), and no
        BatchNorm of the backbone / single-scale head in train mode (with batch statistics a tile's logits
        would depend on the other tiles of its batch, as for the teacher's pseudo-labels, docs/method.md §7.2)."""
        if not (self.reuse_hr_tiles and self.hr_slide_inference and not self.blur_hr_crop):
            return False
        modules = list(self.backbone.modules()) + list(self.single_scale_head.modules())
        return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in modules)

    def inference(self, images: Tensor, output_size: Optional[Sequence[int]] = None) -> Tensor:
        """TEST.MODE inference of normalised images -> logits (slide mode with TEST.SLIDE.MERGE "probabilities":
        averaged window probabilities), bilinearly resized to ``output_size`` if given (mmseg's rescale to the
        original shape)."""
        logits = self.slide_inference(images) if self.test_mode == "slide" else self.whole_inference(images)
        if output_size is not None and tuple(output_size) != tuple(logits.shape[-2:]):
            logits = F.interpolate(logits, size=tuple(output_size), mode="bilinear", align_corners=False)
        return logits

    def forward_scales(self, images: Tensor) -> Dict[str, Tensor]:
        """Visualisation of one whole-image pass (two scales), every map resized to the input size.

        Returns ``fused`` (logits), ``lr`` (context head logits before attention scaling), ``hr`` (detail
        logits, merged tiles) and ``attention`` = ``sum_c(att_c * softmax(fused)_c)`` (``N x 1 x H x W``).
        With MODEL.HRDA.FIXED_ATTENTION 0.0 / 1.0 the fused output is the LR-only / HR-only prediction.
        """
        if not self.is_multi_scale:
            raise ValueError("forward_scales needs two scales (MODEL.HRDA.SCALES)")
        out = self._inference_scales(images)
        fused = out.logits
        attention_map = (out.fusion.attention * torch.softmax(fused, dim=1)).sum(dim=1, keepdim=True)
        maps = {"fused": fused, "lr": out.lr_logits, "hr": out.hr_logits, "attention": attention_map}
        size = images.shape[-2:]
        return {k: F.interpolate(v, size=size, mode="bilinear", align_corners=False) for k, v in maps.items()}

    # ------------------------------------------------------------------------------------------------------
    # Detectron2 entry point
    # ------------------------------------------------------------------------------------------------------
    def forward(
        self,
        batched_inputs: Optional[List[Dict]] = None,
        *,
        images: Optional[Tensor] = None,
        sem_seg: Optional[Tensor] = None,
        weight: Optional[Tensor] = None,
        crop_box: Optional[Sequence[int]] = None,
        token_mask: Optional[Tensor] = None,
    ):
        """Detectron2 call, or a tensor-level training call.

        ``model(batched_inputs)`` in training: each input has ``image`` (``3 x H x W`` RGB 0..255),
        ``sem_seg`` (``H x W`` int64) and optionally ``weight`` (``H x W`` float); all images the same size.
        Returns the loss dict of ``forward_train`` (random detail crop; Detectron2's training contract).

        ``model(batched_inputs)`` in inference: each input has ``image`` and optionally ``height``/``width``
        (output size, default the image size). Returns ``[{"sem_seg": C x height x width logits}]`` (averaged
        probabilities in slide mode with TEST.SLIDE.MERGE "probabilities"; the argmax is the prediction either
        way). Images of one size are processed as one batch, otherwise one by one.

        ``model(images=..., sem_seg=..., weight=..., crop_box=..., token_mask=...)``: ``forward_train`` on
        normalised tensors through ``__call__`` (so that wrappers such as DDP see the forward pass); returns its
        :class:`HRDATrainOutputs` (``sem_seg`` None: the label-free training forward, no losses).
        """
        if images is not None:
            if batched_inputs is not None:
                raise ValueError("call the model either with batched_inputs, or with images= (and sem_seg=)")
            return self.forward_train(images, sem_seg, weight, crop_box, token_mask)
        if token_mask is not None:
            raise ValueError("token_mask is a training-forward argument: call model(images=..., token_mask=...)")
        if batched_inputs is None:
            raise ValueError("HRDA.forward needs batched_inputs (list of dicts) or images= (and sem_seg=)")
        if self.training:
            images = self.normalize(torch.stack([x["image"] for x in batched_inputs]))
            sem_seg = torch.stack([x["sem_seg"] for x in batched_inputs]).to(self.device)
            has_weight = ["weight" in x for x in batched_inputs]
            if any(has_weight) and not all(has_weight):
                raise ValueError("either every training input or none has a 'weight' map")
            weight = torch.stack([x["weight"] for x in batched_inputs]).to(self.device) if all(has_weight) else None
            return self.forward_train(images, sem_seg, weight).losses

        same_size = len({tuple(x["image"].shape[-2:]) for x in batched_inputs}) == 1
        groups = [batched_inputs] if same_size else [[x] for x in batched_inputs]
        results = []
        for group in groups:
            logits = self.inference(self.normalize(torch.stack([x["image"] for x in group])))
            for x, image_logits in zip(group, logits):
                size = (x.get("height", image_logits.shape[-2]), x.get("width", image_logits.shape[-1]))
                if tuple(size) != tuple(image_logits.shape[-2:]):
                    image_logits = F.interpolate(
                        image_logits[None], size=size, mode="bilinear", align_corners=False
                    )[0]
                results.append({"sem_seg": image_logits})
        return results
