"""MIC configuration: the four paper configs (docs/method.md §17.5, experiments.py id 80) and the converter's
``--config-out`` of a checkpoint whose stored original config is a MIC config (§17.5 field names)."""
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg

from hrda_d2 import add_hrda_config
from tests.helpers.paths import CONFIG_DIR


def load(name: str):
    cfg = add_hrda_config(get_cfg())
    cfg.merge_from_file(str(CONFIG_DIR / name))
    return cfg


def test_mic_is_off_by_default():
    cfg = add_hrda_config(get_cfg())
    assert cfg.UDA.MIC.ENABLED is False
    assert (cfg.UDA.MIC.MODE, cfg.UDA.MIC.MASK_RATIO, cfg.UDA.MIC.BLOCK_SIZE, cfg.UDA.MIC.LAMBDA) == (
        "separatetrgaug", 0.7, 64, 1.0)


@pytest.mark.parametrize("name,base,mode,margins", [
    ("gtaHR2csHR_mic_hrda.yaml", "gtaHR2csHR_hrda.yaml", "separatetrgaug", [30, 240, 30, 30]),
    ("synthiaHR2csHR_mic_hrda.yaml", "synthiaHR2csHR_hrda.yaml", "separatetrgaug", [30, 240, 30, 30]),
    ("csHR2acdcHR_mic_hrda.yaml", "csHR2acdcHR_hrda.yaml", "separate", []),
    ("csHR2dzurHR_mic_hrda.yaml", "csHR2dzurHR_hrda.yaml", "separate", []),
])
def test_mic_paper_configs_are_their_hrda_config_plus_mic(name, base, mode, margins):
    cfg, hrda = load(name), load(base)
    mic = cfg.UDA.MIC
    assert mic.ENABLED is True and mic.MODE == mode
    assert (mic.MASK_RATIO, mic.BLOCK_SIZE, mic.LAMBDA) == (0.7, 64, 1.0)
    assert cfg.SEED == 2  # the released median seed
    assert list(cfg.INPUT.TARGET.PSEUDO_MARGINS) == margins  # plcrop v2 only for a Cityscapes target
    # everything else is the HRDA experiment
    cfg.UDA.MIC.clear()
    hrda.UDA.MIC.clear()
    cfg.SEED = hrda.SEED
    cfg.OUTPUT_DIR = hrda.OUTPUT_DIR
    assert cfg == hrda


MIC_FIELDS = ("    mask_mode='separatetrgaug',\n    mask_alpha='same',\n    mask_pseudo_threshold='same',\n"
              "    mask_lambda=1,\n    mask_generator=dict(type='block', mask_ratio=0.7, mask_block_size=64),\n")


def mic_checkpoint(originals, folder: Path, fields: str) -> Path:  # noqa: F811
    """The HRDA fixture checkpoint with MIC fields in its stored config's ``uda = dict(...)``, as mmcv's
    pretty_text writes the merged configs/mic/*.py of the original."""
    data = torch.load(originals[1], map_location="cpu", weights_only=False)
    text = data["meta"]["config"]
    anchor = "uda = dict(\n    type='DACS',\n"
    assert text.count(anchor) == 1
    data["meta"] = dict(data["meta"], config=text.replace(anchor, anchor + fields))
    path = folder / "mic_original.pth"
    torch.save(data, path)
    return path


def test_config_out_of_a_mic_checkpoint_has_the_mic_keys(tool, originals, tmp_path):  # noqa: F811
    fields = MIC_FIELDS.replace("mask_lambda=1", "mask_lambda=0.5").replace("mask_ratio=0.7", "mask_ratio=0.6")
    source = mic_checkpoint(originals, tmp_path, fields.replace("mask_block_size=64", "mask_block_size=32"))
    out, yaml_path = tmp_path / "mic.pth", tmp_path / "mic.yaml"
    assert tool.main([str(source), str(out), "--config-out", str(yaml_path)]) == 0
    cfg = add_hrda_config(get_cfg())
    cfg.merge_from_file(str(yaml_path))
    mic = cfg.UDA.MIC
    assert (mic.ENABLED, mic.MODE, mic.MASK_RATIO, mic.BLOCK_SIZE, mic.LAMBDA) == (
        True, "separatetrgaug", 0.6, 32, 0.5)
    assert cfg.MODEL.WEIGHTS == str(out) and cfg.UDA.METHOD == "dacs"


def test_config_out_of_an_mmseg_config_without_mic(tool, originals, tmp_path):  # noqa: F811
    source = mic_checkpoint(originals, tmp_path, "    mask_mode=None,\n    mask_lambda=0,\n    mask_generator=None,\n")
    yaml_path = tmp_path / "plain.yaml"
    assert tool.main([str(source), str(tmp_path / "plain.pth"), "--config-out", str(yaml_path)]) == 0
    cfg = add_hrda_config(get_cfg())
    cfg.merge_from_file(str(yaml_path))
    assert cfg.UDA.MIC.ENABLED is False


@pytest.mark.parametrize("old,new,message", [
    ("mask_alpha='same'", "mask_alpha=0.99", "mask_alpha=0.99"),
    ("mask_pseudo_threshold='same'", "mask_pseudo_threshold=0.9", "mask_pseudo_threshold=0.9"),
    ("mask_mode='separatetrgaug'", "mask_mode='separatemix'", "'separatemix'"),
    ("type='block'", "type='random'", "type='block'"),
    ("mask_lambda=1,\n", "mask_lambda=1,\n    source_only=True,\n", "source_only=True"),
])
def test_config_out_refuses_mic_settings_this_project_cannot_run(tool, originals, tmp_path, capsys,  # noqa: F811
                                                                 old, new, message):
    source = mic_checkpoint(originals, tmp_path, MIC_FIELDS.replace(old, new))
    out, yaml_path = tmp_path / "out" / "mic.pth", tmp_path / "out" / "mic.yaml"
    assert tool.main([str(source), str(out), "--config-out", str(yaml_path)]) == 1
    error = capsys.readouterr().err
    assert message in error and "cannot express" in error, error
    assert not out.exists() and not yaml_path.exists()
