"""Every config in configs/ loads, and the paper experiments carry the reference values (§11.4, §14)."""

import pytest
from detectron2.config import get_cfg

from hrda_d2 import add_hrda_config, load_config
from tests.helpers.paths import CONFIG_DIR




def load(name: str):
    cfg = add_hrda_config(get_cfg())
    cfg.merge_from_file(str(CONFIG_DIR / name))
    return cfg


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_loads(path):
    cfg = load(path.name)
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 19


def test_gta_hrda_is_the_paper_setting():
    cfg = load("gtaHR2csHR_hrda.yaml")
    assert cfg.MODEL.MIT.VARIANT == "mit_b5" and cfg.MODEL.MIT.DROP_PATH_RATE == 0.1
    assert sorted(cfg.MODEL.HRDA.SCALES) == [0.5, 1.0]
    assert list(cfg.MODEL.HRDA.HR_CROP_SIZE) == [512, 512]
    assert cfg.MODEL.HRDA.HR_LOSS_WEIGHT == 0.1 and cfg.MODEL.HRDA.LR_LOSS_WEIGHT == 0.0
    assert cfg.MODEL.HRDA.FEATURE_SCALE == 0.5 and cfg.MODEL.HRDA.CROP_COORD_DIVISIBLE == 8
    assert cfg.MODEL.SEM_SEG_HEAD.FUSION == "aspp" and list(cfg.MODEL.SEM_SEG_HEAD.ASPP_DILATIONS) == [1, 6, 12, 18]
    assert cfg.MODEL.SEM_SEG_HEAD.DROPOUT == 0.1 and cfg.MODEL.SEM_SEG_HEAD.EMBED_DIM == 256
    assert cfg.TEST.MODE == "slide" and cfg.TEST.SLIDE.BATCHED
    assert list(cfg.TEST.SLIDE.CROP_SIZE) == [1024, 1024] and list(cfg.TEST.SLIDE.STRIDE) == [512, 512]
    assert list(cfg.INPUT.SOURCE.SCALE) == [2560, 1440] and list(cfg.INPUT.SOURCE.CROP_SIZE) == [1024, 1024]
    assert cfg.INPUT.SOURCE.CAT_MAX_RATIO == 0.75
    assert list(cfg.INPUT.TARGET.SCALE) == [2048, 1024] and list(cfg.INPUT.TARGET.PSEUDO_MARGINS) == [30, 240, 30, 30]
    assert cfg.DATASETS.SOURCE == ("gta_train",) and cfg.DATASETS.TARGET == ("cityscapes_fine_sem_seg_train",)
    assert cfg.DATASETS.TEST == ("cityscapes_fine_sem_seg_val",)
    assert cfg.DATASETS.RCS.ENABLED and cfg.DATASETS.RCS.CLASS_TEMP == 0.01
    assert cfg.DATASETS.RCS.MIN_PIXELS == 3000 and cfg.DATASETS.RCS.MIN_CROP_RATIO == 2.0
    assert cfg.UDA.METHOD == "dacs" and cfg.UDA.ALPHA == 0.999 and cfg.UDA.PSEUDO_THRESHOLD == 0.968
    assert cfg.UDA.FD.LAMBDA == 0.005 and list(cfg.UDA.FD.CLASSES) == [6, 7, 11, 12, 13, 14, 15, 16, 17, 18]
    assert cfg.UDA.FD.SCALE_MIN_RATIO == 0.75
    assert cfg.UDA.AUG.COLOR_JITTER_STRENGTH == 0.2 and cfg.UDA.AUG.COLOR_JITTER_SKIP_THRESHOLD == 0.2
    assert cfg.SOLVER.BASE_LR == 6e-5 and cfg.SOLVER.WEIGHT_DECAY == 0.01 and list(cfg.SOLVER.BETAS) == [0.9, 0.999]
    assert cfg.SOLVER.HEAD_LR_MULTIPLIER == 10.0 and cfg.SOLVER.WARMUP_ITERS == 1500
    assert cfg.SOLVER.WARMUP_FACTOR == 1e-6 and cfg.SOLVER.POLY_LR_POWER == 1.0 and cfg.SOLVER.MAX_ITER == 40000
    assert cfg.SOLVER.IMS_PER_BATCH == 2 and cfg.DATALOADER.NUM_WORKERS == 1
    assert cfg.TEST.EVAL_PERIOD == 4000 and cfg.SEED == 1
    assert not cfg.SOLVER.AMP.ENABLED and not cfg.SOLVER.CLIP_GRADIENTS.ENABLED


def test_synthia_hrda():
    cfg = load("synthiaHR2csHR_hrda.yaml")
    assert cfg.DATASETS.SOURCE == ("synthia_train",)
    assert list(cfg.INPUT.SOURCE.SCALE) == [2560, 1520] and cfg.TEST.REPORT_MIOU16


@pytest.mark.parametrize("name,target,test", [
    ("csHR2acdcHR_hrda.yaml", "acdc_train", "acdc_val"),
    ("csHR2dzurHR_hrda.yaml", "darkzurich_train", "darkzurich_val"),
])
def test_cityscapes_source_configs(name, target, test):
    cfg = load(name)
    assert cfg.DATASETS.SOURCE == ("cityscapes_fine_sem_seg_train",)
    assert cfg.DATASETS.TARGET == (target,) and cfg.DATASETS.TEST == (test,)
    assert list(cfg.INPUT.SOURCE.SCALE) == [2048, 1024] and list(cfg.INPUT.TARGET.SCALE) == [1920, 1080]
    assert list(cfg.INPUT.TARGET.PSEUDO_MARGINS) == []  # plcrop False
    assert cfg.DATASETS.RCS.MIN_CROP_RATIO == 2.0


@pytest.mark.parametrize("name,source,scale", [
    ("gta2cs_daformer.yaml", "gta_train", [1280, 720]),
    ("synthia2cs_daformer.yaml", "synthia_train", [1280, 760]),
])
def test_daformer_512_baselines(name, source, scale):
    cfg = load(name)
    assert list(cfg.MODEL.HRDA.SCALES) == [1.0]
    assert cfg.DATASETS.SOURCE == (source,) and list(cfg.INPUT.SOURCE.SCALE) == scale
    assert list(cfg.INPUT.SOURCE.CROP_SIZE) == [512, 512] and list(cfg.INPUT.TARGET.CROP_SIZE) == [512, 512]
    assert list(cfg.INPUT.TARGET.SCALE) == [1024, 512]
    assert list(cfg.TEST.SLIDE.CROP_SIZE) == [512, 512] and list(cfg.TEST.SLIDE.STRIDE) == [256, 256]
    assert cfg.DATASETS.RCS.MIN_CROP_RATIO == 0.5
    assert list(cfg.INPUT.TARGET.VALID_MASK_SIZE) == [1024, 2048]


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*source_only.yaml")), ids=lambda p: p.name)
def test_source_only_variants_disable_uda(path):
    assert load(path.name).UDA.METHOD == "source_only" and load(path.name).UDA.ENABLED is None


def test_dinov2_configs_use_vfm_uda_optimizer_settings():
    """VFM-UDA (tue-mps/vfm-uda uda_vit_hrda.yaml, training/uda_vit/uda_vit_hrda.py): encoder lr
    5e-5 * sqrt(8) * 0.1, decoder 10x, weight decay 0.01 everywhere, warm-up from 1e-3 over 1500 iterations,
    batch 8, 40k iterations; the HRDA settings stay."""
    for name, arch in (("gtaHR2csHR_hrda_dinov2_vitb.yaml", "vit_base_patch14_dinov2"),
                       ("gtaHR2csHR_hrda_dinov2_vitl.yaml", "vit_large_patch14_dinov2")):
        cfg = load(name)
        assert cfg.MODEL.BACKBONE.NAME == "build_timm_backbone" and cfg.MODEL.TIMM.NAME == arch
        assert abs(cfg.SOLVER.BASE_LR - 5e-5 * 8 ** 0.5 * 0.1) < 1e-9 and cfg.SOLVER.HEAD_LR_MULTIPLIER == 10.0
        assert cfg.SOLVER.BACKBONE_NORM_DECAY_MULTIPLIER == 1.0 and cfg.SOLVER.WEIGHT_DECAY == 0.01
        assert cfg.SOLVER.WARMUP_FACTOR == 1e-3 and cfg.SOLVER.WARMUP_ITERS == 1500
        assert cfg.SOLVER.IMS_PER_BATCH == 8 and cfg.SOLVER.MAX_ITER == 40000
        assert list(cfg.SOLVER.HEAD_LR_PARAM_PREFIXES) == ["backbone.simfp_"]
        assert sorted(cfg.MODEL.HRDA.SCALES) == [0.5, 1.0] and list(cfg.MODEL.HRDA.HR_CROP_SIZE) == [512, 512]
        assert cfg.UDA.FD.FEATURE == "vit_tokens" and cfg.UDA.FD.LAMBDA == 0.0
    assert load("gtaHR2csHR_hrda_dinov2_vitl.yaml").MODEL.TIMM.CHECKPOINT_ACTIVATIONS


def test_dinov2_mic_configs_are_the_dinov2_configs_plus_mic():
    for size in ("vitb", "vitl"):
        mic, hrda = load(f"gtaHR2csHR_mic_hrda_dinov2_{size}.yaml"), load(f"gtaHR2csHR_hrda_dinov2_{size}.yaml")
        assert mic.UDA.MIC.ENABLED and not hrda.UDA.MIC.ENABLED
        assert (mic.UDA.MIC.MODE, mic.UDA.MIC.MASK_RATIO, mic.UDA.MIC.BLOCK_SIZE, mic.UDA.MIC.LAMBDA) == (
            "separatetrgaug", 0.7, 64, 1.0)
        assert mic.MODEL.TIMM.NAME == hrda.MODEL.TIMM.NAME and mic.SOLVER.BASE_LR == hrda.SOLVER.BASE_LR


def test_config_layer_lists_exactly_the_implemented_mic_modes():
    from hrda_d2.config import MIC_MODE_NAMES
    from hrda_d2.uda import MIC_MODES

    assert sorted(MIC_MODE_NAMES) == sorted(MIC_MODES)


TABLE2_ROWS = {  # config -> (method, HRDA, optimizer, lr, crop, colour aug, RCS, alpha, FD lambda, margins)
    "gtaCAug2cs_advseg_dlv2": ("advseg", False, "SGD", 0.0025, 512, True, False, None, None, []),
    "gtaCAugHR2csHR_advseg_hrda_dlv2": ("advseg", True, "SGD", 0.0025, 1024, True, False, None, None, []),
    "gtaCAug2cs_minent_dlv2": ("minent", False, "SGD", 0.0025, 512, True, False, None, None, []),
    "gtaCAugHR2csHR_minent_hrda_dlv2": ("minent", True, "SGD", 0.0025, 1024, True, False, None, None, []),
    "gta2cs_dacs_dlv2": ("dacs", False, "ADAMW", 6e-5, 512, False, False, 0.99, 0.0, []),
    "gtaHR2csHR_dacs_hrda_dlv2": ("dacs", True, "ADAMW", 6e-5, 1024, False, False, 0.99, 0.0, []),
    "gta2cs_daformer_dlv2": ("dacs", False, "ADAMW", 6e-5, 512, False, True, 0.999, 0.005, [30, 240, 30, 30]),
    "gtaHR2csHR_daformer_hrda_dlv2": ("dacs", True, "ADAMW", 6e-5, 1024, False, True, 0.999, 0.005,
                                      [30, 240, 30, 30]),
}


@pytest.mark.parametrize("name", sorted(TABLE2_ROWS))
def test_table2_rows_are_experiment_41(name):
    """docs/method.md §18.9: DeepLabV2 (6, 12) on ResNet-101-V1c, whole inference, per-row method and schedule."""
    from hrda_d2.config import uda_method

    method, hrda, optimizer, lr, crop, colour, rcs, alpha, fd, margins = TABLE2_ROWS[name]
    cfg = load_config(str(CONFIG_DIR / f"{name}.yaml"))
    assert (cfg.MODEL.BACKBONE.NAME, cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.SEM_SEG_HEAD.NAME) == (
        "build_resnet_v1c_backbone", 101, "DLV2Head")
    assert list(cfg.MODEL.SEM_SEG_HEAD.ASPP_DILATIONS) == [6, 12] and cfg.TEST.MODE == "whole"
    assert uda_method(cfg) == method and (len(cfg.MODEL.HRDA.SCALES) == 2) == hrda
    if hrda:
        assert list(cfg.MODEL.HRDA.HR_CROP_SIZE) == [512, 512] and cfg.MODEL.HRDA.HR_LOSS_WEIGHT == 0.1
    assert (cfg.SOLVER.OPTIMIZER, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS) == (
        optimizer, lr, 40000, 1500)
    assert cfg.SOLVER.HEAD_LR_MULTIPLIER == (1.0 if optimizer == "SGD" else 10.0)
    assert cfg.SOLVER.BACKBONE_NORM_DECAY_MULTIPLIER == 1.0
    if optimizer == "SGD":
        assert (cfg.SOLVER.MOMENTUM, cfg.SOLVER.WEIGHT_DECAY) == (0.9, 5e-4)
    assert list(cfg.INPUT.SOURCE.CROP_SIZE) == list(cfg.INPUT.TARGET.CROP_SIZE) == [crop, crop]
    assert list(cfg.INPUT.SOURCE.SCALE) == ([1280, 720] if crop == 512 else [2560, 1440])
    assert cfg.INPUT.SOURCE.PHOTOMETRIC_DISTORTION == colour and not cfg.INPUT.TARGET.PHOTOMETRIC_DISTORTION
    assert cfg.DATASETS.RCS.ENABLED == rcs and list(cfg.INPUT.TARGET.PSEUDO_MARGINS) == margins
    if rcs:
        assert cfg.DATASETS.RCS.MIN_CROP_RATIO == (0.5 if crop == 512 else 2.0)
    if method == "dacs":
        assert (cfg.UDA.ALPHA, cfg.UDA.FD.LAMBDA) == (alpha, fd)
    assert cfg.SOLVER.IMS_PER_BATCH == 2


VFM_DIR = CONFIG_DIR / "vfm_uda"


@pytest.mark.parametrize("path", sorted(VFM_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_vfm_config_loads_and_passes_the_checks(path):
    cfg = load_config(str(path))
    assert cfg.UDA.METHOD == "vfm_uda" and list(cfg.MODEL.HRDA.SCALES) == [1.0]


def _vfm(name):
    return load_config(str(VFM_DIR / name))


def test_vfm_uda_configs_carry_the_original_values():
    """tue-mps/vfm-uda uda_vit_vanilla.yaml + UDAVITGeneric defaults + VITLightweightHead + the datamodule."""
    for name, arch in (("gta2cs_vfm_uda_vitb.yaml", "vit_base_patch14_dinov2"),
                       ("gta2cs_vfm_uda_vitl.yaml", "vit_large_patch14_dinov2")):
        cfg = _vfm(name)
        assert (cfg.MODEL.BACKBONE.NAME, cfg.MODEL.TIMM.NAME, cfg.MODEL.SEM_SEG_HEAD.NAME) == (
            "VFMViT", arch, "VFMLightweightHead")
        assert cfg.MODEL.VFM.INPUT_SCALE == 1.1 and cfg.MODEL.TIMM.DROP_PATH_RATE == 0.0
        assert cfg.MODEL.SEM_SEG_HEAD.AVG_NON_IGNORE
        s = cfg.SOLVER
        # decoder lr 5e-5 * sqrt(8), encoder x 0.1, no layer decay, warm-up 1e-3 over 1500 then linear to 0
        assert abs(s.BASE_LR * s.HEAD_LR_MULTIPLIER - 5e-5) < 1e-12 and s.HEAD_LR_MULTIPLIER == 10.0
        assert s.LR_SQRT_BATCH_SCALING and s.IMS_PER_BATCH == 8 and s.LAYER_DECAY == 1.0
        assert (s.LR_SCHEDULER_NAME, s.WARMUP_FACTOR, s.WARMUP_ITERS, s.MAX_ITER) == ("WarmupLinearLR", 1e-3, 1500,
                                                                                        40000)
        assert s.WEIGHT_DECAY == 0.01 and s.BACKBONE_NORM_DECAY_MULTIPLIER == 1.0
        v = cfg.UDA.VFM
        assert (v.EMA_ALPHA, v.PSEUDO_THRESHOLD, v.TOKEN_MASK_RATIO, v.FLIP, v.STRONG_SOURCE_AUG) == (
            0.999, 0.968, 0.7, "per_image", False)
        assert v.EMA_BUFFERS and v.FD_WEIGHT_SOURCE == v.FD_WEIGHT_TARGET == 0.0
        assert cfg.UDA.MIC.MASK_TYPE == "tokens" and not cfg.UDA.MIC.ENABLED
        assert list(cfg.INPUT.SOURCE.RATIO_RANGE) == list(cfg.INPUT.TARGET.RATIO_RANGE) == [0.9, 1.1]
        assert min(cfg.INPUT.SOURCE.SCALE) == 1440 and min(cfg.INPUT.TARGET.SCALE) == 1024
        assert cfg.INPUT.SOURCE.FLIP_PROB == cfg.INPUT.TARGET.FLIP_PROB == 0.0  # the iteration flips
        assert list(cfg.INPUT.TARGET.PSEUDO_MARGINS) == [30, 256, 61, 61]  # 3 / 25 / 3 / 3 % of 1024 x 2048
        assert cfg.DATASETS.RCS.CLASS_TEMP == 0.05 and cfg.DATASETS.RCS.MIN_CROP_RATIO == 2.0
        assert "wilddash2_val" in cfg.DATASETS.TEST
        assert (cfg.TEST.MODE, list(cfg.TEST.SLIDE.CROP_SIZE), list(cfg.TEST.SLIDE.STRIDE)) == (
            "slide", [1024, 1024], [512, 512])
        assert cfg.TEST.SLIDE.MERGE == "probabilities"


def test_vfm_uda_pp_configs_carry_the_original_values():
    """tue-mps/vfm-uda-plusplus cfgs/vfmudaplusplus_*.yaml + UDA defaults: lr (1e-5 for ViT-L GTA, else 5e-5) x 0.1,
    layer decay 0.9, strong source augmentation, FD 0.1 / 0.1 against DINOv2 ViT-L/14 with registers."""
    lrs = {"gta2cs_vfm_uda_pp_vitl.yaml": 1e-5, "gta2cs_vfm_uda_pp_vitb.yaml": 5e-5,
           "gta2cs_vfm_uda_pp_vits.yaml": 5e-5, "synthia2cs_vfm_uda_pp_vitb.yaml": 5e-5,
           "cs2dzur_vfm_uda_pp_vitl.yaml": 5e-5}
    for name, lr in lrs.items():
        cfg = _vfm(name)
        assert (cfg.MODEL.BACKBONE.NAME, cfg.MODEL.SEM_SEG_HEAD.NAME) == ("VFMViTAdapter", "VFMPyramidHead")
        assert abs(cfg.SOLVER.BASE_LR - lr * 0.1) < 1e-15 and cfg.SOLVER.LAYER_DECAY == 0.9
        v = cfg.UDA.VFM
        assert (v.STRONG_SOURCE_AUG, v.FLIP, v.EMA_BUFFERS, v.FD_WEIGHT_SOURCE, v.FD_WEIGHT_TARGET) == (
            True, "per_batch", False, 0.1, 0.1)
        assert (v.FD_MODEL, v.FD_SIZE, v.FD_FEATURE) == ("vit_large_patch14_reg4_dinov2", 406, "res5")
        assert list(cfg.SOLVER.HEAD_LR_PARAM_PREFIXES) == ["fd_head."]
    assert _vfm("cs2dzur_vfm_uda_pp_vitl.yaml").DATASETS.TARGET == ("darkzurich_train",)
    assert _vfm("synthia2cs_vfm_uda_pp_vitb.yaml").DATASETS.SOURCE == ("synthia_train",)
