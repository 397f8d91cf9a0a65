"""Checkpoints of this project written before the registered HRDAHead (``sem_seg_head.*`` = the single-scale
head, ``scale_attention.*`` at the top) still load strictly, for evaluation and for resuming."""
from collections import OrderedDict

import pytest
import torch
from detectron2.modeling import build_model

from hrda_d2.checkpoint import AtomicDetectionCheckpointer, load_model_weights
from hrda_d2.checkpoint.legacy_layout import upgrade_head_keys
from tests.helpers.tiny_configs import small_input_hrda_cfg


def old_layout(state_dict):
    """The 0.1 key names of a two-scale model's state dict (written independently of the upgrade code)."""
    out = OrderedDict()
    for key, value in state_dict.items():
        if key.startswith("sem_seg_head.head."):
            key = "sem_seg_head." + key[len("sem_seg_head.head."):]
        elif key.startswith("sem_seg_head.scale_attention."):
            key = "scale_attention." + key[len("sem_seg_head.scale_attention."):]
        out[key] = value.clone()
    return out


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    source = build_model(small_input_hrda_cfg()).eval()
    return source, build_model(small_input_hrda_cfg()).eval()


def test_old_layout_file_loads_strictly_and_predicts_the_same(models, tmp_path):
    source, target = models
    old = old_layout(source.state_dict())
    assert any(k.startswith("scale_attention.") for k in old) and not any(k.startswith("sem_seg_head.head.") for k in old)
    path = tmp_path / "model_0001999.pth"
    torch.save({"model": old, "teacher": old_layout(source.state_dict()), "iteration": 1999}, path)
    load_model_weights(target, str(path))  # strict: any missing / unexpected key would raise
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    images = torch.rand(1, 3, 128, 128) * 255
    with torch.no_grad():
        assert torch.equal(source([{"image": images[0]}])[0]["sem_seg"], target([{"image": images[0]}])[0]["sem_seg"])
    teacher = build_model(small_input_hrda_cfg()).eval()
    load_model_weights(teacher, str(path), source="teacher")
    assert torch.equal(teacher.state_dict()["sem_seg_head.scale_attention.conv_seg.weight"],
                       source.state_dict()["sem_seg_head.scale_attention.conv_seg.weight"])


def test_resume_loads_every_model_entry_of_an_old_file(models, tmp_path):
    source, target = models
    teacher = build_model(small_input_hrda_cfg())
    path = tmp_path / "old.pth"
    torch.save({"model": old_layout(source.state_dict()), "teacher": old_layout(source.state_dict())}, path)
    AtomicDetectionCheckpointer(target, str(tmp_path), teacher=teacher).load(str(path))
    assert torch.equal(teacher.state_dict()["sem_seg_head.head.conv_seg.bias"],
                       source.state_dict()["sem_seg_head.head.conv_seg.bias"])


def test_upgrade_touches_nothing_else():
    new_model_keys = ["backbone.a", "sem_seg_head.head.w", "sem_seg_head.scale_attention.w"]
    current = OrderedDict([("backbone.a", 1), ("sem_seg_head.head.w", 2), ("sem_seg_head.scale_attention.w", 3)])
    assert upgrade_head_keys(current, new_model_keys) == 0 and list(current) == new_model_keys
    single_scale = OrderedDict([("backbone.a", 1), ("sem_seg_head.w", 2)])  # plain DAFormer: keys are current
    assert upgrade_head_keys(single_scale, ["backbone.a", "sem_seg_head.w"]) == 0
    assert list(single_scale) == ["backbone.a", "sem_seg_head.w"]
    old = OrderedDict([("backbone.a", 1), ("sem_seg_head.w", 2), ("scale_attention.w", 3)])
    assert upgrade_head_keys(old, new_model_keys) == 2 and list(old) == new_model_keys


def test_single_scale_file_of_the_plain_head_layout_loads_strictly_and_predicts_the_same(tmp_path):
    """A one-scale model's checkpoint written before the SingleScaleHead: its head at ``sem_seg_head.X``."""
    cfg = small_input_hrda_cfg(**{"MODEL.HRDA.SCALES": [1.0]})
    torch.manual_seed(0)
    source, target = build_model(cfg).eval(), build_model(cfg).eval()
    old = OrderedDict((k.replace("sem_seg_head.head.", "sem_seg_head."), v.clone())  # written independently
                      for k, v in source.state_dict().items())
    assert any(k.startswith("sem_seg_head.") for k in old) and not any(".head." in k for k in old)
    path = tmp_path / "model_final.pth"
    torch.save({"model": old, "iteration": 99}, path)
    load_model_weights(target, str(path))  # strict
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    image = torch.rand(3, 96, 128) * 255
    with torch.no_grad():
        assert torch.equal(source([{"image": image}])[0]["sem_seg"], target([{"image": image}])[0]["sem_seg"])
