"""Equivalence with the ORIGINAL implementation for the DeepLabV2 parts of the paper's Table 2
(tests/fixtures/dlv2_reference, see its README): ResNet-101-V1c features, DeepLabV2 head logits, plain
DeepLabV2 whole inference, HRDA on DeepLabV2 (whole and slide inference, training losses with a forced detail
crop). Files are converted with tools/convert_mmseg_checkpoint.py and loaded strictly."""
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model

from hrda_d2.checkpoint import load_model_weights
from hrda_d2.checkpoint.resnet_conversion import convert_dlv2_head
from hrda_d2.modeling.heads import DLV2Head
from tests.fixtures.dlv2_reference import make_original_files as mof
from tests.helpers.dlv2_reference import dlv2_cfg

REL_TOL = 1e-4  # max |a - b| / max |b| (README "Tolerances")
SOFTMAX_TOL = 1e-4


def rel_diff(ours: torch.Tensor, theirs) -> float:
    theirs = torch.as_tensor(theirs)
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def assert_logits_match(logits, key, io, agreement):
    ours = mof.sample_logits(logits, io[f"{key}_idx"]).softmax(1)
    theirs = torch.from_numpy(io[f"{key}_logits_at"]).softmax(1)
    assert (ours - theirs).abs().max().item() <= SOFTMAX_TOL, key
    argmax = logits.argmax(-3).to(torch.uint8).numpy().reshape(io[f"{key}_argmax"].shape)
    assert (argmax == io[f"{key}_argmax"]).mean() >= agreement, key


def load(cfg, path):
    model = build_model(cfg)
    load_model_weights(model, str(path))  # strict: every key, every shape
    return model


@pytest.fixture(scope="module")
def features(dlv2_converted, dlv2_io):
    """The ResNet-101-V1c stage outputs of the converted ImageNet file on the fixture image (eval mode)."""
    holder = torch.nn.Module()
    holder.backbone = build_backbone(dlv2_cfg(hrda=False))
    load_model_weights(holder, str(dlv2_converted["imagenet"]))
    holder.eval()
    with torch.no_grad():
        return holder.backbone(mof.normalize_uint8(dlv2_io["bb_image_rgb_uint8"]))


def test_resnet101_v1c_features_match_original(features, dlv2_io, dlv2_ref):
    for i, name in enumerate(("res2", "res3", "res4", "res5")):
        f = features[name]
        assert list(f.shape) == dlv2_ref["backbone"]["shapes"][i]
        assert rel_diff(f.reshape(-1)[torch.from_numpy(dlv2_io[f"bb_idx_{i}"]).long()], dlv2_io[f"bb_values_{i}"]) \
            <= REL_TOL, name
        assert rel_diff(f.mean((0, 2, 3)), dlv2_io[f"bb_channel_mean_{i}"]) <= REL_TOL, name
        assert rel_diff(f.mean(1)[0], dlv2_io[f"bb_pixel_mean_{i}"]) <= REL_TOL, name


@pytest.mark.parametrize("dilations,key", [((6, 12), "head_red_logits"), ((6, 12, 18, 24), "head_full_logits")])
def test_dlv2_head_logits_match_original(features, dlv2_originals, dlv2_io, dilations, key):
    original = torch.load(dlv2_originals["dlv2_full_head.pth"], map_location="cpu", weights_only=True)
    branches = {k: v for k, v in original.items() if int(k.split(".")[1]) < len(dilations)}
    state, summary = convert_dlv2_head(branches, 2048, "dlv2_full_head.pth")
    assert summary.num_classes == 19 and summary.num_aspp_branches == len(dilations)
    head = DLV2Head({"res5": ShapeSpec(channels=2048, stride=8)}, in_features=["res5"], num_classes=19,
                    dilations=dilations)
    head.load_state_dict(state)
    with torch.no_grad():
        assert rel_diff(head(features), dlv2_io[key]) <= REL_TOL


def test_plain_deeplabv2_whole_inference_matches_original(dlv2_converted, dlv2_io):
    model = load(dlv2_cfg(hrda=False), dlv2_converted["plain"]).eval()
    images = model.normalize(torch.from_numpy(dlv2_io["bb_image_rgb_uint8"]).permute(2, 0, 1)[None].float())
    with torch.no_grad():
        head_logits = model.sem_seg_head.head(model.backbone(images))
        logits = model.inference(images)
    assert rel_diff(head_logits, dlv2_io["plain_head_logits"]) <= REL_TOL
    assert logits.shape == (1, 19, 97, 129)
    assert_logits_match(logits, "plain", dlv2_io, agreement=0.999)


def test_hrda_deeplabv2_whole_inference_matches_original(dlv2_converted, dlv2_io):
    model = load(dlv2_cfg(hrda=True), dlv2_converted["hrda"]).eval()
    assert model.output_stride == 8 and type(model.sem_seg_head.scale_attention).__name__ == "DLV2Head"
    images = mof.normalize_uint8(dlv2_io["hrda_slide_image_rgb_uint8"][:, :256])
    with torch.no_grad():
        logits = model.inference(images)
        fused = model.forward_scales(images)["fused"]
    assert logits.shape == (1, 19, 256, 256)
    assert_logits_match(logits, "hrda_whole", dlv2_io, agreement=0.9999)
    stored = torch.nn.functional.interpolate(torch.from_numpy(dlv2_io["hrda_whole_fused"]), size=(256, 256),
                                             mode="bilinear", align_corners=False)
    assert rel_diff(fused, stored) <= REL_TOL


@pytest.mark.parametrize("reuse", [pytest.param(False, marks=pytest.mark.slow), True])
def test_hrda_deeplabv2_slide_inference_matches_original(dlv2_converted, dlv2_io, reuse):
    cfg = dlv2_cfg(hrda=True, **{"TEST.MODE": "slide", "TEST.SLIDE.CROP_SIZE": [256, 256],
                                 "TEST.SLIDE.STRIDE": [128, 128], "TEST.SLIDE.REUSE_HR_TILES": reuse})
    model = load(cfg, dlv2_converted["hrda"]).eval()
    with torch.no_grad():
        logits = model.inference(mof.normalize_uint8(dlv2_io["hrda_slide_image_rgb_uint8"]))
    assert logits.shape == (1, 19, 256, 384)
    assert_logits_match(logits, "hrda_slide", dlv2_io, agreement=0.9999)


@pytest.mark.parametrize("case", [0, 1])
def test_hrda_deeplabv2_training_losses_match_original(dlv2_converted, dlv2_io, dlv2_ref, case):
    c = dlv2_ref["hrda_train_cases"][case]
    weight = None if c["weight"] is None else mof.weight_from_code(dlv2_io["train_weight_code"],
                                                                   dlv2_ref["train_weight_ratio"])
    model = load(dlv2_cfg(hrda=True), dlv2_converted["hrda"]).train()
    losses = model.forward_train(mof.normalize_uint8(dlv2_io["train_image_rgb_uint8"]),
                                 torch.from_numpy(dlv2_io["train_label"]).long(), weight=weight,
                                 crop_box=tuple(dlv2_ref["train_crop_box"])).losses
    assert set(losses) == {"loss_sem_seg", "loss_sem_seg_hr"}
    for ours, theirs in (("loss_sem_seg", "decode.loss_seg"), ("loss_sem_seg_hr", "decode.hr.loss_seg")):
        assert losses[ours].item() == pytest.approx(c["terms"][theirs], rel=REL_TOL), ours
    assert sum(losses.values()).item() == pytest.approx(c["total"], rel=REL_TOL)
