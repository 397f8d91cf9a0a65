"""Fusion of the context (LR) and detail (HR) predictions with the scale attention (docs/method.md §5.3)."""
from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.nn import functional as F

from .crop_utils import scale_box

__all__ = ["FusedScales", "fuse_scales"]


class FusedScales(NamedTuple):
    """Outputs of ``fuse_scales``.

    fused:        ``B x C x H_hr x W_hr`` fused logits (stride ``output_stride`` of the HR image).
    scaled_lr:    ``B x C x h_lr x w_lr`` attention-scaled LR logits ``(1 - att) * lr`` (what an LR loss sees).
    attention:    the attention at HR-logit resolution (upsampled, masked) or the fixed float.
    hr_inserted:  the HR logits on the fused canvas (zero outside the detail crop in training).
    """

    fused: Tensor
    scaled_lr: Tensor
    attention: Union[Tensor, float]
    hr_inserted: Tensor


def _upsample(x: Tensor, factor: float, size: Optional[Sequence[int]]) -> Tensor:
    """bilinear x ``factor`` (align_corners False), or to ``size`` when the factor cannot reach it; factor 1 (equal
    scales) returns ``x`` itself, which is what the bilinear x1 of the original computes.

    While a graph is traced for export (docs/method.md §23.2) a given ``size`` is always used: the choice above is a
    Python comparison of shapes that a trace would freeze. For an integer factor that reaches ``size`` both calls map
    the same source coordinates (``in / size == 1 / factor`` exactly), so the exported graph equals eager PyTorch at
    every size."""
    if size is not None and torch.jit.is_tracing():  # a bilinear resize to the same size is the identity too
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    if factor == 1.0 and (size is None or tuple(x.shape[-2:]) == tuple(size)):
        return x
    if size is not None and tuple(int(s * factor) for s in x.shape[-2:]) != tuple(size):
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


def fuse_scales(
    lr_logits: Tensor,
    hr_logits: Tensor,
    attention: Union[Tensor, float],
    *,
    lr_scale: float,
    hr_scale: float = 1.0,
    output_stride: int = 4,
    crop_box: Optional[Sequence[int]] = None,
) -> FusedScales:
    """``fused = att * hr_inserted + up((1 - att) * lr)`` in the exact order of the original.

    Args:
        lr_logits: ``B x C x h x w`` head output on the context (LR) image.
        hr_logits: training: ``B x C x h_c x w_c`` head output on the detail crop; inference: the HR
            logits of the whole image (slide-merged), ``B x C x H x W``.
        attention: sigmoid scale attention ``B x C' x h x w`` at LR-logit resolution, or a fixed float.
        lr_scale, hr_scale: image scales of the two branches (e.g. 0.5 and 1.0).
        output_stride: stride of the head output w.r.t. its input image (4 for DAFormer).
        crop_box: detail crop ``(y1, y2, x1, x2)`` in HR-image pixels (training), None at inference.

    Order (docs/method.md §5.3): (1) with a crop box the attention is multiplied by a 0/1 mask of the box mapped
    to LR-logit pixels (``int(c / (output_stride / lr_scale))``); (2) ``scaled_lr = (1 - att) * lr`` at LR
    resolution; (3) ``scaled_lr`` and a tensor attention are upsampled bilinearly by ``hr_scale /
    lr_scale``; (4) the HR logits are written into a zero canvas at ``int(c / output_stride)`` (training)
    or used as they are (inference); (5) ``fused = att * hr_inserted + up_scaled_lr``. Because the masked
    attention is upsampled, its border is blurred (e.g. ``0.75 * att`` on the first row inside the box).

    At inference, when the input size is not a multiple of the strides and ``x factor`` does not reach the
    HR logits' size, the upsampling targets that size instead (the original fails on such sizes).
    """
    factor = hr_scale / lr_scale
    if crop_box is not None:
        mask = lr_logits.new_zeros((lr_logits.shape[0], 1, *lr_logits.shape[2:]))
        y1, y2, x1, x2 = scale_box(crop_box, output_stride / lr_scale)
        mask[:, :, y1:y2, x1:x2] = 1
        attention = attention * mask
    scaled_lr = (1 - attention) * lr_logits
    target_size = None if crop_box is not None else hr_logits.shape[-2:]
    up_lr = _upsample(scaled_lr, factor, target_size)
    if isinstance(attention, Tensor):
        attention = _upsample(attention, factor, target_size)
    if crop_box is not None:
        hr_inserted = up_lr.new_zeros(up_lr.shape)
        y1, y2, x1, x2 = scale_box(crop_box, output_stride)
        region = hr_inserted[:, :, y1:y2, x1:x2]
        if region.shape != hr_logits.shape:
            raise ValueError(
                f"detail logits {tuple(hr_logits.shape)} do not fit the crop box {tuple(crop_box)} mapped to "
                f"{(y1, y2, x1, x2)} on the {tuple(up_lr.shape[-2:])} canvas; the HR crop size and offsets "
                f"must be multiples of the output stride x 1/lr_scale ({output_stride / lr_scale:g})"
            )
        hr_inserted[:, :, y1:y2, x1:x2] = hr_logits
    else:
        hr_inserted = hr_logits
    fused = attention * hr_inserted + up_lr
    return FusedScales(fused=fused, scaled_lr=scaled_lr, attention=attention, hr_inserted=hr_inserted)
