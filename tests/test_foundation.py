"""The package imports, registers its components and exposes every config key."""
import subprocess
import sys

import pytest
from detectron2.config import get_cfg

import hrda_d2
from hrda_d2 import add_hrda_config


def test_add_hrda_config_defaults_are_the_paper_setting():
    cfg = add_hrda_config(get_cfg())
    assert cfg.MODEL.META_ARCHITECTURE == "HRDA"
    assert cfg.MODEL.BACKBONE.NAME == "build_mit_backbone"
    assert cfg.MODEL.MIT.VARIANT == "mit_b5"
    assert cfg.MODEL.SEM_SEG_HEAD.NAME == "DAFormerHead"
    assert cfg.MODEL.HRDA.SCALES == [1.0, 0.5]
    assert cfg.MODEL.HRDA.HR_CROP_SIZE == [512, 512]
    assert cfg.UDA.ALPHA == 0.999 and cfg.UDA.PSEUDO_THRESHOLD == 0.968
    assert cfg.SOLVER.BASE_LR == 6e-5 and cfg.SOLVER.MAX_ITER == 40000


def test_unknown_config_key_is_rejected_with_its_name():
    cfg = add_hrda_config(get_cfg())
    # yacs: AssertionError for command-line overrides, KeyError for YAML files; both name the key
    with pytest.raises((KeyError, AssertionError), match="MODEL.HRDA.NOT_A_KEY"):
        cfg.merge_from_list(["MODEL.HRDA.NOT_A_KEY", "1"])


def test_import_in_fresh_interpreter_prints_versions(repo_root):
    out = subprocess.run(
        [sys.executable, "-c", "import hrda_d2, detectron2; print(detectron2.__version__, hrda_d2.__version__)"],
        cwd=repo_root, capture_output=True, text=True, check=True,
    ).stdout
    assert hrda_d2.__version__ in out


def test_tools_folder_is_not_an_importable_package(repo_root):
    # the detectron2 wheel ships a top-level `tools` package; ours are scripts run by path
    assert not (repo_root / "tools" / "__init__.py").exists()


def test_import_registers_every_component():
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY

    assert "build_mit_backbone" in BACKBONE_REGISTRY
    assert "HRDA" in META_ARCH_REGISTRY
    assert "DAFormerHead" in SEM_SEG_HEADS_REGISTRY and "HRDAHead" in SEM_SEG_HEADS_REGISTRY
    registered = set(DatasetCatalog.list())
    for split in ["gta_train", "synthia_train", "acdc_train", "acdc_val", "darkzurich_train", "darkzurich_val",
                  "cityscapes_fine_sem_seg_train", "cityscapes_fine_sem_seg_val"]:
        assert split in registered, split


def test_model_builds_from_the_config_registry():
    from detectron2.modeling import build_model

    from tests.helpers.tiny_configs import tiny_hrda_cfg

    model = build_model(tiny_hrda_cfg())
    assert type(model).__name__ == "HRDA"
    assert type(model.backbone).__name__ == "MixVisionTransformer"
    assert type(model.sem_seg_head).__name__ == "HRDAHead"  # MODEL.HRDA.HEAD_NAME, from SEM_SEG_HEADS_REGISTRY
    assert type(model.sem_seg_head.head).__name__ == "DAFormerHead"  # MODEL.SEM_SEG_HEAD.NAME
    assert type(model.sem_seg_head.scale_attention).__name__ == "DAFormerHead"
