"""Config checks across keys (hrda_d2/config/validation.py): each refuses with the key, the value and the fix."""
import subprocess
import sys

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from hrda_d2 import add_hrda_config, load_config
from hrda_d2.config import ConfigError, config_problems, validate_config
from tests.helpers.paths import REPO_ROOT

DEMO_CONFIG = str(REPO_ROOT / "configs" / "demo_hrda.yaml")


def cfg_with(*opts):
    cfg = add_hrda_config(get_cfg())
    cfg.merge_from_list(list(opts))
    return cfg


def test_the_defaults_and_every_shipped_config_pass():
    assert config_problems(cfg_with()) == []
    for path in sorted((REPO_ROOT / "configs").glob("*.yaml")):
        if path.name.startswith("Base"):
            continue
        load_config(str(path))  # raises ConfigError on a refused setting


@pytest.mark.parametrize("opts,pattern", [
    # class ids
    (["UDA.FD.CLASSES", "[6, 25]"], r"UDA\.FD\.CLASSES=\[6, 25\]: class ids \[25\] are not classes of "
                                    r"MODEL\.SEM_SEG_HEAD\.NUM_CLASSES=19 \(ids 0\.\.18\)"),
    (["UDA.FD.CLASSES", "[-1, 3]"], r"class ids \[-1\]"),
    (["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "25"], r"UDA\.FD\.CLASSES=.*is the Cityscapes default.*NUM_CLASSES=25.*"
                                               r"or UDA\.FD\.LAMBDA 0"),
    (["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "2"], r"UDA\.FD\.CLASSES=.*class ids \[6, 7, 11.*are not classes"),
    (["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "2", "UDA.FD.LAMBDA", "0.0", "TEST.REPORT_MIOU16", "True"],
     r"TEST\.REPORT_MIOU16=True: mIoU16 is Synthia's 16 of the 19 Cityscapes classes, the model has 2"),
    (["MODEL.SEM_SEG_HEAD.IGNORE_VALUE", "3"], r"IGNORE_VALUE=3: is a class id"),
    # geometry
    (["MODEL.HRDA.HR_CROP_SIZE", "[512, 1280]"], r"HR_CROP_SIZE=\[512, 1280\]: the detail crop \[512, 1280\] is "
                                                 r"larger than the training crop INPUT\.SOURCE\.CROP_SIZE"),
    (["TEST.SLIDE.STRIDE", "[1024, 1536]"], r"TEST\.SLIDE\.STRIDE=\[1024, 1536\]: is larger than the window"),
    (["TEST.SLIDE.STRIDE", "[0, 512]"], r"TEST\.SLIDE\.STRIDE=\[0, 512\]: must be \[height, width\] with positive"),
    (["MODEL.HRDA.SCALES", "[1.0, 0.5, 0.25]"], r"MODEL\.HRDA\.SCALES=\[1\.0, 0\.5, 0\.25\]: must be \[1\.0\]"),
    (["MODEL.HRDA.SCALES", "[2.0, 1.0]"], r"MODEL\.HRDA\.SCALES=.*must be \[1\.0\] \(one scale\)"),
    (["INPUT.SOURCE.CROP_SIZE", "[100, 100]", "INPUT.TARGET.CROP_SIZE", "[100, 100]", "MODEL.HRDA.HR_CROP_SIZE",
      "[64, 64]", "MODEL.HRDA.CROP_COORD_DIVISIBLE", "4", "MODEL.HRDA.SCALES", "[1.0, 0.445]"],
     r"SCALES=\[1\.0, 0\.445\]: the context branch of the INPUT\.SOURCE\.CROP_SIZE side 100 \(44 px, 11 logits at "
     r"stride 4\) upsampled by 1/0\.445 covers 24 detail-logit rows, the farthest detail crop ends at row 25"),
    # ranges
    (["UDA.PSEUDO_THRESHOLD", "1.5"], r"UDA\.PSEUDO_THRESHOLD=1\.5: must be in \[0, 1\]"),
    (["UDA.ALPHA", "-0.1"], r"UDA\.ALPHA=-0\.1: must be in \[0, 1\]"),
    (["UDA.MIC.MASK_RATIO", "1.0"], r"UDA\.MIC\.MASK_RATIO=1\.0: must be in \[0, 1\)"),
    (["UDA.MIC.BLOCK_SIZE", "0"], r"UDA\.MIC\.BLOCK_SIZE=0: must be in \(0, inf\)"),
    (["INPUT.SOURCE.CAT_MAX_RATIO", "0.0"], r"CAT_MAX_RATIO=0\.0: must be in \(0, 1\]; use 1\.0 to disable"),
    (["DATASETS.RCS.CLASS_TEMP", "0.0"], r"CLASS_TEMP=0\.0: must be in \(0, inf\)"),
    (["MODEL.HRDA.FIXED_ATTENTION", "1.5"], r"FIXED_ATTENTION=1\.5: must be in \[0, 1\]; use None"),
    (["INPUT.TARGET.PSEUDO_MARGINS", "[30, 240]"], r"PSEUDO_MARGINS=\[30, 240\]: must be \[\] or \[top, bottom"),
    (["SOLVER.METRICS_PERIOD", "0"], r"SOLVER\.METRICS_PERIOD=0: must be in \[1, inf\)"),
    # combinations
    (["MODEL.HRDA.HR_LOSS_WEIGHT", "0.7", "MODEL.HRDA.LR_LOSS_WEIGHT", "0.5"], r"= 1\.2 > 1"),
    (["UDA.METHOD", "source_only", "UDA.MIC.ENABLED", "True"], r"UDA\.MIC\.ENABLED=True: needs a method with target "
                                                          r"pseudo-labels.*'source_only'.*set UDA\.METHOD"),
    (["UDA.METHOD", "target_only", "UDA.MIC.ENABLED", "True"], r"UDA\.MIC\.ENABLED=True: needs a method with target "
                                                               r"pseudo-labels.*'target_only'"),
    (["UDA.MIX", "cut"], r"UDA\.MIX='cut': is not a mixing"),
    (["UDA.PSEUDO_WEIGHT_IGNORE_TOP", "15"], r"UDA\.PSEUDO_WEIGHT_IGNORE_TOP=15: \(and _BOTTOM=0\) ignores pseudo-label "
                                            r"rows while INPUT\.TARGET\.PSEUDO_MARGINS=\[30, 240, 30, 30\]"),
    (["SOLVER.PREEMPTION_SIGNALS", "['SIGTERM', 'SIGTERMX', 'SIGKILL']"],
     r"SOLVER\.PREEMPTION_SIGNALS=\['SIGTERM', 'SIGTERMX', 'SIGKILL'\]: \['SIGTERMX', 'SIGKILL'\] are not signals that "
     r"can be caught; e\.g\."),
    (["DATASETS.SOURCE", "('gta_train', 'synthia_train')"], r"DATASETS\.RCS\.ENABLED=True: rare class sampling "
                                                             r"draws from one source split, DATASETS\.SOURCE has 2"),
    (["SOLVER.OPTIMIZER", "AdamW"], r"SOLVER\.OPTIMIZER='AdamW': is not an optimizer of hrda_d2; use one of ADAMW, SGD"),
    (["UDA.METHOD", "minent", "INPUT.TARGET.CROP_SIZE", "[1024, 512]"],
     r"INPUT\.TARGET\.CROP_SIZE=\[1024, 512\]: \[1024, 512\] differs from INPUT\.SOURCE\.CROP_SIZE \[1024, 1024\]: "
     r"with HRDA, UDA\.METHOD 'minent' adapts the target prediction at half the SOURCE crop's size"),
    # Detectron2 keys hrda_d2 does not read
    (["INPUT.CROP.SIZE", "[256, 256]"], r"INPUT\.CROP\.SIZE=\[256, 256\]: is a Detectron2 key that hrda_d2 does not "
                                        r"read.*use INPUT\.SOURCE\.CROP_SIZE / INPUT\.TARGET\.CROP_SIZE"),
    (["DATASETS.TRAIN", "('mycity_train',)"], r"DATASETS\.TRAIN=\('mycity_train',\).*use DATASETS\.SOURCE"),
    (["INPUT.MIN_SIZE_TRAIN", "(512,)"], r"INPUT\.MIN_SIZE_TRAIN=.*use INPUT\.SOURCE\.SCALE"),
    (["SOLVER.STEPS", "(1000,)"], r"SOLVER\.STEPS=.*use SOLVER\.POLY_LR_POWER"),
    (["TEST.PRECISE_BN.ENABLED", "True"], r"TEST\.PRECISE_BN\.ENABLED=True"),
])
def test_each_check_refuses_with_its_message(opts, pattern):
    with pytest.raises(ConfigError, match=pattern):
        validate_config(cfg_with(*opts))


def test_every_problem_is_listed_at_once():
    problems = config_problems(cfg_with("UDA.FD.CLASSES", "[6, 25]", "UDA.PSEUDO_THRESHOLD", "2.0",
                                        "INPUT.RANDOM_FLIP", "vertical"))
    assert len(problems) == 3 and [p.split("=")[0] for p in problems] == [
        "UDA.FD.CLASSES", "UDA.PSEUDO_THRESHOLD", "INPUT.RANDOM_FLIP"]


def test_a_custom_label_space_passes_with_its_own_fd_classes_or_without_fd():
    assert config_problems(cfg_with("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "2", "UDA.FD.CLASSES", "[1]")) == []
    assert config_problems(cfg_with("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "2", "UDA.FD.LAMBDA", "0.0",
                                    "UDA.FD.CLASSES", "[]")) == []
    assert config_problems(cfg_with("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "25", "UDA.METHOD", "source_only")) == []


def test_the_alignment_check_predicts_what_the_model_does():
    """The refused context scale really cannot be fused: the model fails on it; the accepted ones run."""
    def train_step(scale, crop, box):
        cfg = cfg_with("MODEL.MIT.VARIANT", "mit_b0", "MODEL.SEM_SEG_HEAD.EMBED_DIM", "16",
                       "MODEL.HRDA.ATTENTION_EMBED_DIM", "16", "MODEL.HRDA.SCALES", f"[1.0, {scale}]",
                       "MODEL.HRDA.HR_CROP_SIZE", "[64, 64]", "MODEL.HRDA.FEATURE_SCALE", str(scale),
                       "MODEL.HRDA.CROP_COORD_DIVISIBLE", "4", "INPUT.SOURCE.CROP_SIZE", f"[{crop}, {crop}]",
                       "INPUT.TARGET.CROP_SIZE", f"[{crop}, {crop}]", "MODEL.DEVICE", "cpu")
        refused = config_problems(cfg)
        model = build_model(cfg).train()
        model.forward_train(torch.randn(1, 3, crop, crop), torch.zeros(1, crop, crop, dtype=torch.long), crop_box=box)
        return refused
    assert train_step(0.75, 128, (64, 128, 64, 128)) == [] and train_step(0.25, 128, (64, 128, 64, 128)) == []
    assert train_step(0.445, 100, (32, 96, 32, 96)) != []  # refused, although this one box would still fit
    with pytest.raises(Exception):
        train_step(0.445, 100, (36, 100, 36, 100))  # the farthest box the check warned about


@pytest.mark.slow  # one train_net start (~7 s); the message: test_each_check_refuses_with_its_message, train_net's
# refusal of a config check: engine/test_train_net_messages.py::test_a_refused_setting_is_one_line
def test_train_net_refuses_an_impossible_config_before_training(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "train_net.py"), "--config-file", DEMO_CONFIG,
                           "UDA.FD.CLASSES", "[6, 25]", "OUTPUT_DIR", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "UDA.FD.CLASSES=[6, 25]: class ids [25] are not classes" in proc.stderr
    assert not (tmp_path / "out" / "model_final.pth").exists()
