"""The registered HRDAHead: built by name from SEM_SEG_HEADS_REGISTRY around the single-scale head
MODEL.SEM_SEG_HEAD.NAME, with a scale attention of the same type (docs/method.md §5.1)."""
import pytest
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY, build_model
from torch import nn

from hrda_d2.modeling.heads import DAFormerHead
from hrda_d2.modeling.meta_arch import HRDAHead
from tests.helpers.tiny_configs import small_input_hrda_cfg


def test_attention_is_a_daformer_head_with_conv_fusion():
    model = build_model(small_input_hrda_cfg())
    head = model.sem_seg_head
    assert isinstance(head, HRDAHead) and isinstance(head.head, DAFormerHead)
    assert isinstance(head.scale_attention, DAFormerHead) and head.output_stride == 4 and head.lr_scale == 0.5
    assert head.scale_attention.conv_seg.weight.shape == (19, 16, 1, 1)  # ATTENTION_EMBED_DIM 16, class-wise
    assert not hasattr(head.scale_attention.fuse_layer, "aspp_modules")  # 1x1-conv fusion
    assert head.in_features == head.head.in_features == ["res2", "res3", "res4", "res5"]
    single = build_model(small_input_hrda_cfg(**{"MODEL.HRDA.ATTENTION_CLASSWISE": False})).sem_seg_head
    assert single.scale_attention.conv_seg.weight.shape[0] == 1
    fixed = build_model(small_input_hrda_cfg(**{"MODEL.HRDA.FIXED_ATTENTION": 1.0})).sem_seg_head
    assert fixed.scale_attention is None and fixed.attention({}) == 1.0


@SEM_SEG_HEADS_REGISTRY.register()
class _HeadWithoutAttentionVariant(nn.Module):
    in_features = ["res2"]

    def __init__(self, cfg, input_shape):
        super().__init__()
        self.conv = nn.Conv2d(input_shape["res2"].channels, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 1)

    def forward(self, features):
        return self.conv(features["res2"])


def test_a_head_without_attention_variant_is_refused_with_the_fix():
    cfg = small_input_hrda_cfg(**{"MODEL.SEM_SEG_HEAD.NAME": "_HeadWithoutAttentionVariant"})
    with pytest.raises(ValueError, match="scale_attention_config.*MODEL.HRDA.FIXED_ATTENTION"):
        build_model(cfg)
    # with a fixed attention any registered single-scale head plugs in
    cfg.MODEL.HRDA.FIXED_ATTENTION = 0.5
    model = build_model(cfg)
    assert isinstance(model.sem_seg_head.head, _HeadWithoutAttentionVariant)


def test_hrda_head_is_not_its_own_single_scale_head():
    shapes = {"res2": ShapeSpec(channels=32, stride=4)}
    with pytest.raises(ValueError, match="MODEL.SEM_SEG_HEAD.NAME is the single-scale head"):
        HRDAHead(small_input_hrda_cfg(**{"MODEL.SEM_SEG_HEAD.NAME": "HRDAHead"}), shapes)
