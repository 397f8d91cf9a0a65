"""ResNet-V1c, the DeepLabV2 backbone of the paper's Table 2 (docs/method.md §18.1): Detectron2's ResNet with its
DeepLab stem, plus the one thing Detectron2's DeepLab ResNet lacks, the *contracted* first dilation.

The original (mmseg ``ResNetV1c`` as ``configs/_base_/models/deeplabv2_r50-d8.py`` sets it, depth 101, the
ImageNet weights ``open-mmlab://resnet101_v1c``):

* deep stem: three 3x3 convs (3 -> 32, stride 2; 32 -> 32; 32 -> 64), each BN + ReLU, then 3x3 max pooling
  with stride 2 and padding 1 (Detectron2's ``DeepLabStem`` with 64 output channels);
* bottleneck blocks with the stride on the 3x3 conv ("pytorch" style, ``STRIDE_IN_1X1 False``) and a 1x1
  conv + BN shortcut on the first block of each stage;
* stage strides (1, 2, 1, 1) and dilations (1, 1, 2, 4): output stride 8 for ``res3``..``res5``;
* ``contract_dilation``: the first block of a dilated stage uses half the stage's dilation (res4: 1, 2, 2, ...;
  res5: 2, 4, 4). Detectron2's ``build_resnet_deeplab_backbone`` gives every res4 block the same dilation, so
  its outputs differ; here the stages are built with Detectron2's ``ResNet.make_stage`` and per-block dilations;
* trainable BatchNorm (``MODEL.RESNETS.NORM "BN"``; mmseg ``norm_eval False``), nothing frozen
  (``MODEL.BACKBONE.FREEZE_AT 0``).

Outputs ``res2``..``res5`` (256, 512, 1024, 2048 channels) at strides 4, 8, 8, 8. Parameter names are
Detectron2's (``stem.conv1``, ``res2.0.conv1.norm``, ``res2.0.shortcut``, ...); the converter maps the mmcv
ImageNet file onto them (hrda_d2/checkpoint/resnet_conversion.py).
"""
from typing import List

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import BottleneckBlock, ResNet
from detectron2.projects.deeplab.resnet import DeepLabStem

__all__ = ["RESNET_BLOCKS_PER_STAGE", "build_resnet_v1c_backbone", "stage_dilations"]

RESNET_BLOCKS_PER_STAGE = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def stage_dilations(num_blocks: int, dilation: int, contract: bool) -> List[int]:
    """Per-block dilations of a stage: ``dilation`` everywhere, the first block ``dilation // 2`` when
    ``contract`` and ``dilation > 1`` (mmseg ``ResLayer(contract_dilation=True)``)."""
    first = dilation // 2 if contract and dilation > 1 else dilation
    return [first] + [dilation] * (num_blocks - 1)


@BACKBONE_REGISTRY.register()
def build_resnet_v1c_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """``MODEL.BACKBONE.NAME "build_resnet_v1c_backbone"``: the ResNet of ``MODEL.RESNETS`` (``DEPTH``, ``NORM``,
    ``STEM_OUT_CHANNELS``, ``RES2_OUT_CHANNELS``, ``NUM_GROUPS``, ``WIDTH_PER_GROUP``, ``STRIDE_IN_1X1``,
    ``RES4_DILATION``, ``RES5_DILATION``, ``CONTRACT_DILATION``, ``OUT_FEATURES``), ``MODEL.BACKBONE.FREEZE_AT``."""
    res = cfg.MODEL.RESNETS
    if res.DEPTH not in RESNET_BLOCKS_PER_STAGE:
        raise ValueError(f"MODEL.RESNETS.DEPTH={res.DEPTH}: ResNet-V1c has depth 50, 101 or 152")
    if res.RES4_DILATION not in (1, 2) or res.RES5_DILATION not in (1, 2, 4) or (
            res.RES4_DILATION == 2 and res.RES5_DILATION != 4):
        raise ValueError(f"MODEL.RESNETS.RES4_DILATION={res.RES4_DILATION}, RES5_DILATION={res.RES5_DILATION}: use "
                         f"(2, 4) (DeepLabV2, output stride 8), (1, 2) (output stride 16) or (1, 1)")
    stem = DeepLabStem(input_shape.channels, res.STEM_OUT_CHANNELS, norm=res.NORM)
    out_stage = max({"res2": 2, "res3": 3, "res4": 4, "res5": 5}[f] for f in res.OUT_FEATURES)
    in_channels, out_channels = res.STEM_OUT_CHANNELS, res.RES2_OUT_CHANNELS
    bottleneck_channels = res.NUM_GROUPS * res.WIDTH_PER_GROUP
    stages = []
    for stage, num_blocks in zip(range(2, out_stage + 1), RESNET_BLOCKS_PER_STAGE[res.DEPTH]):
        dilation = {4: res.RES4_DILATION, 5: res.RES5_DILATION}.get(stage, 1)
        first_stride = 1 if stage == 2 or dilation > 1 else 2
        stages.append(ResNet.make_stage(
            BottleneckBlock, num_blocks, in_channels=in_channels, out_channels=out_channels,
            bottleneck_channels=bottleneck_channels, num_groups=res.NUM_GROUPS, norm=res.NORM,
            stride_in_1x1=res.STRIDE_IN_1X1, stride_per_block=[first_stride] + [1] * (num_blocks - 1),
            dilation_per_block=stage_dilations(num_blocks, dilation, res.CONTRACT_DILATION)))
        in_channels, out_channels, bottleneck_channels = out_channels, out_channels * 2, bottleneck_channels * 2
    return ResNet(stem, stages, out_features=list(res.OUT_FEATURES)).freeze(cfg.MODEL.BACKBONE.FREEZE_AT)
