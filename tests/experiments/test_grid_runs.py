"""Every distinct model / method configuration of the experiment grid trains: its ``--tiny`` YAML (as
``tools/experiments.py --tiny`` writes it) builds its model, trains 2 iterations on the generated replicas and
evaluates, in-process (tests/helpers/training.py). The default suite runs one configuration per method x encoder
family; ``-m slow`` runs one per distinct configuration of every experiment id.

The replicas are the test-registered ones of the ``data_root`` fixture: every labelled source split is read from
the GTA-like replica, every target split (and the target-only oracle's labelled split) from the Cityscapes-like one;
the images are rescaled to each run's own (tiny) sizes, so crops, scales and windows are the run's."""
import math

import pytest

from hrda_d2 import load_config
from hrda_d2.experiments import generate_experiment
from tests.helpers.training import NAME_PREFIX, release, train

SOURCE, TARGET, VAL = (f"{NAME_PREFIX}_gta_train", f"{NAME_PREFIX}_cityscapes_train",
                       f"{NAME_PREFIX}_cityscapes_val")
ITERATIONS = 2
GRID_IDS = ("40", "41", "42", "43", "44", "49", "mic80", "mic81", "dinov2", "vfm_uda")


def _family(cfg) -> str:
    return {"build_mit_backbone": "MiT", "build_resnet_v1c_backbone": "ResNet", "build_timm_backbone": "ViT",
            "VFMViT": "VFM-ViT", "VFMViTAdapter": "VFM-Adapter"}[cfg.MODEL.BACKBONE.NAME]


def _key(cfg) -> tuple:
    """What makes a grid configuration distinct here: its (tiny) model and its method (MIC included)."""
    return cfg.MODEL.dump(), cfg.UDA.METHOD, cfg.UDA.MIC.ENABLED, cfg.UDA.MIC.MODE, tuple(cfg.INPUT.SYNC_CROP_SIZE)


def _distinct(tmp_path_factory, exps):
    root = tmp_path_factory.mktemp("grid")
    seen = {}
    for exp in exps:
        for gen in generate_experiment(exp, str(root / "configs"), str(root / "work"), tiny=True,
                                       tiny_iterations=ITERATIONS):
            if gen.run.seed == 0:
                cfg = load_config(gen.config_file)
                seen.setdefault(_key(cfg), (exp, gen))
    return list(seen.values())


def _train_and_evaluate(gen, output_dir):
    """The run's tiny config on the test replicas: build, train, evaluate."""
    cfg = load_config(gen.config_file)
    cfg.defrost()
    cfg.DATASETS.SOURCE = [TARGET if cfg.UDA.METHOD == "target_only" else SOURCE]
    cfg.DATASETS.TARGET = [TARGET]
    cfg.DATASETS.TEST = [VAL]
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.SOLVER.METRICS_PERIOD = 1
    cfg.freeze()
    trainer = train(cfg)
    try:
        histories = trainer.storage.histories()
        losses = {name: hist.latest() for name, hist in histories.items() if "loss" in name}
        evaluated = {name for name in histories if name.startswith("sem_seg/")}
        iteration = trainer.iter
    finally:
        release(trainer)
    assert iteration == ITERATIONS and losses, gen.run.name
    assert all(math.isfinite(v) for v in losses.values()), (gen.run.name, losses)
    assert "sem_seg/mIoU" in evaluated, (gen.run.name, sorted(histories))  # the final evaluation ran
    assert (output_dir / "model_final.pth").is_file()


@pytest.fixture(scope="module")
def fast_subset(tmp_path_factory):
    """One configuration per (method, encoder family) of the grid."""
    picked = {}
    for exp, gen in _distinct(tmp_path_factory, ("40", "41", "43", "dinov2", "vfm_uda")):
        cfg = load_config(gen.config_file)
        picked.setdefault((cfg.UDA.METHOD, _family(cfg)), gen)
    return picked


FAST = [("dacs", "MiT"), ("target_only", "MiT"), ("dacs", "ResNet"), ("advseg", "ResNet"), ("minent", "ResNet"),
        ("dacs", "ViT"), ("vfm_uda", "VFM-ViT")]
# AdvSeg / ResNet, MinEnt / ResNet and DACS / ViT also train and evaluate in the default suite through
# tests/tools/test_check_configs.py (its FAST configs): here they run with -m slow
COVERED_BY_CHECK_CONFIGS = {("advseg", "ResNet"), ("minent", "ResNet"), ("dacs", "ViT")}


@pytest.mark.parametrize("method,family", [
    pytest.param(m, f, id=f"{m}-{f}", marks=[pytest.mark.slow] if (m, f) in COVERED_BY_CHECK_CONFIGS else [])
    for m, f in FAST])
def test_one_run_per_method_and_encoder_family_trains_and_evaluates(fast_subset, data_root, tmp_path, method,
                                                                     family):
    assert set(FAST) <= set(fast_subset) and set(fast_subset) - set(FAST) <= {("vfm_uda", "VFM-Adapter")}
    _train_and_evaluate(fast_subset[(method, family)], tmp_path)


@pytest.mark.slow  # ~25 configurations, ~10-30 s each on 2 cores
def test_every_distinct_grid_configuration_trains_and_evaluates(tmp_path_factory, data_root):
    configurations = _distinct(tmp_path_factory, GRID_IDS)
    assert len(configurations) >= 20
    failed = {}
    for number, (exp, gen) in enumerate(configurations):
        try:
            _train_and_evaluate(gen, tmp_path_factory.mktemp(f"grid_run_{number}"))
        except Exception as e:  # every configuration is tried; the assertion names all that failed
            failed[f"{exp}/{gen.run.name}"] = f"{type(e).__name__}: {e}"[:300]
    assert not failed, failed
