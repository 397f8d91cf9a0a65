"""Checkpoint converter: layouts of the original files -> Detectron2 layout (docs section 13, model contract),
the command-line tool (atomic output, errors), and --config-out (original mmseg config -> YAML)."""
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from torch import nn

from hrda_d2 import add_hrda_config
from hrda_d2.checkpoint import CheckpointConversionError, convert_checkpoint, detect_mit_variant
from hrda_d2.checkpoint.mmseg_config import MmsegConfigError, mmseg_config_to_cfg_values, parse_mmseg_config_text
from hrda_d2.modeling.backbone import MIT_VARIANTS, build_mit_backbone
from tests.helpers.paths import REFERENCE_DIR, REPO_ROOT
from tests.fixtures.hrda_reference import make_original_files as mof

REPO = REPO_ROOT
TOOL = REPO / "tools" / "convert_mmseg_checkpoint.py"
REF = REFERENCE_DIR

# the HRDA meta-architecture's sem_seg_head is the HRDAHead, as the original's decode_head
SEGMENTOR_PREFIXES = {"backbone.": "backbone.", "decode_head.head.": "sem_seg_head.head.",
                      "decode_head.scale_attention.": "sem_seg_head.scale_attention."}


@pytest.fixture(scope="module")
def spec():
    return mof.load_spec()


def expected_detectron2_shapes(spec) -> "OrderedDict[str, tuple]":
    """Key -> shape of the converted HRDA checkpoint, from the original layout's spec (independent of the code)."""
    out = OrderedDict()
    for key, shape, _, _ in spec["seg"]:
        prefix = next(p for p in SEGMENTOR_PREFIXES if key.startswith(p))
        out[SEGMENTOR_PREFIXES[prefix] + key[len(prefix):]] = tuple(shape)
    return out


def backbone_holder(variant: str = "mit_b0") -> nn.Module:
    cfg = add_hrda_config(get_cfg())
    cfg.MODEL.MIT.VARIANT = variant
    holder = nn.Module()
    holder.backbone = build_mit_backbone(cfg)
    return holder


def load_report(model: nn.Module, path: Path):
    """What Detectron2's checkpointer reports when loading ``path`` into ``model`` (missing/unexpected/shapes)."""
    checkpointer = DetectionCheckpointer(model)
    reports = []
    load_model_weights = checkpointer._load_model

    def recording(checkpoint):
        reports.append(load_model_weights(checkpoint))
        return reports[-1]

    checkpointer._load_model = recording
    checkpointer.load(str(path))  # the path MODEL.WEIGHTS takes
    assert len(reports) == 1
    return reports[0]


def files_in(folder: Path) -> set:
    return {p.name for p in folder.iterdir()}


# ------------------------------------------------------------------------------------------------------------
# official SegFormer ImageNet file
# ------------------------------------------------------------------------------------------------------------
def test_imagenet_file_cli_output_loads_into_the_backbone(originals, spec, tmp_path):
    out = tmp_path / "mit_b0_d2.pth"
    run = subprocess.run([sys.executable, str(TOOL), str(originals[0]), str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "mit_b0" in run.stdout and files_in(tmp_path) == {"mit_b0_d2.pth"}
    saved = torch.load(out, map_location="cpu", weights_only=True)
    assert set(saved) >= {"model", "__author__"}
    official = OrderedDict((k, v) for k, v in mof.mit_state_dict(spec).items())
    assert set(saved["model"]) == {"backbone." + k for k in official if not k.startswith("head.")}
    assert all(torch.equal(saved["model"]["backbone." + k], v) for k, v in official.items() if "head." not in k)

    holder = backbone_holder("mit_b0")
    report = load_report(holder, out)
    assert not report.missing_keys and not report.unexpected_keys and not report.incorrect_shapes
    assert torch.equal(holder.backbone.block2[1].attn.kv.weight, official["block2.1.attn.kv.weight"])


@pytest.mark.parametrize("variant", sorted(MIT_VARIANTS))
def test_variant_detected_from_shapes(variant):
    with torch.device("meta"):
        sd = backbone_holder(variant).backbone.state_dict()
    assert detect_mit_variant(sd) == variant
    sd["head.weight"] = torch.empty(1000, MIT_VARIANTS[variant].embed_dims[-1], device="meta")
    assert convert_checkpoint(dict(sd)).backbone == variant


def test_inconsistent_mit_weights_are_named(originals):
    official = torch.load(originals[0], map_location="cpu", weights_only=True)
    missing = OrderedDict((k, v) for k, v in official.items() if k != "block3.1.attn.sr.weight")
    with pytest.raises(CheckpointConversionError, match=r"missing \[block3\.1\.attn\.sr\.weight\]"):
        convert_checkpoint(missing)
    no_stage = OrderedDict((k, v) for k, v in official.items() if not k.startswith("block4."))
    with pytest.raises(CheckpointConversionError, match="stage 4"):
        convert_checkpoint(no_stage)
    wrong = OrderedDict(official)
    wrong["block1.0.mlp.fc2.weight"] = torch.zeros(32, 64)
    with pytest.raises(CheckpointConversionError, match=r"block1\.0\.mlp\.fc2\.weight \(32, 64\) \(expected \(32, 128\)\)"):
        convert_checkpoint(wrong)


# ------------------------------------------------------------------------------------------------------------
# HRDA / DAFormer checkpoints
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("teacher", [False, True])
def test_hrda_training_checkpoint_student_and_teacher(tool, originals, original_checkpoint, spec, tmp_path, teacher):
    out = tmp_path / "converted.pth"
    assert tool.main([str(originals[1]), str(out)] + (["--teacher"] if teacher else [])) == 0
    sd = torch.load(out, map_location="cpu", weights_only=True)["model"]
    expected = expected_detectron2_shapes(spec)
    assert set(sd) == set(expected)  # exactly backbone.* + sem_seg_head.head.* + sem_seg_head.scale_attention.*
    assert {k: tuple(v.shape) for k, v in sd.items()} == dict(expected)
    source = original_checkpoint["state_dict"]
    prefix = "ema_model." if teacher else "model."
    other = "model." if teacher else "ema_model."
    for key in expected:
        original_key = key.replace("sem_seg_head.", "decode_head.")
        assert torch.equal(sd[key], source[prefix + original_key]), key
    assert not torch.equal(sd["backbone.block1.0.attn.q.weight"], source[other + "backbone.block1.0.attn.q.weight"])
    bn = "sem_seg_head.head.fuse_layer.bottleneck.bn."
    assert sd[bn + "num_batches_tracked"].dtype == torch.int64 and bn + "running_var" in sd


def test_bare_segmentor_and_daformer_layouts(original_checkpoint):
    source = original_checkpoint["state_dict"]
    student = OrderedDict((k[len("model."):], v) for k, v in source.items() if k.startswith("model."))
    reference = convert_checkpoint(original_checkpoint)

    bare = convert_checkpoint(student)  # HRDAEncoderDecoder.state_dict()
    assert bare.layout == "HRDAEncoderDecoder state dict" and list(bare.state_dict) == list(reference.state_dict)
    wrapped = convert_checkpoint({"state_dict": student, "meta": {"iter": 1}})  # mmseg's own save
    assert list(wrapped.state_dict) == list(reference.state_dict)
    with pytest.raises(CheckpointConversionError, match="teacher"):
        convert_checkpoint(student, teacher=True)

    # a DAFormer EncoderDecoder: decode_head.X is the DAFormer head itself (sem_seg_head.head.X, SingleScaleHead)
    daformer = OrderedDict()
    for key, value in source.items():
        if key.startswith(("model.backbone.", "ema_model.backbone.")):
            daformer[key] = value
        elif key.startswith(("model.decode_head.head.", "ema_model.decode_head.head.")):
            daformer[key.replace("decode_head.head.", "decode_head.")] = value
    result = convert_checkpoint({"state_dict": daformer, "meta": {}})
    assert result.layout == "DAFormer DACS training checkpoint" and result.scale_attention is None
    assert result.sem_seg_head.num_classes == 19 and result.sem_seg_head.fusion == "aspp"
    assert {k.split(".")[0] for k in result.state_dict} == {"backbone", "sem_seg_head"}
    assert torch.equal(result.state_dict["sem_seg_head.head.conv_seg.weight"],
                       source["model.decode_head.head.conv_seg.weight"])


def test_hrda_checkpoint_summary(original_checkpoint):
    result = convert_checkpoint(original_checkpoint, teacher=True)
    assert (result.layout, result.backbone, result.source_prefix) == ("HRDA DACS training checkpoint", "mit_b0",
                                                                        "ema_model.")
    assert (result.sem_seg_head.fusion, result.sem_seg_head.num_aspp_branches) == ("aspp", 4)
    assert (result.scale_attention.fusion, result.scale_attention.num_classes) == ("conv", 19)
    assert len(result.dropped_keys) == 500  # model.* and imnet_model.*


# ------------------------------------------------------------------------------------------------------------
# wrong files: clear error, non-zero exit, nothing written
# ------------------------------------------------------------------------------------------------------------
def test_wrong_file_cli_exit_status_and_no_output(tmp_path):
    bad = tmp_path / "random.pth"
    torch.save({"foo": torch.zeros(3), "bar": 1}, bad)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    run = subprocess.run([sys.executable, str(TOOL), str(bad), str(out_dir / "x.pth")], capture_output=True, text=True)
    assert run.returncode != 0
    assert "random.pth" in run.stderr and "Expected one of" in run.stderr and "'foo'" in run.stderr
    assert files_in(out_dir) == set()


@pytest.mark.parametrize("case", ["random_dict", "truncated", "detectron2_coco", "missing_file", "not_a_dict",
                                  "teacher_of_imagenet_file", "config_out_without_meta"])
def test_wrong_inputs_give_clear_errors_and_no_files(tool, originals, tmp_path, capsys, case):
    src = tmp_path / "in.pth"
    args, expected = [], None
    if case == "random_dict":
        torch.save({"a": torch.ones(2)}, src)
        expected = "Found: a dict with top-level keys"
    elif case == "truncated":
        src.write_bytes(originals[0].read_bytes()[:50_000])
        expected = "cannot be read as a torch checkpoint"
    elif case == "detectron2_coco":
        torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(64, 3, 7, 7),
                              "roi_heads.box_predictor.cls_score.weight": torch.zeros(81, 1024)},
                    "__author__": "Detectron2 Model Zoo"}, src)
        expected = "backbone.bottom_up.stem.conv1.weight"
    elif case == "missing_file":
        expected = "no such file"
    elif case == "not_a_dict":
        torch.save([torch.ones(1)], src)
        expected = "Found: a list"
    elif case == "teacher_of_imagenet_file":
        src = originals[0]
        args, expected = ["--teacher"], "teacher weights were requested"
    elif case == "config_out_without_meta":
        src = originals[0]
        args, expected = ["--config-out", str(tmp_path / "out" / "c.yaml")], "meta['config']"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert tool.main([str(src), str(out_dir / "converted.pth")] + args) == 1
    err = capsys.readouterr().err
    assert "error:" in err and expected in err, err
    assert files_in(out_dir) == set()


# ------------------------------------------------------------------------------------------------------------
# --config-out
# ------------------------------------------------------------------------------------------------------------
def test_config_out_yaml_has_the_fixture_settings(tool, originals, tmp_path):
    out, yaml_path = tmp_path / "student.pth", tmp_path / "student.yaml"
    assert tool.main([str(originals[1]), str(out), "--config-out", str(yaml_path)]) == 0
    cfg = add_hrda_config(get_cfg())
    cfg.merge_from_file(str(yaml_path))  # every key exists, every type fits
    assert "_BASE_" not in yaml_path.read_text()
    assert cfg.MODEL.WEIGHTS == str(out)
    assert cfg.MODEL.META_ARCHITECTURE == "HRDA" and cfg.MODEL.BACKBONE.NAME == "build_mit_backbone"
    assert cfg.MODEL.MIT.VARIANT == "mit_b0" and cfg.MODEL.MIT.DROP_PATH_RATE == 0.0
    hrda = cfg.MODEL.HRDA
    assert hrda.SCALES == [1.0, 0.5] and hrda.HR_CROP_SIZE == [128, 128] and hrda.CROP_COORD_DIVISIBLE == 8
    assert hrda.FEATURE_SCALE == 0.5 and hrda.HR_SLIDE_INFERENCE is True and hrda.HR_LOSS_WEIGHT == 0.1
    assert hrda.LR_LOSS_WEIGHT == 0.0 and hrda.ATTENTION_CLASSWISE is True and hrda.FIXED_ATTENTION is None
    head = cfg.MODEL.SEM_SEG_HEAD
    assert (head.NUM_CLASSES, head.DROPOUT, head.EMBED_DIM, head.FUSION) == (19, 0.0, 256, "aspp")
    assert head.ASPP_DILATIONS == [1, 6, 12, 18] and head.NORM == "BN"
    assert cfg.TEST.MODE == "slide" and cfg.TEST.SLIDE.BATCHED is True
    assert cfg.TEST.SLIDE.CROP_SIZE == [256, 256] and cfg.TEST.SLIDE.STRIDE == [128, 128]
    assert cfg.UDA.METHOD == "dacs" and cfg.UDA.ALPHA == 0.999 and cfg.UDA.PSEUDO_THRESHOLD == 0.968
    assert cfg.UDA.FD.CLASSES == [6, 7, 11, 12, 13, 14, 15, 16, 17, 18] and cfg.UDA.AUG.COLOR_JITTER_SKIP_THRESHOLD == 0.2
    assert cfg.SOLVER.BASE_LR == 6e-5 and cfg.SOLVER.WARMUP_ITERS == 1500 and cfg.SOLVER.WARMUP_FACTOR == 1e-6
    assert cfg.SOLVER.HEAD_LR_MULTIPLIER == 10.0 and cfg.SOLVER.BACKBONE_NORM_DECAY_MULTIPLIER == 0.0
    assert cfg.SOLVER.MAX_ITER == 40000 and cfg.SOLVER.IMS_PER_BATCH == 2 and cfg.SEED == 1
    assert cfg.DATASETS.RCS.ENABLED is True and cfg.DATASETS.RCS.MIN_CROP_RATIO == 2.0
    assert cfg.INPUT.SOURCE.SCALE == [2560, 1440] and cfg.INPUT.TARGET.PSEUDO_MARGINS == [30, 240, 30, 30]

    # the converted weights load into the HRDA model built from that YAML with nothing missing or unexpected
    hrda_module = pytest.importorskip("hrda_d2.modeling.meta_arch.hrda",
                                      reason="the HRDA meta-architecture is not available")
    from detectron2.modeling import build_model
    assert hasattr(hrda_module, "HRDA")
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    report = load_report(model, out)
    assert not report.missing_keys and not report.unexpected_keys and not report.incorrect_shapes


def test_config_text_is_parsed_without_executing_it(tmp_path):
    marker = tmp_path / "executed"
    text = (f"import os\nx = open({str(marker)!r}, 'w')\n"
            f"y = __import__('os').system('touch {marker}')\nmodel = dict(type='EncoderDecoder', scales=[1, -0.5])\n")
    parsed = parse_mmseg_config_text(text)
    assert parsed == {"model": {"type": "EncoderDecoder", "scales": [1, -0.5]}} and not marker.exists()
    with pytest.raises(MmsegConfigError, match="line 1"):
        parse_mmseg_config_text("model = dict(\n")


def test_config_settings_without_a_key_here_are_rejected(original_checkpoint):
    mm = parse_mmseg_config_text(original_checkpoint["meta"]["config"])
    mm["model"]["backbone"]["type"] = "mit_b7"
    with pytest.raises(MmsegConfigError, match="mit_b7"):
        mmseg_config_to_cfg_values(mm)
    mm = parse_mmseg_config_text(original_checkpoint["meta"]["config"])
    mm["model"]["decode_head"]["channels"] = 512
    with pytest.raises(MmsegConfigError, match="channels=512"):
        mmseg_config_to_cfg_values(mm)
    mm = parse_mmseg_config_text(original_checkpoint["meta"]["config"])
    del mm["uda"]
    values, _ = mmseg_config_to_cfg_values(mm)
    assert values["UDA.METHOD"] == "source_only" and "UDA.ENABLED" not in values


def test_legacy_type_names_are_renamed_like_the_original_test_script(original_checkpoint):
    """Early checkpoints store UniHead / MultiResEncoderDecoder / MultiResAttentionWrapper (reference 12.2)."""
    current, _ = mmseg_config_to_cfg_values(parse_mmseg_config_text(original_checkpoint["meta"]["config"]))
    mm = parse_mmseg_config_text(original_checkpoint["meta"]["config"])
    model = mm["model"] if "model" in mm else mm["uda"]["model"]
    model["type"] = "MultiResEncoderDecoder"
    model["decode_head"]["type"] = "MultiResAttentionWrapper"
    model["decode_head"]["single_scale_head"] = "UniHead"
    legacy, _ = mmseg_config_to_cfg_values(mm)
    assert legacy == current
