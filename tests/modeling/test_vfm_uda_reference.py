"""VFMViT / DINOv2ViT / VFMLightweightHead and the VFM-UDA checkpoint conversion against outputs of the ORIGINAL
VFM-UDA network and the official DINOv2 model (tests/fixtures/vfm_uda_reference, docs/method.md §19).

Generated weights (fixture make_weights.py): ViT-S/14 with 12 blocks, 7 classes, square images of 64 and 96 px
(ViT input 70 / 98 px); the official model alone on a 56 x 84 image with 4 registers and masks.
Tolerances reached on CPU float32: ViT tokens and, on the original's normalised images, the logits are
bit-identical (max |diff| 0); logits through the converted checkpoint and ``model([{"image": uint8}])`` differ by
<= 3.2e-6 (asserted < 1e-5), from the pixel normalisation order: ``(x - 255 m) / (255 s)`` here,
``(x / 255 - m) / s`` in the original.
"""
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from hrda_d2.checkpoint import convert_checkpoint, load_checkpoint_file
from hrda_d2.checkpoint.vfm_conversion import VFMConvertedCheckpoint, vfm_usage
from hrda_d2.modeling.backbone.dinov2_vit import DINOv2ViT
from tests.fixtures.vfm_uda_reference import make_weights
from tests.helpers.paths import REPO_ROOT
from tests.helpers.vfm_reference import original_normalize, vfm_model_cfg

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "vfm_uda_reference" / "vfm_uda_outputs.npz"
NUM_CLASSES = 7
LOGIT_TOL = 1e-5


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


def vfm_cfg():
    """VFM-UDA's model (VFMViT ViT-S/14 + VFMLightweightHead, one scale) with the fixture's 7 classes."""
    cfg = vfm_model_cfg(NUM_CLASSES)
    cfg.TEST.MODE = "whole"
    return cfg


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The generated Lightning checkpoint written to a file and converted: {"student": ..., "teacher": ...}."""
    path = tmp_path_factory.mktemp("vfm_uda") / "vfm_uda.ckpt"
    ckpt = make_weights.lightning_checkpoint(NUM_CLASSES)
    ckpt["state_dict"]["network_feature_extractor.cls_token"] = torch.zeros(1, 1, 384)  # an FD run's extra group
    torch.save(ckpt, path)
    obj = load_checkpoint_file(path)
    return {"student": convert_checkpoint(obj, source=str(path)),
            "teacher": convert_checkpoint(obj, teacher=True, source=str(path))}


@pytest.fixture(scope="module")
def model(converted):
    with torch.device("cpu"):
        net = build_model(vfm_cfg())
    net.load_state_dict(converted["student"].state_dict, strict=True)
    return net.eval()


def test_conversion_result(converted):
    student, teacher = converted["student"], converted["teacher"]
    assert isinstance(student, VFMConvertedCheckpoint)
    assert student.backbone == "vit_small_patch14_dinov2" and student.num_classes == NUM_CLASSES
    assert student.source_prefix == "network." and teacher.source_prefix == "network_ema."
    assert "network_feature_extractor.cls_token" in student.dropped_keys
    assert student.state_dict["backbone.vit.pos_embed"].shape == (1, 1 + 37 * 37, 384)  # stored unchanged
    assert "backbone.vit.mask_token" in student.state_dict
    assert "MODEL.BACKBONE.NAME VFMViT" in vfm_usage(student)


@pytest.mark.parametrize("size", [64, 96])
def test_backbone_tokens_equal_the_original(ref, model, size):
    x = original_normalize(ref[f"image_{size}"])
    assert model.backbone.input_size((size, size)) == (int(ref[f"vit_in_size_{size}"]),) * 2
    with torch.no_grad():
        tokens = model.backbone(x)["vit_tokens"]
    assert torch.equal(tokens, torch.from_numpy(ref[f"features_{size}"]))


def test_masked_tokens_equal_the_original(ref, model):
    x, mask = original_normalize(ref["image_96"]), torch.from_numpy(ref["token_mask"])
    assert tuple(model.backbone.token_grid((96, 96))) == tuple(mask.shape[1:])
    with torch.no_grad():
        tokens = model.backbone(x, token_mask=mask)["vit_tokens"]
    assert torch.equal(tokens, torch.from_numpy(ref["masked_features"]))


@pytest.mark.parametrize("size", [64, 96])
def test_converted_checkpoint_logits_equal_the_original(ref, model, size):
    image = torch.from_numpy(ref[f"image_{size}"])
    with torch.no_grad():
        out = model([{"image": im, "height": size, "width": size} for im in image])
    logits = torch.stack([o["sem_seg"] for o in out])
    diff = (logits - torch.from_numpy(ref[f"logits_{size}"])).abs().max().item()
    assert diff < LOGIT_TOL, diff


@pytest.mark.parametrize("size", [64, 96])
def test_inference_on_the_originals_normalised_images_is_bit_identical(ref, model, size):
    with torch.no_grad():
        logits = model.inference(original_normalize(ref[f"image_{size}"]))
    assert torch.equal(logits, torch.from_numpy(ref[f"logits_{size}"]))


def test_teacher_logits_equal_the_original(ref, converted):
    with torch.device("cpu"):
        net = build_model(vfm_cfg())
    net.load_state_dict(converted["teacher"].state_dict, strict=True)
    with torch.no_grad():
        out = net.eval()([{"image": im} for im in torch.from_numpy(ref["image_64"])])
    diff = (torch.stack([o["sem_seg"] for o in out]) - torch.from_numpy(ref["teacher_logits"])).abs().max().item()
    assert diff < LOGIT_TOL, diff


def test_masked_training_forward_equals_the_original(ref, model):
    """``model(images=..., token_mask=...)`` in train mode = the original's ``network(img, mask_ratio)`` with
    the mask it drew."""
    x, mask = original_normalize(ref["image_96"]), torch.from_numpy(ref["token_mask"])
    model.train()
    try:
        with torch.no_grad():
            out = model(images=x, token_mask=mask)
    finally:
        model.eval()
    diff = (out.logits - torch.from_numpy(ref["masked_logits"])).abs().max().item()
    assert diff < LOGIT_TOL, diff
    assert torch.equal(out.features["vit_tokens"], torch.from_numpy(ref["masked_features"]))


def test_dinov2_vit_with_registers_equals_the_official_model(ref, tmp_path):
    """The official ``dinov2_vits14_reg`` forward_features (registers, antialiased resampling without offset,
    non-square 56 x 84 input, masks) = DINOv2ViT with the official file as MODEL.TIMM.WEIGHTS."""
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(make_weights.official_dinov2_state_dict(0, registers=4), path)
    vit = DINOv2ViT("vit_small_patch14_reg4_dinov2", str(path)).eval()
    assert vit.interpolate_offset == 0.0 and vit.interpolate_antialias and vit.num_prefix_tokens == 5
    with torch.no_grad():
        tokens = vit.forward_tokens(original_normalize(ref["reg_image"]), torch.from_numpy(ref["reg_masks"]))
    assert torch.equal(tokens[:, 0], torch.from_numpy(ref["reg_clstoken"]))
    assert torch.equal(tokens[:, 1:5], torch.from_numpy(ref["reg_regtokens"]))
    assert torch.equal(tokens[:, 5:], torch.from_numpy(ref["reg_patchtokens"]))
