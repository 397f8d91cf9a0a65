"""The VFM recipes end to end (issue 26): each of configs/vfm_uda's two model families (VFM-UDA: ViT + lightweight
head, token masking; VFM-UDA++: ViT-Adapter + pyramid head, block masking, frozen-DINOv2 feature distance) at the
tiny size of ``tools/experiments.py --tiny`` on the generated replicas:

* ``tools/train_net.py`` trains 4 iterations (checkpoints every 2, evaluation at the end) with every loss term
  finite, and ``--eval-only`` evaluates the result;
* exact resume: 4 iterations straight == 2, stop, resume in a fresh trainer with other RNG seeds, 2 more - every
  tensor of the final checkpoint (student, EMA teacher, distill head, frozen DINOv2, optimizer, scheduler) bit-equal.

Slow (each recipe ~1-2 min on 2 cores); the default suite trains the VFM-UDA recipe in
tests/experiments/test_grid_runs.py.
"""
import json
import math

import pytest
import torch

from hrda_d2 import load_config
from hrda_d2.experiments.configs import tiny_overrides
from tests.helpers.paths import CONFIG_DIR
from tests.helpers.training import NAME_PREFIX, StopAfter, StopTraining, build_trainer, release, run_cli

RECIPES = {"vfm_uda": CONFIG_DIR / "vfm_uda" / "gta2cs_vfm_uda_vitb.yaml",
           "vfm_uda_pp": CONFIG_DIR / "vfm_uda" / "gta2cs_vfm_uda_pp_vitb.yaml"}
ITERS = 4
# the terms each recipe must log (docs/method.md §22): source, mix, masked consistency [, feature distances]
EXPECTED_TERMS = {"vfm_uda": ("src", "mix", "masked"), "vfm_uda_pp": ("src", "mix", "masked", "fd_src",
                                                                      "fd_trg")}


def _opts(config, output_dir, split_names) -> list:
    """The tiny overrides of ``config`` for ITERS iterations, on ``split_names`` (source, target, test)."""
    cfg = load_config(str(config), freeze=False)
    opts = []
    for key, value in tiny_overrides(cfg, ITERS).items():
        opts += [key, str(value)]
    source, target, test = split_names
    return opts + ["DATASETS.SOURCE", f"('{source}',)", "DATASETS.TARGET", f"('{target}',)",
                   "DATASETS.TEST", f"('{test}',)", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.METRICS_PERIOD", "1",
                   "OUTPUT_DIR", str(output_dir)]


def _tensors(obj, prefix=""):
    """Every tensor and number of a (nested) checkpoint, by path."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f"{prefix}/{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{prefix}/{i}")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield prefix, torch.tensor(obj)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_train_net_trains_evaluates_and_eval_only(recipe, data_root, tmp_path):
    out = tmp_path / "run"
    opts = _opts(RECIPES[recipe], out, ("gta_train", "cityscapes_fine_sem_seg_train", "cityscapes_fine_sem_seg_val"))
    run_cli(["--config-file", str(RECIPES[recipe])] + opts, data_root, timeout=600)
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines() if line.strip()]
    losses = {k: v for r in records for k, v in r.items() if k.startswith("loss")}
    for term in EXPECTED_TERMS[recipe]:
        assert any(term in name for name in losses), (term, sorted(losses))
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    assert any("sem_seg/mIoU" in k for r in records for k in r)  # the final evaluation ran
    assert (out / "model_final.pth").is_file()
    result = run_cli(["--config-file", str(RECIPES[recipe]), "--eval-only"] + opts
                     + ["MODEL.WEIGHTS", str(out / "model_final.pth")], data_root, timeout=600)
    assert "mIoU" in result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_resume_is_bit_exact(recipe, data_root, tmp_path):
    names = (f"{NAME_PREFIX}_gta_train", f"{NAME_PREFIX}_cityscapes_train", f"{NAME_PREFIX}_cityscapes_val")

    def cfg_for(folder):
        return load_config(str(RECIPES[recipe]), _opts(RECIPES[recipe], tmp_path / folder, names)
                           + ["TEST.EVAL_PERIOD", "0"])

    straight = build_trainer(cfg_for("straight"))
    straight.resume_or_load(resume=False)
    straight.train()
    release(straight)

    first = build_trainer(cfg_for("resumed"))
    first.resume_or_load(resume=False)
    first.register_hooks([StopAfter(ITERS // 2)])
    with pytest.raises(StopTraining):
        first.train()
    release(first)
    second = build_trainer(cfg_for("resumed"), seed=12345)  # every RNG state must come from the checkpoint
    second.resume_or_load(resume=True)
    assert second.start_iter == ITERS // 2
    second.train()
    release(second)

    expected = dict(_tensors(torch.load(tmp_path / "straight" / "model_final.pth", weights_only=False)))
    got = dict(_tensors(torch.load(tmp_path / "resumed" / "model_final.pth", weights_only=False)))
    assert set(got) == set(expected)
    parts = {path.split("/")[1] for path in expected}
    assert {"model", "teacher", "trainer"} <= parts, parts
    if recipe == "vfm_uda_pp":
        assert {"fd_head", "fd_model"} <= parts, parts
    differing = [p for p in expected if not torch.equal(got[p], expected[p])]
    assert differing == [], differing[:10]
