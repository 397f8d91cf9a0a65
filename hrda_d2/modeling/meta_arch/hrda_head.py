"""The decode heads of the HRDA meta-architecture, registered in ``SEM_SEG_HEADS_REGISTRY``: ``HRDAHead``, the
multi-resolution head of HRDA (two scales, docs/method.md §5), and ``SingleScaleHead``, the plain segmentor's head
(one scale, the original's ``EncoderDecoder``). Both hold the single-scale head (any registered head,
``MODEL.SEM_SEG_HEAD.NAME``, e.g. the DAFormer head) as ``head`` and share one interface: ``forward(scale_inputs,
crop_box, output_size) -> ScaleOutputs`` with one input per scale (context first, the scale-1 image last) and
``losses(outputs, sem_seg, weight, crop_box) -> (losses, metrics)``.

``HRDAHead`` adds ``scale_attention``, a second head of the same type built by that type's ``scale_attention_config``
(DAFormer: 1x1-conv fusion, ``MODEL.HRDA.ATTENTION_EMBED_DIM`` wide), or a fixed attention. It decodes the context
(LR) features and the detail (HR) input with ``head``, predicts the sigmoid attention from the context features,
fuses both (``fuse_scales``, §5.3) and computes the HRDA losses (§5.4). As the original's
``HRDAHead(single_scale_head=...)``, it is the decode head of the HRDA meta-architecture (``sem_seg_head`` there,
``decode_head`` in the original), which keeps the crops, scales and windows (§4). Like Mask2Former's
``MaskFormerHead``, a head that composes other heads lives beside the meta-architecture.

Tensor conventions: features are the backbone's dicts of ``N x C_k x h_k x w_k`` maps; logits
``N x K x h x w`` at stride ``output_stride`` of the image their features came from; crop boxes
``(y1, y2, x1, x2)`` half-open in HR-image pixels, always passed explicitly.
"""
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import Tensor, nn
from torch.nn import functional as F

from ..losses import pixel_accuracy, pixel_weighted_cross_entropy, resize_logits, resize_to_labels
from .crop_utils import CropBox, crop, merge_windows, scale_box
from .scale_fusion import FusedScales, fuse_scales

__all__ = ["HRDAHead", "ScaleOutputs", "SingleScaleHead", "TiledFeatures"]


class TiledFeatures(NamedTuple):
    """Backbone features of HR tiles, tile-major (tile ``t`` = batch rows ``[t*N, (t+1)*N)``), and the tile
    boxes in HR-image pixels."""

    features: Dict[str, Tensor]
    boxes: List[CropBox]


class ScaleOutputs(NamedTuple):
    """What the heads' ``forward`` returns.

    prediction: ``N x K x H_out x W_out`` float32, ``logits`` bilinearly resized to the ``output_size`` asked for
        (the same tensor when the sizes agree): the model's prediction.
    logits: ``N x K x h x w`` at stride ``output_stride`` of the scale-1 image: the fused logits (two scales), the
        head's logits (one scale).
    The parts of the fusion (two scales; None with one):
    lr_logits: ``N x K x h_lr x w_lr`` head output on the context image, before attention scaling.
    hr_logits: the detail-crop logits (training) or the tile-merged HR logits (inference).
    fusion: the fused prediction and its parts (:class:`~.scale_fusion.FusedScales`).
    """

    prediction: Tensor
    logits: Tensor
    lr_logits: Optional[Tensor] = None
    hr_logits: Optional[Tensor] = None
    fusion: Optional[FusedScales] = None


HRInput = Union[Dict[str, Tensor], TiledFeatures, Tensor]


@SEM_SEG_HEADS_REGISTRY.register()
class HRDAHead(nn.Module):
    """Single-scale head + scale attention + fusion + losses of HRDA (module docstring).

    Attributes: ``head`` (the single-scale head), ``scale_attention`` (a head of the same type, or None with a
    fixed attention), ``in_features`` (those of ``head``), ``output_stride`` (of ``head``'s logits),
    ``num_scales`` (2: context, detail).
    """

    num_scales = 2

    @configurable
    def __init__(
        self,
        *,
        head: nn.Module,
        scale_attention: Optional[nn.Module],
        output_stride: int,
        lr_scale: float,
        hr_loss_weight: float = 0.1,
        lr_loss_weight: float = 0.0,
        fixed_attention: Optional[float] = None,
        ignore_value: int = 255,
    ):
        """
        Args:
            head: the single-scale head (``forward(features) -> logits``, attribute ``in_features``).
            scale_attention: the attention head (sigmoid of its output is the attention), or None.
            output_stride: stride of ``head``'s logits w.r.t. its input image (4 for DAFormer on MiT).
            lr_scale: scale of the context image (``MODEL.HRDA.SCALES``' smaller one); the detail scale is 1 (an
                ``lr_scale`` of 1 is the original's ``samescale``: fusion without upsampling).
            hr_loss_weight, lr_loss_weight: detail / context loss weights; the fused loss gets
                ``1 - hr_loss_weight - lr_loss_weight``.
            fixed_attention: constant attention instead of ``scale_attention`` (0 = LR only, 1 = HR only).
            ignore_value: label value without loss.
        """
        super().__init__()
        if (scale_attention is None) == (fixed_attention is None):
            raise ValueError("HRDA needs exactly one of a scale-attention head and MODEL.HRDA.FIXED_ATTENTION")
        if not 0 < lr_scale <= 1:
            raise ValueError(f"HRDAHead: the context scale must be in (0, 1], got {lr_scale}")
        self.head = head
        self.scale_attention = scale_attention
        self.in_features = list(head.in_features)
        self.output_stride = int(output_stride)
        self.lr_scale = float(lr_scale)
        self.hr_loss_weight = float(hr_loss_weight)
        self.lr_loss_weight = float(lr_loss_weight)
        self.fixed_attention = None if fixed_attention is None else float(fixed_attention)
        self.ignore_value = ignore_value

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        """The single-scale head ``MODEL.SEM_SEG_HEAD.NAME`` from the registry, and its scale-attention variant
        (the head class's ``scale_attention_config(cfg, input_shape, num_classes)``: constructor kwargs)."""
        if cfg.MODEL.SEM_SEG_HEAD.AVG_NON_IGNORE:
            raise ValueError("MODEL.SEM_SEG_HEAD.AVG_NON_IGNORE is implemented for one scale (SingleScaleHead) only; "
                             "set it False with two MODEL.HRDA.SCALES")
        head = build_single_scale_head(cfg, input_shape, cls.__name__)
        head_cls, name = type(head), cfg.MODEL.SEM_SEG_HEAD.NAME
        hrda = cfg.MODEL.HRDA
        scale_attention = None
        if hrda.FIXED_ATTENTION is None:
            if not hasattr(head_cls, "scale_attention_config"):
                raise ValueError(
                    f"MODEL.SEM_SEG_HEAD.NAME={name!r} has no scale-attention variant (a classmethod "
                    f"scale_attention_config(cfg, input_shape, num_classes) returning its constructor kwargs); add "
                    f"one, or set MODEL.HRDA.FIXED_ATTENTION")
            num_outputs = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES if hrda.ATTENTION_CLASSWISE else 1
            scale_attention = head_cls(**head_cls.scale_attention_config(cfg, input_shape, num_outputs))
        return {
            "head": head,
            "scale_attention": scale_attention,
            "output_stride": input_shape[head.in_features[0]].stride,
            "lr_scale": min(hrda.SCALES),
            "hr_loss_weight": hrda.HR_LOSS_WEIGHT,
            "lr_loss_weight": hrda.LR_LOSS_WEIGHT,
            "fixed_attention": hrda.FIXED_ATTENTION,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        }

    # ------------------------------------------------------------------------------------------------------
    def attention(self, lr_features: Dict[str, Tensor]) -> Union[Tensor, float]:
        """Sigmoid scale attention ``N x K' x h_lr x w_lr`` (K' = classes or 1), or the fixed float."""
        if self.scale_attention is None:
            return self.fixed_attention
        return torch.sigmoid(self.scale_attention(lr_features))

    def merge_tiles(self, tile_logits: Sequence[Tensor], boxes: Sequence[CropBox]) -> Tensor:
        """Average tile logits (each ``N x K x h_t x w_t``) on the HR-logit canvas of their image (§5.2).

        Tile boxes are mapped to logit pixels with ``int(c / output_stride)``; the canvas is ``(max y2, max x2)``
        of the mapped boxes.
        """
        boxes = [scale_box(box, self.output_stride) for box in boxes]
        canvas = (max(b[1] for b in boxes), max(b[3] for b in boxes))
        return merge_windows((_fit_to_box(t, b) for t, b in zip(tile_logits, boxes)), boxes, canvas)

    def decode_hr(self, hr_input: HRInput, batch_size: int) -> Tensor:
        """Detail logits: ``head`` on one crop's features, or on all tiles at once merged with
        :meth:`merge_tiles`; already decoded logits (a tensor) are returned as they are."""
        if isinstance(hr_input, Tensor):
            return hr_input
        if isinstance(hr_input, TiledFeatures):
            logits = self.head(hr_input.features)
            return self.merge_tiles(logits.split(batch_size), hr_input.boxes)
        return self.head(hr_input)

    def forward(self, scale_inputs: Sequence[HRInput], crop_box: Optional[CropBox],
                output_size: Sequence[int]) -> ScaleOutputs:
        """Head calls in the original order (context, detail, attention), then ``fuse_scales`` (§5.3).

        Args:
            scale_inputs: ``[lr_features, hr_input]``: the backbone features of the context image (the whole image
                at ``lr_scale``), then the detail crop's features (training), the HR tiles' features, or decoded
                HR logits ``N x K x H/os x W/os`` (inference).
            crop_box: the detail crop in HR-image pixels (training: the attention is masked to it), else None.
            output_size: ``(H_out, W_out)`` of ``ScaleOutputs.prediction``.
        """
        lr_features, hr_input = scale_inputs
        # the fusion runs in float32 (cheap, element-wise ops at logit resolution), also under bf16/fp16 autocast
        lr_logits = self.head(lr_features).float()
        hr_logits = self.decode_hr(hr_input, lr_logits.shape[0]).float()
        attention = self.attention(lr_features)
        attention = attention.float() if isinstance(attention, Tensor) else attention
        fusion = fuse_scales(lr_logits, hr_logits, attention, lr_scale=self.lr_scale, hr_scale=1.0,
                             output_stride=self.output_stride, crop_box=crop_box)
        return ScaleOutputs(resize_logits(fusion.fused, output_size), fusion.fused, lr_logits, hr_logits, fusion)

    def losses(self, outputs: ScaleOutputs, sem_seg: Tensor, weight: Optional[Tensor],
               crop_box: Optional[CropBox]) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        """``(1 - w_hr - w_lr) * CE(fused) + w_hr * CE(detail crop) [+ w_lr * CE(scaled context)]`` (§5.4).

        Args:
            outputs: :meth:`forward`'s result for a training batch.
            sem_seg: ``N x H x W`` int64 labels of the HR image; weight: optional ``N x H x W`` pixel weights.
            crop_box: the detail crop (its labels / weights are cut with it), or None (the whole image).
        Returns:
            ``(losses, metrics)``: ``loss_sem_seg`` [, ``loss_sem_seg_hr``, ``loss_sem_seg_lr``], each already
            weighted and averaged over all label pixels; pixel accuracies ``acc_sem_seg[_hr|_lr]`` in percent.
        """
        fused = resize_to_labels(outputs.logits, sem_seg)
        losses = {"loss_sem_seg": pixel_weighted_cross_entropy(fused, sem_seg, weight, self.ignore_value)}
        metrics = {"acc_sem_seg": pixel_accuracy(fused, sem_seg)}
        if self.lr_loss_weight > 0:
            lr = resize_to_labels(outputs.fusion.scaled_lr, sem_seg)
            ce = pixel_weighted_cross_entropy(lr, sem_seg, weight, self.ignore_value)
            losses["loss_sem_seg_lr"] = self.lr_loss_weight * ce
            metrics["acc_sem_seg_lr"] = pixel_accuracy(lr, sem_seg)
        if self.hr_loss_weight > 0:
            hr_labels = sem_seg if crop_box is None else crop(sem_seg, crop_box)
            hr_weight = weight if weight is None or crop_box is None else crop(weight, crop_box)
            hr = resize_to_labels(outputs.hr_logits, hr_labels)
            ce = pixel_weighted_cross_entropy(hr, hr_labels, hr_weight, self.ignore_value)
            losses["loss_sem_seg_hr"] = self.hr_loss_weight * ce
            metrics["acc_sem_seg_hr"] = pixel_accuracy(hr, hr_labels)
        losses["loss_sem_seg"] = losses["loss_sem_seg"] * (1.0 - self.lr_loss_weight - self.hr_loss_weight)
        return losses, metrics


@SEM_SEG_HEADS_REGISTRY.register()
class SingleScaleHead(nn.Module):
    """The plain segmentor's head (one scale, the original's ``EncoderDecoder``) with the interface of
    :class:`HRDAHead`: ``head`` on the whole image's features, loss ``loss_weight * CE`` of the prediction.

    Attributes: ``head`` (the single-scale head), ``scale_attention`` (None), ``in_features`` (those of ``head``),
    ``output_stride`` (of ``head``'s logits), ``num_scales`` (1).
    """

    num_scales = 1
    scale_attention = None

    @configurable
    def __init__(self, *, head: nn.Module, output_stride: int, loss_weight: float = 1.0, ignore_value: int = 255,
                 avg_non_ignore: bool = False):
        """
        Args:
            head: the single-scale head (``forward(features) -> logits``, attribute ``in_features``).
            output_stride: stride of ``head``'s logits w.r.t. its input image.
            loss_weight: weight of the cross-entropy (``MODEL.SEM_SEG_HEAD.LOSS_WEIGHT``).
            ignore_value: label value without loss.
            avg_non_ignore: unweighted losses average over the non-ignored label pixels
                (``MODEL.SEM_SEG_HEAD.AVG_NON_IGNORE``, docs/method.md §19.3).
        """
        super().__init__()
        self.head = head
        self.in_features = list(head.in_features)
        self.output_stride = int(output_stride)
        self.loss_weight = float(loss_weight)
        self.ignore_value = ignore_value
        self.avg_non_ignore = bool(avg_non_ignore)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = build_single_scale_head(cfg, input_shape, cls.__name__)
        return {
            "head": head,
            "output_stride": input_shape[head.in_features[0]].stride,
            "loss_weight": cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "avg_non_ignore": cfg.MODEL.SEM_SEG_HEAD.AVG_NON_IGNORE,
        }

    def forward(self, scale_inputs: Sequence[Dict[str, Tensor]], crop_box: Optional[CropBox],
                output_size: Sequence[int]) -> ScaleOutputs:
        """``head`` on ``[features]`` (the whole image's); ``crop_box`` must be None (no detail crop); the
        prediction is the logits resized to ``output_size``."""
        (features,) = scale_inputs
        if crop_box is not None:
            raise ValueError(f"{type(self).__name__}: one scale has no detail crop, got crop_box {crop_box}")
        logits = self.head(features)
        return ScaleOutputs(resize_logits(logits, output_size), logits)

    def losses(self, outputs: ScaleOutputs, sem_seg: Tensor, weight: Optional[Tensor],
               crop_box: Optional[CropBox]) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        """``loss_weight * CE`` of the prediction resized to the labels (the prediction itself at the input size,
        as the original's ``EncoderDecoder``), averaged over all label pixels (without ``weight`` and with
        ``avg_non_ignore``: over the non-ignored ones); ``acc_sem_seg`` in percent."""
        logits = resize_to_labels(outputs.prediction, sem_seg)
        ce = pixel_weighted_cross_entropy(logits, sem_seg, weight, self.ignore_value, self.avg_non_ignore)
        return {"loss_sem_seg": self.loss_weight * ce}, {"acc_sem_seg": pixel_accuracy(logits, sem_seg)}


def build_single_scale_head(cfg, input_shape: Dict[str, ShapeSpec], wrapper: str) -> nn.Module:
    """The registered head ``MODEL.SEM_SEG_HEAD.NAME`` that ``wrapper`` (HRDAHead, SingleScaleHead) holds."""
    name = cfg.MODEL.SEM_SEG_HEAD.NAME
    if name in (HRDAHead.__name__, SingleScaleHead.__name__):
        raise ValueError(f"MODEL.SEM_SEG_HEAD.NAME is the single-scale head inside {wrapper} (e.g. "
                         f"'DAFormerHead'), not {name!r}; MODEL.HRDA.SCALES chooses {wrapper} (two scales: "
                         f"MODEL.HRDA.HEAD_NAME)")
    return SEM_SEG_HEADS_REGISTRY.get(name)(cfg, input_shape)


def _fit_to_box(tile_logits: Tensor, box: CropBox) -> Tensor:
    """Tile logits unchanged, or resized to the box when a size that is not a multiple of the output stride made
    them one pixel larger than the truncated box (the original fails there)."""
    size = (box[1] - box[0], box[3] - box[2])
    if tuple(tile_logits.shape[-2:]) == size:
        return tile_logits
    return F.interpolate(tile_logits, size=size, mode="bilinear", align_corners=False)
