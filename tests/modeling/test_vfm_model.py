"""VFM-UDA plumbing without the reference weights (docs/method.md §19): token-mask errors of the meta-architecture,
``MODEL.SEM_SEG_HEAD.AVG_NON_IGNORE``, the head's shapes, the resize rule, and the conversion's refusals."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone

from hrda_d2.checkpoint import CheckpointConversionError, convert_checkpoint
from hrda_d2.checkpoint.conversion import expected_layouts_text
from hrda_d2.modeling.backbone.dinov2_vit import vfm_input_size
from hrda_d2.modeling.heads import DLV2Head, VFMLightweightHead
from hrda_d2.modeling.losses import pixel_weighted_cross_entropy
from hrda_d2.modeling.meta_arch.hrda import HRDA
from hrda_d2.modeling.meta_arch.hrda_head import HRDAHead, SingleScaleHead


class _ConvBackbone(Backbone):
    """A 1-conv backbone with stride 8 (``res5``), no token masking."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 8, stride=8)

    def output_shape(self):
        return {"res5": ShapeSpec(channels=4, stride=8)}

    def forward(self, x):
        return {"res5": self.conv(x)}


def _hrda(scales):
    backbone = _ConvBackbone()
    head = DLV2Head(backbone.output_shape(), in_features=["res5"], num_classes=3, dilations=[1])
    wrapper = (SingleScaleHead(head=head, output_stride=8) if len(scales) == 1 else
               HRDAHead(head=head, scale_attention=None, output_stride=8, lr_scale=0.5, fixed_attention=0.5))
    return HRDA(backbone=backbone, sem_seg_head=wrapper, scales=scales, pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3,
                hr_crop_size=[32, 32])


def test_token_mask_is_refused_with_two_scales_or_without_token_masking():
    images, mask = torch.randn(1, 3, 64, 64), torch.zeros(1, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="one scale only"):
        _hrda([0.5, 1.0]).forward_train(images, token_mask=mask)
    with pytest.raises(ValueError, match="has no token masking"):
        _hrda([1.0]).forward_train(images, token_mask=mask)
    with pytest.raises(ValueError, match="training-forward argument"):
        _hrda([1.0]).eval()([{"image": torch.zeros(3, 64, 64)}], token_mask=mask)


def test_avg_non_ignore_averages_unweighted_losses_over_labelled_pixels():
    logits, labels = torch.randn(2, 4, 5, 6), torch.randint(0, 4, (2, 5, 6))
    labels[0, :2] = 255
    mean_all = pixel_weighted_cross_entropy(logits, labels)
    assert torch.equal(mean_all, F.cross_entropy(logits, labels, reduction="none", ignore_index=255).mean())
    labelled = pixel_weighted_cross_entropy(logits, labels, avg_non_ignore=True)
    torch.testing.assert_close(labelled, F.cross_entropy(logits, labels, ignore_index=255), rtol=1e-6, atol=0)
    weight = torch.rand(2, 5, 6)  # weighted losses keep the N*H*W denominator
    assert torch.equal(pixel_weighted_cross_entropy(logits, labels, weight, avg_non_ignore=True),
                       pixel_weighted_cross_entropy(logits, labels, weight))
    all_ignored = torch.full_like(labels, 255)
    assert pixel_weighted_cross_entropy(logits, all_ignored, avg_non_ignore=True).item() == 0.0


def test_single_scale_head_uses_avg_non_ignore():
    head = DLV2Head({"res5": ShapeSpec(channels=4, stride=8)}, in_features=["res5"], num_classes=3, dilations=[1])
    features = {"res5": torch.randn(1, 4, 4, 4)}
    labels = torch.randint(0, 3, (1, 32, 32))
    labels[:, :16] = 255
    plain, non_ignore = (SingleScaleHead(head=head, output_stride=8, avg_non_ignore=a) for a in (False, True))
    out = plain([features], None, (32, 32))
    loss_all = plain.losses(out, labels, None, None)[0]["loss_sem_seg"]
    loss_labelled = non_ignore.losses(out, labels, None, None)[0]["loss_sem_seg"]
    torch.testing.assert_close(loss_labelled, 2 * loss_all)  # half of the pixels are ignored


def test_lightweight_head_upsamples_tokens_by_4_with_the_original_init():
    torch.manual_seed(0)
    head = VFMLightweightHead({"vit_tokens": ShapeSpec(channels=64)}, in_features=["vit_tokens"], num_classes=19)
    assert head({"vit_tokens": torch.randn(2, 64, 5, 7)}).shape == (2, 19, 20, 28)
    assert head.out.bias is None and abs(head.out.weight.std().item() - 0.1) < 0.02
    assert sorted(k for k, _ in head.named_parameters())[:2] == ["out.weight", "upscale.0.weight"]
    with pytest.raises(ValueError, match="IN_FEATURES"):
        VFMLightweightHead({"vit_tokens": ShapeSpec(channels=64)}, in_features=["res5"], num_classes=19)


def test_vfm_input_size_is_the_originals_rule():
    assert vfm_input_size((1024, 1024), 1.1, 14) == (1120, 1120)  # int((1024 * 1.1) // 14 * 14)
    assert vfm_input_size((512, 1024), 1.1, 14) == (560, 1120)
    assert vfm_input_size((96, 64), 1.1, 14) == (98, 70)


def test_conversion_refuses_other_networks_and_missing_teachers():
    sd = {"network.encoder.cls_token": torch.zeros(1), "network.decoder.weight": torch.zeros(1)}
    with pytest.raises(CheckpointConversionError, match="VFM-UDA Lightning training checkpoint"):
        convert_checkpoint({"state_dict": sd}, source="x.ckpt")  # unknown network: not detected, layouts listed
    assert "VFM-UDA Lightning" in expected_layouts_text()
    sd = {"network.encoder.cls_token": torch.zeros(1), "network.upscale.0.weight": torch.zeros(1),
          "network.out.weight": torch.zeros(1), "network.extra.weight": torch.zeros(1)}
    with pytest.raises(CheckpointConversionError, match="no network_ema"):
        convert_checkpoint({"state_dict": sd}, teacher=True, source="x.ckpt")
    with pytest.raises(CheckpointConversionError, match="outside the VITLightweightHead layout"):
        convert_checkpoint({"state_dict": sd}, source="x.ckpt")
