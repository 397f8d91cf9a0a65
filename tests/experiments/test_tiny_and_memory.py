"""``--tiny`` (every paper run shrunk for the CPU, loadable as it is), memory switches, launch commands."""
import dataclasses

import pytest

from hrda_d2 import load_config
from hrda_d2.experiments import EXPERIMENT_IDS, experiment, generate_experiment
from hrda_d2.experiments.configs import MIN_SIDE, TINY_FACTOR, tiny_overrides
from hrda_d2.experiments.launch import STARTUP_TEST_OPTS, memory_summary, memory_switches, plan_launch


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {exp: generate_experiment(exp, str(root / "configs"), str(root / "work"), tiny=True, tiny_iterations=3)
            for exp in EXPERIMENT_IDS}


@pytest.mark.parametrize("exp", EXPERIMENT_IDS)
def test_every_run_has_a_tiny_version_that_loads(tiny_runs, exp):
    full = {c.stem for c in experiment(exp)}
    assert len(tiny_runs[exp]) == sum(len(c.seeds) for c in experiment(exp))
    for gen in tiny_runs[exp]:
        cfg = load_config(gen.config_file)
        assert gen.config_file.endswith(f"/{exp}/tiny/{gen.run.name}.yaml") and gen.run.config.stem in full
        assert cfg.MODEL.DEVICE == "cpu" and cfg.MODEL.WEIGHTS == "" and cfg.SOLVER.MAX_ITER == 3
        assert cfg.TEST.EVAL_PERIOD == 3 and cfg.SOLVER.IMS_PER_BATCH == 2 and cfg.SEED == gen.run.seed
        assert cfg.OUTPUT_DIR == gen.output_dir and "/tiny/" in cfg.OUTPUT_DIR
        assert (cfg.MODEL.MIT.VARIANT == "mit_b0" if cfg.MODEL.BACKBONE.NAME == "build_mit_backbone" else
                cfg.MODEL.RESNETS.DEPTH == 50 if cfg.MODEL.BACKBONE.NAME == "build_resnet_v1c_backbone" else
                "dinov2" in cfg.MODEL.TIMM.NAME)
        if len(cfg.MODEL.HRDA.SCALES) == 2:  # every model input (detail crop, context crop) >= the smallest MiT input
            crop = min(cfg.INPUT.SYNC_CROP_SIZE or cfg.INPUT.SOURCE.CROP_SIZE)
            assert min(cfg.MODEL.HRDA.HR_CROP_SIZE) >= MIN_SIDE and crop * min(cfg.MODEL.HRDA.SCALES) >= MIN_SIDE


def test_tiny_divides_sizes_by_eight_and_keeps_what_defines_the_run(tiny_runs):
    gen = next(g for g in tiny_runs["44"] if "fixedatt" in g.run.name)
    full = load_config(gen.config_file.replace("/tiny/", "/"))
    tiny = load_config(gen.config_file)
    assert list(tiny.INPUT.SOURCE.CROP_SIZE) == [c // TINY_FACTOR for c in full.INPUT.SOURCE.CROP_SIZE] == [128, 128]
    assert list(tiny.INPUT.SOURCE.SCALE) == [320, 180] and list(tiny.INPUT.TARGET.VALID_MASK_SIZE) == [128, 256]
    assert list(tiny.MODEL.HRDA.HR_CROP_SIZE) == [64, 64] and list(tiny.TEST.SLIDE.STRIDE) == [64, 64]
    for key in ("SCALES", "HR_LOSS_WEIGHT", "FIXED_ATTENTION", "HR_SLIDE_OVERLAPPING", "FEATURE_SCALE"):
        assert tiny.MODEL.HRDA[key] == full.MODEL.HRDA[key], key
    assert tiny.DATASETS.RCS.CLASS_TEMP == full.DATASETS.RCS.CLASS_TEMP and tiny.UDA.FD.LAMBDA == 0.0
    # the crop study's smallest windows stay at the smallest MiT input
    sync = {g.run.config.label: load_config(g.config_file).INPUT.SYNC_CROP_SIZE for g in tiny_runs["42"]}
    assert list(sync["LR crop 128 (0.25)"]) == [32, 32] and list(sync["HR crop 768 (0.75)"]) == [96, 96]


def test_tiny_grows_a_context_below_the_smallest_mit_input(tiny_runs):
    """HRDA Table S1's s_c 4 (context scale 0.25 of 512 crops): 64 px tiny crops would give a 16 px context; the crop
    and the test window grow to 128 px (context 32 px), the detail crop stays 512 / 8."""
    gen = next(g for g in tiny_runs["44"] if "sc025" in g.run.name)
    cfg = load_config(gen.config_file)
    assert list(cfg.INPUT.SYNC_CROP_SIZE) == [128, 128] and list(cfg.MODEL.HRDA.HR_CROP_SIZE) == [64, 64]
    assert list(cfg.TEST.SLIDE.CROP_SIZE) == [128, 128] and list(cfg.TEST.SLIDE.STRIDE) == [64, 64]
    full = load_config(gen.config_file.replace("/tiny/", "/"))
    assert tiny_overrides(full)["INPUT.SYNC_CROP_SIZE"] == [128, 128]


def test_memory_switches_follow_the_readme_tiers():
    hr = next(c for c in experiment("40"))
    assert memory_switches(hr, None) == [] and memory_switches(hr, 24) == [] and memory_switches(hr, 80) == []
    assert memory_switches(hr, 16) == ["SOLVER.AMP.ENABLED", "True", "MODEL.MIT.CHECKPOINT_ACTIVATIONS", "True"]
    assert memory_switches(hr, 12)[4:] == ["MODEL.SEM_SEG_HEAD.CHECKPOINT_ACTIVATIONS", "True",
                                          "TEST.SLIDE.BATCHED", "False"]
    with pytest.raises(ValueError, match="2 GPUs"):
        memory_switches(hr, 8)
    resnet = next(c for c in experiment("41") if c.row.hrda)  # DeepLabV2 + HRDA: a 24 GB run on a ResNet encoder
    assert memory_switches(resnet, 16) == ["SOLVER.AMP.ENABLED", "True"]  # no encoder checkpointing key for ResNet
    assert "MIT" not in memory_summary(resnet) and "TIMM" not in memory_summary(resnet)
    vit = dataclasses.replace(experiment("dinov2")[0], original_gpu="NVIDIATITANRTX")
    assert "MODEL.TIMM.CHECKPOINT_ACTIVATIONS" in memory_switches(vit, 16)
    lr = experiment("42")[0]  # an 11 GB run of the original
    assert memory_switches(lr, 12) == [] and "original 11 GB" in memory_summary(lr)
    assert "not measured" in memory_summary(experiment("dinov2")[0])


def test_launch_commands_resume_agree_on_the_stop_signals_and_add_the_startup_test(tiny_runs, tmp_path):
    runs = tiny_runs["40"]
    items = plan_launch(runs, str(tmp_path), tiny=True, startup_test=True, extra_opts=["SOLVER.METRICS_PERIOD", "1"])
    assert [i.name for i in items] == [g.run.name for g in runs if g.run.seed == 0]  # startup test: seed 0 only
    command = items[0].command("python", "train.py")
    assert command[:7] == ["python", "train.py", "--config-file", items[0].config_file, "--resume", "--num-gpus", "1"]
    opts = list(items[0].opts)
    assert opts[:len(STARTUP_TEST_OPTS)] == list(STARTUP_TEST_OPTS)
    assert opts[opts.index("SOLVER.PREEMPTION_SIGNALS") + 1] == "['SIGTERM', 'SIGINT', 'SIGUSR1']"
    assert opts[-2:] == ["OUTPUT_DIR", str(tmp_path / "tiny" / "startup-test" / "40" / items[0].name)]
    assert items[0].max_iter == 2 and items[0].eval_period == 0 and "SOLVER.METRICS_PERIOD" in opts
    full = plan_launch(generate_experiment("40", str(tmp_path / "c"), str(tmp_path / "w")), str(tmp_path / "w"),
                       gpu_memory_gb=16)
    assert len(full) == 6 and "MODEL.MIT.CHECKPOINT_ACTIVATIONS" in full[0].opts and full[0].max_iter == 40000
