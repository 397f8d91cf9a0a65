"""The converter on the DeepLabV2 layouts of the paper's Table 2 (tests/fixtures/dlv2_reference): the mmcv
ResNet-V1c ImageNet file in every variant the real file may have, AdvSeg / MinEnt training checkpoints (plain and
HRDA), and the refusals."""
import pytest
import torch
from detectron2.modeling import build_model

from hrda_d2.checkpoint import CheckpointConversionError, convert_checkpoint
from tests.fixtures.dlv2_reference import make_original_files as mof
from tests.helpers.dlv2_reference import dlv2_cfg


@pytest.fixture(scope="module")
def spec():
    return mof.load_spec()


@pytest.mark.parametrize("with_nbt,wrapped", [(False, False), (True, False), (False, True)])
def test_imagenet_file_variants_convert_to_the_backbone(spec, with_nbt, wrapped):
    obj = mof.build_file(spec, mof.IMAGENET_FILE, imagenet_with_nbt=with_nbt, imagenet_wrapped=wrapped)
    result = convert_checkpoint(obj, source="resnet101_v1c.pth")
    assert (result.layout, result.backbone) == ("mmcv ResNet-V1c ImageNet state dict", "resnet101_v1c")
    assert result.dropped_keys == ["fc.weight", "fc.bias"]
    model = build_model(dlv2_cfg(hrda=False))
    expected = {k for k in model.state_dict() if k.startswith("backbone.")}
    if not with_nbt:
        expected = {k for k in expected if not k.endswith("num_batches_tracked")}
    assert set(result.state_dict) == expected
    source = obj["state_dict"] if wrapped else obj
    assert torch.equal(result.state_dict["backbone.stem.conv1.weight"], source["stem.0.weight"])
    assert torch.equal(result.state_dict["backbone.res4.22.conv2.norm.running_var"], source["layer3.22.bn2.running_var"])
    assert torch.equal(result.state_dict["backbone.res2.0.shortcut.norm.bias"], source["layer1.0.downsample.1.bias"])


@pytest.mark.parametrize("name,layout,hrda", [
    ("dlv2red_advseg_checkpoint.pth", "DeepLabV2 AdvSeg training checkpoint", False),
    ("hrda_dlv2red_advseg_checkpoint.pth", "HRDA AdvSeg training checkpoint", True),
    ("dlv2red_minent_checkpoint.pth", "DeepLabV2 UDA training checkpoint", False),
])
def test_training_checkpoints_convert_to_the_model(spec, name, layout, hrda):
    obj = mof.build_file(spec, name)
    result = convert_checkpoint(obj, source=name)
    assert result.layout == layout and result.source_prefix == "model."
    assert result.sem_seg_head.fusion == "dlv2" and result.sem_seg_head.num_aspp_branches == 2
    assert (result.scale_attention is not None) == hrda
    model = build_model(dlv2_cfg(hrda=hrda))
    assert set(result.state_dict) == set(model.state_dict())  # student only; model_D.* is dropped
    assert any(k.startswith("model_D.") for k in result.dropped_keys) == ("advseg" in name)
    head = "sem_seg_head.head."  # HRDAHead or SingleScaleHead: the single-scale head is its .head
    prefix = "model.decode_head.head." if hrda else "model.decode_head."
    assert torch.equal(result.state_dict[head + "aspp_modules.1.weight"],
                       obj["state_dict"][prefix + "aspp_modules.1.conv.weight"])
    with pytest.raises(CheckpointConversionError, match="only DACS checkpoints hold an EMA teacher"):
        convert_checkpoint(obj, teacher=True, source=name)


def test_inconsistent_resnet_and_unknown_layouts_are_named(spec):
    obj = mof.build_file(spec, mof.IMAGENET_FILE)
    broken = {k: v for k, v in obj.items() if k != "layer3.5.conv2.weight"}
    with pytest.raises(CheckpointConversionError, match=r"missing \[layer3\.5\.conv2\.weight\]"):
        convert_checkpoint(broken, source="broken.pth")
    shallow = {k: v for k, v in obj.items() if not k.startswith("layer3.") or int(k.split(".")[1]) < 5}
    with pytest.raises(CheckpointConversionError, match=r"\[3, 4, 5, 3\] blocks per stage is not a known depth"):
        convert_checkpoint(shallow, source="shallow.pth")
    with pytest.raises(CheckpointConversionError, match="ResNet-V1c ImageNet weights"):
        convert_checkpoint({"foo.weight": torch.zeros(1)}, source="random.pth")
