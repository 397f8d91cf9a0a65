"""Tiny DACS training runs shared by the engine tests: configs on generated data, in-process trainers and
``tools/train_net.py`` subprocesses, state snapshots."""
import gc
import glob
import os
import subprocess
import sys
from typing import Dict, List

import torch
from detectron2.config import get_cfg
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng

from hrda_d2 import add_hrda_config
from hrda_d2.engine.trainer import HRDATrainer
from tests.helpers.paths import REPO_ROOT

REPO = REPO_ROOT
TRAIN_NET = str(REPO / "tools" / "train_net.py")
DEMO_CONFIG = str(REPO / "configs" / "demo_hrda.yaml")
NAME_PREFIX = "dacs_trainer_test"

# configs/demo_hrda.yaml shrunk: 64x64 crops of the 64x128 generated images, 32x32 HR crops / tiles (the
# smallest MiT input), test slide windows 64x64, all RCS classes eligible with so few pixels
SMALL_OPTS = [
    "INPUT.SOURCE.SCALE", "[128, 64]", "INPUT.SOURCE.CROP_SIZE", "[64, 64]",
    "INPUT.TARGET.SCALE", "[128, 64]", "INPUT.TARGET.CROP_SIZE", "[64, 64]",
    "INPUT.TARGET.VALID_MASK_SIZE", "[64, 128]", "INPUT.TARGET.PSEUDO_MARGINS", "[2, 8, 2, 2]",
    "INPUT.TEST.SCALE", "[128, 64]", "MODEL.HRDA.HR_CROP_SIZE", "[32, 32]",
    "TEST.SLIDE.CROP_SIZE", "[64, 64]", "TEST.SLIDE.STRIDE", "[64, 64]",
    "DATASETS.RCS.MIN_PIXELS", "1", "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.METRICS_PERIOD", "1",  # every iteration's losses in the event storage, every one checked
]
# the paper's loss terms (§4.3, §7.2): fused-scale CE + HR-crop CE (HR_LOSS_WEIGHT 0.1; LR weight 0 -> no term)
SOURCE_TERMS = {"loss_src_sem_seg", "loss_src_sem_seg_hr"}
MIX_TERMS = {"loss_mix_sem_seg", "loss_mix_sem_seg_hr"}
FD_TERM = "loss_imnet_feat_dist"

# the straight reference run shared by the resume tests: REF_ITERS iterations, stopped at REF_ITERS // 2
REF_ITERS = 4
REF_OPTS = ["SOLVER.MAX_ITER", str(REF_ITERS), "UDA.FD.LAMBDA", "0.005", "UDA.DEBUG_IMG_INTERVAL", "2",
            "TEST.EVAL_PERIOD", "2", "SOLVER.CHECKPOINT_PERIOD", "2"]


class StopTraining(Exception):
    """Raised by :class:`StopAfter` to interrupt training like a crash."""


class StopAfter(HookBase):
    """Raise ``StopTraining`` after ``num_iters`` iterations (after the other hooks, i.e. after the checkpoint)."""

    def __init__(self, num_iters: int):
        self.num_iters = num_iters

    def after_step(self):
        if self.trainer.iter + 1 == self.num_iters:
            raise StopTraining()


def clone_state(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def clone_params(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def differing_keys(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> List[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def optimizer_tensors(state_dict: dict) -> Dict[str, torch.Tensor]:
    """``'<param index>.<name>'`` -> tensor (exp_avg, exp_avg_sq, step) of an optimizer state dict."""
    return {f"{i}.{name}": torch.as_tensor(value) for i, state in state_dict["state"].items()
            for name, value in state.items()}


def param_group_settings(state_dict: dict) -> list:
    return [{k: v for k, v in group.items() if k != "params"} | {"params": list(group["params"])}
            for group in state_dict["param_groups"]]


def loss_history(trainer) -> Dict[str, Dict[int, float]]:
    """Loss term -> {iteration: value} from the trainer's event storage (every iteration, unsmoothed)."""
    return {name: {it: value for value, it in hist.values()}
            for name, hist in trainer.storage.histories().items() if name.startswith("loss") or name == "total_loss"}


def make_cfg(output_dir, *opts):
    """configs/demo_hrda.yaml + SMALL_OPTS + the generated splits of the ``data_root`` fixture + ``opts``."""
    cfg = get_cfg()
    add_hrda_config(cfg)
    cfg.merge_from_file(DEMO_CONFIG)
    cfg.merge_from_list(SMALL_OPTS + [
        "DATASETS.SOURCE", f"('{NAME_PREFIX}_gta_train',)",
        "DATASETS.TARGET", f"('{NAME_PREFIX}_cityscapes_train',)",
        "DATASETS.TEST", f"('{NAME_PREFIX}_cityscapes_val',)",
        "OUTPUT_DIR", str(output_dir),
    ] + list(opts))
    cfg.freeze()
    return cfg


def build_trainer(cfg, seed=None):
    """``HRDATrainer(cfg)`` after seeding every RNG as ``default_setup`` does (``SEED + rank``)."""
    seed_all_rng(cfg.SEED if seed is None else seed)
    return HRDATrainer(cfg)


def train(cfg, hooks=(), resume=False, seed=None):
    trainer = build_trainer(cfg, seed)
    trainer.resume_or_load(resume=resume)
    trainer.register_hooks(list(hooks))
    trainer.train()
    return trainer


def release(trainer):
    """Drop a trainer and its loader worker processes."""
    del trainer
    gc.collect()


def final_state(trainer) -> dict:
    """The state to compare of a trainer whose ``train()`` returned (``iter`` is then ``MAX_ITER``)."""
    return {
        "student": clone_state(trainer.student),
        "teacher": clone_state(trainer.teacher),
        "imnet_model": clone_state(trainer.imnet_model),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "iter": trainer.iter,
    }


def checkpoint_state(path) -> dict:
    """:func:`final_state` of the run that wrote the checkpoint ``path``."""
    data = torch.load(path, map_location="cpu", weights_only=False)
    return {
        "student": data["model"],
        "teacher": data["teacher"],
        "imnet_model": data["imnet_model"],
        "optimizer": data["trainer"]["_trainer"]["optimizer"],
        "scheduler": data["trainer"]["hooks"]["LRScheduler"],
        "iter": data["iteration"] + 1,
    }


def assert_same_training_state(got: dict, expected: dict) -> None:
    """Bit-exact equality of models (parameters and buffers), optimizer and scheduler state."""
    for part in ("student", "teacher", "imnet_model"):
        assert differing_keys(got[part], expected[part]) == [], f"{part} differs"
    got_opt, exp_opt = optimizer_tensors(got["optimizer"]), optimizer_tensors(expected["optimizer"])
    assert differing_keys(got_opt, exp_opt) == [], "optimizer state differs"
    assert param_group_settings(got["optimizer"]) == param_group_settings(expected["optimizer"])
    assert got["scheduler"] == expected["scheduler"]
    assert got["iter"] == expected["iter"]


def subprocess_env(data_root) -> dict:
    env = dict(os.environ, DETECTRON2_DATASETS=str(data_root), CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="2",
               PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return env


def cli_opts(output_dir, *opts) -> List[str]:
    """train_net.py arguments: the demo config on the builtin split names (rooted at $DETECTRON2_DATASETS)."""
    return ["--config-file", DEMO_CONFIG] + SMALL_OPTS + ["OUTPUT_DIR", str(output_dir)] + list(opts)


def run_cli(args, data_root, timeout=240) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, TRAIN_NET] + args, env=subprocess_env(data_root), cwd=str(REPO),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"train_net.py failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
    return result


def checkpoint_files(folder) -> List[str]:
    return sorted(glob.glob(os.path.join(folder, "model_*.pth")))


class RecordStep(HookBase):
    """Records, per iteration, the student's parameters before the step, the teacher's after it, and the
    gradients the teacher / ImageNet model hold after it."""

    def __init__(self):
        self.student_before: Dict[int, Dict[str, torch.Tensor]] = {}
        self.teacher_after: Dict[int, Dict[str, torch.Tensor]] = {}
        self.teacher_buffers_after: Dict[int, Dict[str, torch.Tensor]] = {}
        self.frozen_grads: Dict[int, List[str]] = {}

    def before_step(self):
        self.student_before[self.trainer.iter] = clone_params(self.trainer.student)

    def after_step(self):
        it, teacher = self.trainer.iter, self.trainer.teacher
        self.teacher_after[it] = clone_params(teacher)
        self.teacher_buffers_after[it] = {k: v.clone() for k, v in teacher.named_buffers()}
        self.frozen_grads[it] = [f"{owner}.{name}" for owner, model in
                                 (("teacher", teacher), ("imnet_model", self.trainer.imnet_model))
                                 if model is not None for name, p in model.named_parameters() if p.grad is not None]
