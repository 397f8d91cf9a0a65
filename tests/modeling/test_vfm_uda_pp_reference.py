"""VFMViTAdapter + VFMPyramidHead against outputs of the ORIGINAL VFM-UDA++ code (tests/fixtures/vfm_uda_pp_reference,
README there): a narrow DINOv2 (width 64, 4 blocks, 2 heads, MLP ratio 1; the timm ``vit_small_patch14_dinov2``
architecture with those overrides), SPM width 16, 5 classes, a 64 x 64 image resized to 224 (INPUT_SCALE 3.5).

Weights: the original's Lightning file converted by ``convert_checkpoint``. The narrow trunk is no published DINOv2,
so the module fixture ``narrow_dinov2`` declares it explicitly for the whole file: width 64 -> a DINOv2 architecture
(``DINOV2_ARCHS``) and the timm builder narrowed; the converter then checks the file against the narrow model. Tolerances reached (CPU, float32):
deformable-attention core and f1..f4 bit-identical (asserted at 1e-6 / 1e-5), logits through
``model([{"image", "height", "width"}])`` max |diff| ~3e-6 (asserted 1e-4; the normalisation differs in rounding:
``(x - 123.675) / 58.395`` here, ``(x / 255 - 0.485) / 0.229`` there).
"""
import copy

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from hrda_d2.checkpoint.conversion import convert_checkpoint, load_checkpoint_file
from hrda_d2.checkpoint.conversion_types import CheckpointConversionError
from hrda_d2.checkpoint import dinov2_conversion
from hrda_d2.checkpoint.vfm_conversion import LAYOUT_VFM_UDA, vfm_usage
from hrda_d2.modeling.backbone.vit_adapter import adapter_interaction_indexes, ms_deform_attn_core
from tests.helpers.paths import REPO_ROOT
from tests.helpers.vfm_reference import NARROW, declare_narrow_dinov2, original_normalize, vfm_adapter_model_cfg

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "vfm_uda_pp_reference"


@pytest.fixture(scope="module", autouse=True)
def narrow_dinov2():
    """The fixture's trunk as a known DINOv2 for this file only (conversion check and model building)."""
    with declare_narrow_dinov2(NARROW):
        yield


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE / "vfm_uda_pp_outputs.npz") as z:
        return {k: torch.from_numpy(z[k]) for k in z.files}


@pytest.fixture(scope="module")
def model():
    """The converted student, eval mode (built with the narrow trunk)."""
    torch.manual_seed(0)
    net = build_model(vfm_adapter_model_cfg())
    converted = convert_checkpoint(load_checkpoint_file(FIXTURE / "vfm_uda_pp_lightning.ckpt"))
    net.load_state_dict(converted.state_dict, strict=True)
    return net.eval()


def test_deform_attn_core_matches_original(ref):
    shapes = [tuple(int(v) for v in s) for s in ref["core_spatial_shapes"]]
    out = ms_deform_attn_core(ref["core_value"], shapes, ref["core_sampling_locations"],
                              ref["core_attention_weights"])
    torch.testing.assert_close(out, ref["core_output"], atol=1e-6, rtol=0)


def test_interaction_indexes_rule():
    assert adapter_interaction_indexes(4) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert adapter_interaction_indexes(12) == [(0, 2), (3, 5), (6, 8), (9, 11)]
    assert adapter_interaction_indexes(24) == [(0, 5), (6, 11), (12, 17), (18, 23)]
    with pytest.raises(ValueError, match="multiple of 4"):
        adapter_interaction_indexes(10)


def test_conversion_layout_and_teacher():
    obj = load_checkpoint_file(FIXTURE / "vfm_uda_pp_lightning.ckpt")
    student = convert_checkpoint(obj)
    teacher = convert_checkpoint(obj, teacher=True)
    assert student.layout == teacher.layout == LAYOUT_VFM_UDA
    assert student.network.name == teacher.network.name == "VITAdapterLightweightPyramidHead"
    assert student.backbone == "vit_small_patch14_dinov2" and student.num_classes == 5
    assert "MODEL.BACKBONE.NAME VFMViTAdapter" in vfm_usage(student)
    assert "MODEL.SEM_SEG_HEAD.NAME VFMPyramidHead" in vfm_usage(student)
    assert student.source_prefix == "network." and teacher.source_prefix == "network_ema."
    assert "network_feature_extractor.encoder.cls_token" in student.dropped_keys
    key = "sem_seg_head.head.out.weight"
    torch.testing.assert_close(teacher.state_dict[key], student.state_dict[key] * -0.5)
    with pytest.raises(CheckpointConversionError, match="network_ema"):
        convert_checkpoint({"state_dict": {k: v for k, v in obj["state_dict"].items()
                                           if not k.startswith("network_ema.")}}, teacher=True)


def test_adapter_features_match_original(model, ref):
    with torch.no_grad():
        feats = model.backbone(original_normalize(ref["image_uint8"]))
    for k, name in enumerate(("res2", "res3", "res4", "res5"), start=1):
        torch.testing.assert_close(feats[name], ref[f"f{k}"], atol=1e-5, rtol=0, msg=f"{name} vs f{k}")


def test_logits_through_model_call_match_original(model, ref):
    image = ref["image_uint8"][0]
    with torch.no_grad():
        (out,) = model([{"image": image, "height": 64, "width": 64}])
    torch.testing.assert_close(out["sem_seg"], ref["logits"][0], atol=1e-4, rtol=0)


def test_block_masked_forward_matches_original(model, ref):
    keep = ref["masked_keep_grid"][:, 0] > 0  # 1 x 4 x 4: round(224 / 64) = 4 blocks per side
    assert model.backbone.token_grid((64, 64)) == tuple(keep.shape[-2:])
    with torch.no_grad():
        feats = model.backbone(original_normalize(ref["image_uint8"]), token_mask=~keep)
        logits = model.sem_seg_head.head(feats)
    logits = torch.nn.functional.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits, ref["masked_logits"], atol=1e-4, rtol=0)


def test_train_mode_batch_statistics_and_momentum(ref):
    """Train mode: BatchNorms normalise with the batch statistics and update the running ones with momentum
    0.01 (the original's SyncBatchNorm on one process)."""
    net = build_model(vfm_adapter_model_cfg())
    net.load_state_dict(convert_checkpoint(load_checkpoint_file(FIXTURE / "vfm_uda_pp_lightning.ckpt")).state_dict)
    net.train()
    with torch.no_grad():
        feats = net.backbone(original_normalize(ref["image_uint8"]))
        logits = net.sem_seg_head.head(feats)
    logits = torch.nn.functional.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits, ref["train_logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(net.backbone.norm1.running_mean, ref["train_norm1_running_mean"], atol=1e-6, rtol=0)
    torch.testing.assert_close(net.sem_seg_head.head.upscale.norm1.running_var,
                               ref["train_upscale_norm1_running_var"], atol=1e-6, rtol=0)


def test_rejects_sizes_the_adapter_cannot_take(model):
    with pytest.raises(ValueError, match="multiples of 14 and 32"):
        model.backbone(torch.zeros(1, 3, 60, 60))  # 60 x 3.5 = 210 -> 210: not a multiple of 32


def test_teacher_logits_match_original(model, ref):
    teacher = copy.deepcopy(model)
    obj = load_checkpoint_file(FIXTURE / "vfm_uda_pp_lightning.ckpt")
    teacher.load_state_dict(convert_checkpoint(obj, teacher=True).state_dict, strict=True)
    with torch.no_grad():
        (out,) = teacher([{"image": ref["image_uint8"][0], "height": 64, "width": 64}])
    torch.testing.assert_close(out["sem_seg"], ref["ema_logits"][0], atol=1e-4, rtol=0)


def test_in1k_adapter_pretraining_layout_converts_to_backbone_only():
    """The original's starting point (network.encoder.* + classifier network.head.*, no pyramid head)."""
    sd = load_checkpoint_file(FIXTURE / "vfm_uda_pp_lightning.ckpt")["state_dict"]
    pre = {k: v for k, v in sd.items() if k.startswith("network.encoder.")}
    pre["network.head.1.weight"] = torch.zeros(3, 64)
    result = convert_checkpoint({"state_dict": pre})
    assert all(k.startswith("backbone.") for k in result.state_dict)
    assert result.dropped_keys == ["network.head.1.weight"]
    assert result.network.head is None and "backbone weights only" in vfm_usage(result)


def test_adapter_and_lightweight_layouts_are_told_apart_by_their_keys():
    """Each VFM network layout matches exactly one table entry (``encoder.spm.*`` / ``encoder.interactions.*``
    mark the adapter); a width the DINOv2 table does not know is refused outside this file's declaration."""
    from hrda_d2.checkpoint.vfm_conversion import NETWORK_LAYOUTS
    from tests.fixtures.vfm_uda_reference import make_weights

    adapter = {k[len("network."):]: v for k, v in
               load_checkpoint_file(FIXTURE / "vfm_uda_pp_lightning.ckpt")["state_dict"].items()
               if k.startswith("network.")}
    lightweight = {k[len("network."):]: v for k, v in make_weights.lightning_checkpoint(3)["state_dict"].items()
                   if k.startswith("network.")}
    pretraining = {k: v for k, v in adapter.items() if k.startswith("encoder.")}
    for network, name in ((adapter, "VITAdapterLightweightPyramidHead"), (lightweight, "VITLightweightHead"),
                          (pretraining, "DinoV2ViTAdapter ImageNet-1k pretraining")):
        assert [layout.name for layout in NETWORK_LAYOUTS if layout.matches(network)] == [name]
    with pytest.MonkeyPatch.context() as mp:
        mp.delitem(dinov2_conversion.DINOV2_ARCHS, NARROW["embed_dim"])
        with pytest.raises(CheckpointConversionError, match="width 64 is not supported"):
            convert_checkpoint({"state_dict": {"network." + k: v for k, v in adapter.items()}})
