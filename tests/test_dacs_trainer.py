"""End-to-end tests of the DACS trainer (issue 6, reference §7.2): ``HRDATrainer`` in-process and
``tools/train_net.py`` in subprocesses, on generated data with a tiny HRDA (MiT-b0, 64x64 crops, 32x32 HR crops).

What is asserted (expectations come from the reference, not from this code's output):

* every loss term of a few DACS iterations (and of source-only training in the same loop) is finite;
* the teacher is the EMA of the student (§7.2 step 1: copy at iteration 0, then
  ``alpha_t = min(1 - 1/(t+1), alpha)``, parameters only; the teacher's BatchNorm counters count only its own
  pseudo-label calls: 2 main-head calls and 1 attention-head call per iteration, §7.2 step 6); teacher and
  ImageNet model receive no gradients and are outside the optimizer;
* exact resume: N iterations straight == N/2, stop, resume in a fresh trainer, N/2 more (student, teacher,
  ImageNet model, optimizer, scheduler, losses: bit-identical on CPU), with 0 and 1 loader workers;
* SIGKILL during a checkpoint write and at a random time: every ``*.pth`` loads, ``last_checkpoint`` names a
  complete file, partial files are never used (and are removed on resume), ``--resume`` finishes the run and
  the result equals the uninterrupted run bit for bit;
* a non-finite loss stops training with a FloatingPointError naming the term and iteration, before the
  optimizer step;
* ``tools/train_net.py`` trains, evaluates (IoU table), writes metrics.json, TensorBoard events and debug panels,
  and ``--eval-only`` evaluates the student and the teacher of a checkpoint.

Two-process DDP (gloo) is in ``tests/test_dacs_trainer_ddp.py``.
"""
import gc
import glob
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng

from hrda_d2 import add_hrda_config
from hrda_d2.data.datasets import BUILTIN_SPLITS, register_builtin_split, register_cityscapes_root
from hrda_d2.data.datasets.preparation import prepare_cityscapes, prepare_gta
from hrda_d2.data.datasets.synthetic import generate_synthetic_datasets
from hrda_d2.engine.trainer import HRDATrainer
from tiny_configs import TINY_TRAIN_OPTS

REPO = Path(__file__).resolve().parents[1]
TRAIN_NET = str(REPO / "tools" / "train_net.py")
DEMO_CONFIG = str(REPO / "configs" / "demo_hrda.yaml")
NAME_PREFIX = "dacs_trainer_test"

SMALL_OPTS = TINY_TRAIN_OPTS  # configs/demo_hrda.yaml shrunk to the 64x128 generated images (tiny_configs.py)
# the paper's loss terms (§4.3, §7.2): fused-scale CE + HR-crop CE (HR_LOSS_WEIGHT 0.1; LR weight 0 -> no term)
SOURCE_TERMS = {"loss_src_sem_seg", "loss_src_sem_seg_hr"}
MIX_TERMS = {"loss_mix_sem_seg", "loss_mix_sem_seg_hr"}
FD_TERM = "loss_imnet_feat_dist"

# the straight reference run shared by the resume tests: REF_ITERS iterations, stopped at REF_ITERS // 2
REF_ITERS = 4
REF_OPTS = ["SOLVER.MAX_ITER", str(REF_ITERS), "UDA.FD.LAMBDA", "0.005", "UDA.DEBUG_IMG_INTERVAL", "2",
            "TEST.EVAL_PERIOD", "2", "SOLVER.CHECKPOINT_PERIOD", "2"]


# --------------------------------------------------------------------------------------------------- helpers
class _Stop(Exception):
    """Raised by :class:`StopAfter` to interrupt training like a crash."""


class StopAfter(HookBase):
    """Raise ``_Stop`` after ``num_iters`` iterations (after the other hooks, i.e. after the checkpoint)."""

    def __init__(self, num_iters: int):
        self.num_iters = num_iters

    def after_step(self):
        if self.trainer.iter + 1 == self.num_iters:
            raise _Stop()


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


# -------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Generated GTA-like / Cityscapes-like data (4 train, 2 val images, Cityscapes-like 64x128), prepared,
    and registered under test names (the builtin names are bound to $DETECTRON2_DATASETS at import)."""
    root = tmp_path_factory.mktemp("dacs_data")
    generated = generate_synthetic_datasets(str(root), num_train=4, num_val=2, height=64, width=128, seed=0)
    prepare_gta(generated.gta, nproc=1)
    prepare_cityscapes(generated.cityscapes, nproc=1)
    names = [f"{NAME_PREFIX}_gta_train", f"{NAME_PREFIX}_cityscapes_train", f"{NAME_PREFIX}_cityscapes_val"]
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    gta = next(split for split in BUILTIN_SPLITS if split.name == "gta_train")
    register_builtin_split(gta, str(root), name=names[0])
    register_cityscapes_root(generated.cityscapes, f"{NAME_PREFIX}_cityscapes")
    return root


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


@pytest.fixture(scope="module")
def uda_run(data_root, tmp_path_factory):
    """Three DACS iterations with the ImageNet feature distance on, recorded by :class:`RecordStep`."""
    out = tmp_path_factory.mktemp("uda_run")
    cfg = make_cfg(out, "SOLVER.MAX_ITER", "3", "UDA.FD.LAMBDA", "0.005", "UDA.DEBUG_IMG_INTERVAL", "0",
                   "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "SOLVER.CHECKPOINT_PERIOD", "100")
    trainer = build_trainer(cfg)
    trainer.resume_or_load(resume=False)
    imnet_before = clone_state(trainer.imnet_model)
    recorder = RecordStep()
    trainer.register_hooks([recorder])
    trainer.train()
    yield trainer, recorder, imnet_before, out
    release(trainer)


@pytest.fixture(scope="module")
def cli_run(data_root, tmp_path_factory):
    """``tools/train_net.py`` with the demo config and REF_OPTS, uninterrupted: ``(output dir, log text)``.

    Also the reference of the SIGKILL test: the builtin Cityscapes split of a subprocess lists its files in
    directory order, the test-registered one of :func:`reference_run` sorted, so their streams may differ."""
    out = tmp_path_factory.mktemp("cli_run")
    result = run_cli(cli_opts(out, *REF_OPTS), data_root)
    return out, result.stdout + result.stderr


@pytest.fixture(scope="module")
def reference_run(data_root, tmp_path_factory):
    """The uninterrupted run the resume tests compare against (REF_ITERS iterations, 0 workers)."""
    out = tmp_path_factory.mktemp("reference_run")
    trainer = train(make_cfg(out, *REF_OPTS))
    state = final_state(trainer)
    state["losses"] = loss_history(trainer)
    release(trainer)
    return state


# ---------------------------------------------------------------------------------------- 1. finite losses
def test_dacs_iterations_have_finite_losses(uda_run):
    trainer, _, _, out = uda_run
    history = loss_history(trainer)
    assert SOURCE_TERMS | MIX_TERMS | {FD_TERM, "total_loss"} <= set(history)
    assert not any("_lr" in name for name in history), "LR_LOSS_WEIGHT 0 must not add an LR loss term"
    for name, values in history.items():
        assert sorted(values) == [0, 1, 2], name
        assert all(math.isfinite(v) for v in values.values()), f"{name}: {values}"
    # a fresh 19-class model starts near ln(19) = 2.94 on the main term
    assert 1.0 < history["loss_src_sem_seg"][0] < 6.0
    for it in range(3):
        assert history["total_loss"][it] == pytest.approx(
            sum(history[k][it] for k in SOURCE_TERMS | MIX_TERMS | {FD_TERM}), rel=1e-5)
    # metrics.json: the writer's last record (iteration 2) with finite smoothed losses
    with open(out / "metrics.json") as f:
        records = [json.loads(line) for line in f if line.strip()]
    last = records[-1]
    assert last["iteration"] == 2
    for name in SOURCE_TERMS | MIX_TERMS | {FD_TERM, "total_loss"}:
        assert math.isfinite(last[name]), name
    assert 0.0 <= last["pseudo_confident_fraction"] <= 1.0


def test_source_only_runs_in_the_same_loop(data_root, tmp_path):
    cfg = make_cfg(tmp_path, "UDA.ENABLED", "False", "SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "0",
                   "DATASETS.TEST", "()", "SOLVER.CHECKPOINT_PERIOD", "100")
    trainer = train(cfg)
    assert trainer.teacher is None and trainer.imnet_model is None
    history = loss_history(trainer)
    assert set(history) == SOURCE_TERMS | {"total_loss"}
    for name, values in history.items():
        assert sorted(values) == [0, 1] and all(math.isfinite(v) for v in values.values()), name
    release(trainer)


def test_bfloat16_autocast_runs_the_dacs_step(data_root, tmp_path):
    """SOLVER.AMP (off in the paper configs): bf16 autocast on the CPU; losses finite, weights stay float32."""
    cfg = make_cfg(tmp_path, "SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "bfloat16", "SOLVER.MAX_ITER", "2",
                   "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "SOLVER.CHECKPOINT_PERIOD", "100")
    trainer = train(cfg)
    history = loss_history(trainer)
    assert SOURCE_TERMS | MIX_TERMS <= set(history)
    for name, values in history.items():
        assert all(math.isfinite(v) for v in values.values()), f"{name}: {values}"
    assert all(p.dtype == torch.float32 for p in trainer.student.parameters())
    release(trainer)


# ------------------------------------------------------------------------------------ 2. EMA and frozen models
def test_teacher_is_the_ema_of_the_student(uda_run):
    _, rec, _, _ = uda_run
    s0, s1, s2 = rec.student_before[0], rec.student_before[1], rec.student_before[2]
    t0, t1, t2 = rec.teacher_after[0], rec.teacher_after[1], rec.teacher_after[2]
    # the optimizer moved the student between the steps (else the checks below could not fail)
    assert differing_keys(s0, s1) and differing_keys(s1, s2)
    # iteration 0: the teacher becomes an exact copy of the student
    assert differing_keys(t0, s0) == []
    for name in s0:
        # iteration 1: alpha = min(1 - 1/2, 0.999) = 0.5; halves are exact, so the float32 result is the
        # correctly rounded float64 one
        expected1 = (0.5 * t0[name].double() + 0.5 * s1[name].double()).float()
        assert torch.equal(t1[name], expected1), name
        # iteration 2: alpha = 2/3 (float32 arithmetic: within a few ulp of the float64 value)
        expected2 = 2.0 / 3.0 * t1[name].double() + (1.0 / 3.0) * s2[name].double()
        torch.testing.assert_close(t2[name].double(), expected2, rtol=1e-6, atol=1e-9)
    assert differing_keys(t2, s2) and differing_keys(t2, t1)


def test_teacher_buffers_are_not_averaged(uda_run):
    """BN counters of the teacher count only its own pseudo-label calls (§7.2 step 6: main head on the LR batch
    and on the HR tiles, attention head once, per iteration); copying or averaging the student's buffers
    (4 main-head and 2 attention-head calls per iteration) would change them."""
    _, rec, _, _ = uda_run
    for it in range(3):
        counters = {k: int(v) for k, v in rec.teacher_buffers_after[it].items() if k.endswith("num_batches_tracked")}
        assert counters
        for name, count in counters.items():
            per_iteration = 1 if name.startswith("scale_attention.") else 2
            assert count == per_iteration * (it + 1), (name, it, count)


def test_teacher_and_imnet_model_are_frozen_and_outside_the_optimizer(uda_run):
    trainer, rec, imnet_before, _ = uda_run
    assert all(grads == [] for grads in rec.frozen_grads.values()), rec.frozen_grads
    for model in (trainer.teacher, trainer.imnet_model):
        assert model is not trainer.student
        assert not any(p.requires_grad for p in model.parameters())
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    student_params = {id(p) for p in trainer.student.parameters()}
    assert optimized == student_params
    assert not optimized & {id(p) for p in trainer.teacher.parameters()}
    assert not optimized & {id(p) for p in trainer.imnet_model.parameters()}
    # the ImageNet model is never updated (parameters and buffers: eval mode)
    assert differing_keys(clone_state(trainer.imnet_model), imnet_before) == []


# ------------------------------------------------------------------------------------------- 3. exact resume
@pytest.mark.parametrize("num_workers", [0, 1])
def test_resume_is_bit_exact(data_root, reference_run, tmp_path, num_workers):
    half = REF_ITERS // 2
    cfg = make_cfg(tmp_path, *REF_OPTS, "DATALOADER.NUM_WORKERS", str(num_workers))
    first = build_trainer(cfg)
    first.resume_or_load(resume=False)
    first.register_hooks([StopAfter(half)])
    with pytest.raises(_Stop):
        first.train()
    release(first)
    checkpoint = f"model_{half - 1:07d}.pth"
    assert (tmp_path / "last_checkpoint").read_text().strip() == checkpoint
    saved = torch.load(tmp_path / checkpoint, map_location="cpu", weights_only=False)
    assert {"model", "teacher", "imnet_model", "trainer", "iteration"} <= set(saved)
    assert saved["iteration"] == half - 1
    assert len(saved["trainer"]["_trainer"]["rng_states"]) == 1  # one rank
    # a fresh trainer whose RNGs start elsewhere: everything must come from the checkpoint
    second = build_trainer(cfg, seed=12345)
    second.resume_or_load(resume=True)
    assert second.start_iter == half
    second.train()
    state = final_state(second)
    losses = loss_history(second)
    release(second)
    assert_same_training_state(state, reference_run)
    for name, values in losses.items():
        assert values == {it: reference_run["losses"][name][it] for it in range(half, REF_ITERS)}, name


# -------------------------------------------------------------------------------------------- 4. SIGKILL
def _checkpoint_files(folder) -> List[str]:
    return sorted(glob.glob(os.path.join(folder, "model_*.pth")))


def _assert_checkpoints_complete(folder) -> None:
    """Every checkpoint loads completely; last_checkpoint names one of them."""
    for path in _checkpoint_files(folder):
        data = torch.load(path, map_location="cpu", weights_only=False)
        assert {"model", "teacher", "trainer", "iteration"} <= set(data), path
    tag = os.path.join(folder, "last_checkpoint")
    if os.path.exists(tag):
        with open(tag) as f:
            named = f.read().strip()
        assert os.path.join(folder, named) in _checkpoint_files(folder), named


def _start(args, data_root, log_path):
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, TRAIN_NET] + args, env=subprocess_env(data_root), cwd=str(REPO),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def _kill(proc) -> None:
    """SIGKILL the training process and its loader workers (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _wait_for(predicate, proc, timeout: float, poll: float = 0.002) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


def _partial_files(folder, pattern: str = "*") -> List[str]:
    return glob.glob(os.path.join(folder, f"{pattern}.tmp-*"))


def _writing_second_checkpoint(folder) -> bool:
    """A checkpoint is complete and tagged, and the data of a later one is being written."""
    return os.path.exists(os.path.join(folder, "last_checkpoint")) and bool(_partial_files(folder, "model_*.pth"))


@pytest.mark.parametrize("random_kills", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_sigkill_during_checkpoint_write_then_resume(data_root, cli_run, tmp_path, random_kills):
    """Kill -9 while a checkpoint is being written (then ``random_kills`` times at random moments of resumed
    runs); every checkpoint stays complete, ``--resume`` finishes the run and the result equals the
    uninterrupted run bit for bit (1 loader worker, checkpoint every iteration)."""
    out = tmp_path / "out"
    args = cli_opts(out, *REF_OPTS, "SOLVER.CHECKPOINT_PERIOD", "1", "DATALOADER.NUM_WORKERS", "1")
    rng = random.Random(0)

    proc, log = _start(args, data_root, tmp_path / "run0.log")
    try:
        caught = _wait_for(lambda: _writing_second_checkpoint(out), proc, timeout=300)
    finally:
        _kill(proc)
        log.close()
    assert caught, (tmp_path / "run0.log").read_text()[-3000:]
    assert _partial_files(out, "model_*.pth"), "not killed during a checkpoint write"
    _assert_checkpoints_complete(out)

    for run in range(1, random_kills + 1):
        log_path = tmp_path / f"run{run}.log"
        proc, log = _start(["--resume"] + args, data_root, log_path)
        try:
            resumed = _wait_for(lambda: "Starting training from iteration" in log_path.read_text(), proc,
                                timeout=300, poll=0.05)
            time.sleep(rng.uniform(0.0, 1.5))  # may also land after the last iteration (final save / evaluation)
        finally:
            _kill(proc)
            log.close()
        assert resumed, log_path.read_text()[-3000:]
        _assert_checkpoints_complete(out)

    result = run_cli(["--resume"] + args, data_root)
    _assert_checkpoints_complete(out)
    assert _partial_files(out) == [], "partial files of the killed runs were not removed on resume"
    assert re.search(r"Resumed from .*model_(\d{7}|final)\.pth at iteration [1-9]", result.stdout + result.stderr)
    got = checkpoint_state(out / "model_final.pth")
    assert got["iter"] == REF_ITERS
    assert_same_training_state(got, checkpoint_state(cli_run[0] / "model_final.pth"))


# -------------------------------------------------------------------------------------- 6. non-finite loss
@pytest.mark.parametrize("stream,term", [("source", "loss_src_sem_seg_hr"), ("mix", "loss_mix_sem_seg")])
def test_non_finite_loss_stops_before_the_optimizer_step(data_root, tmp_path, stream, term):
    bad_iteration = 1
    cfg = make_cfg(tmp_path, "SOLVER.MAX_ITER", "3", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()",
                   "SOLVER.CHECKPOINT_PERIOD", "100", "UDA.DEBUG_IMG_INTERVAL", "0")
    trainer = build_trainer(cfg)
    trainer.resume_or_load(resume=False)
    student = trainer.student
    original_forward = student.forward

    def forward_with_nan(*args, **kwargs):
        losses, outputs = original_forward(*args, **kwargs)
        is_mix = "weight" in kwargs
        if trainer.iter == bad_iteration and is_mix == (stream == "mix"):
            name = term.replace("loss_src_", "loss_").replace("loss_mix_", "loss_")
            losses[name] = losses[name] * float("nan")
        return losses, outputs

    student.forward = forward_with_nan
    recorder = RecordStep()
    trainer.register_hooks([recorder])
    with pytest.raises(FloatingPointError) as error:
        trainer.train()
    message = str(error.value)
    assert f"'{term}'" in message and f"iteration {bad_iteration}" in message, message
    assert trainer.iter == bad_iteration
    # no optimizer step in the bad iteration: the weights are those before it, AdamW counted 1 step
    assert differing_keys(clone_params(student), recorder.student_before[bad_iteration]) == []
    steps = {float(state["step"]) for state in trainer.optimizer.state.values()}
    assert steps == {float(bad_iteration)}
    release(trainer)


def test_absurd_learning_rate_stops_with_a_named_term(data_root, tmp_path):
    cfg = make_cfg(tmp_path, "SOLVER.MAX_ITER", "5", "SOLVER.BASE_LR", "1e30", "SOLVER.WARMUP_ITERS", "0",
                   "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "SOLVER.CHECKPOINT_PERIOD", "100",
                   "UDA.DEBUG_IMG_INTERVAL", "0")
    with pytest.raises(FloatingPointError, match=r"Loss term 'loss_\w+' is (nan|inf|-inf) at iteration [1-4]"):
        train(cfg)
    gc.collect()


# ------------------------------------------------------------------------------------- 7. tools/train_net.py
def test_train_net_trains_evaluates_and_writes_outputs(cli_run):
    out, text = cli_run
    assert "mIoU" in text and re.search(r"\|\s*road\s*\|", text), text[-3000:]
    assert "mIoU" in (out / "log.txt").read_text()
    with open(out / "metrics.json") as f:
        records = [json.loads(line) for line in f if line.strip()]
    training = [r for r in records if "total_loss" in r]
    assert training[-1]["iteration"] == REF_ITERS - 1 and math.isfinite(training[-1]["total_loss"])
    assert sum("sem_seg/mIoU" in r for r in records) == 2  # TEST.EVAL_PERIOD 2: after iterations 2 and 4
    assert glob.glob(str(out / "events.out.tfevents.*"))
    # debug panels every 2 iterations: iterations 0 and 2 (file names: iteration + 1, sample index)
    assert sorted(os.path.basename(p) for p in glob.glob(str(out / "debug" / "*.png"))) == [
        "000001_0.png", "000001_1.png", "000003_0.png", "000003_1.png"]
    assert sorted(os.path.basename(p) for p in _checkpoint_files(out)) == [
        "model_0000001.pth", "model_0000003.pth", "model_final.pth"]


def _copypaste_miou(text: str) -> float:
    """mIoU of the last ``copypaste: mIoU,...`` block of a Detectron2 log."""
    return float(re.findall(r"copypaste: ([\d.]+),", text)[-1])


def test_eval_only_student_and_teacher(data_root, cli_run, tmp_path):
    out, text = cli_run
    weights = str(out / "model_final.pth")
    student = run_cli(["--eval-only"] + cli_opts(tmp_path / "student", "MODEL.WEIGHTS", weights), data_root)
    # --eval-only evaluates the student by default: the training run's final evaluation exactly
    assert _copypaste_miou(student.stdout + student.stderr) == _copypaste_miou(text)
    teacher = run_cli(["--eval-only"] + cli_opts(tmp_path / "teacher", "MODEL.WEIGHTS", weights,
                                                 "TEST.WEIGHTS_SOURCE", "teacher"), data_root)
    teacher_text = teacher.stdout + teacher.stderr
    assert "| road" in teacher_text and math.isfinite(_copypaste_miou(teacher_text))
    assert "not found in the checkpoint" not in teacher_text and "not used in the model" not in teacher_text


# ------------------------------------------------------------------------------------- 5. two-process DDP
DDP_DRIVER = """
import os
import sys

import torch
from detectron2.engine import default_argument_parser, launch
from detectron2.utils import comm

sys.path.insert(0, {tools!r})
import train_net  # noqa: E402
from hrda_d2.engine.trainer import HRDATrainer  # noqa: E402


def main(args):
    cfg = train_net.setup(args)
    assert comm.get_world_size() == 2 and torch.distributed.get_backend() == "gloo"
    trainer = HRDATrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    stop_after = int(os.environ.get("HRDA_TEST_STOP_AFTER", "0"))
    if stop_after:
        trainer.max_iter = stop_after  # stop early; the schedule and checkpoints keep SOLVER.MAX_ITER
    trainer.train()
    torch.save({{"rank": comm.get_rank(), "student": trainer.student.state_dict(),
                "teacher": trainer.teacher.state_dict(), "imnet_model": trainer.imnet_model.state_dict(),
                "optimizer": trainer.optimizer.state_dict(), "iter": trainer.iter}},
               os.path.join(cfg.OUTPUT_DIR, "rank{{}}.pth".format(comm.get_rank())))


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
"""
DDP_ITERS = 4
DDP_OPTS = ["SOLVER.MAX_ITER", str(DDP_ITERS), "SOLVER.CHECKPOINT_PERIOD", "2", "UDA.FD.LAMBDA", "0.005",
            "UDA.DEBUG_IMG_INTERVAL", "0", "TEST.EVAL_PERIOD", "0", "SOLVER.IMS_PER_BATCH", "2"]


def run_ddp(driver, output_dir, data_root, *extra, stop_after=0):
    env = dict(subprocess_env(data_root), OMP_NUM_THREADS="1", HRDA_TEST_STOP_AFTER=str(stop_after))
    args = [sys.executable, str(driver), "--num-gpus", "2", "--dist-url", "auto"] + list(extra) + cli_opts(
        output_dir, *DDP_OPTS)
    # own process group: a hang (a collective that one rank never reaches) is killed with all its ranks
    proc = subprocess.Popen(args, env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"DDP run hung:\n{stdout[-4000:]}\n{stderr[-8000:]}")
    assert proc.returncode == 0, f"DDP run failed:\n{stdout[-4000:]}\n{stderr[-8000:]}"
    return [torch.load(output_dir / f"rank{r}.pth", map_location="cpu", weights_only=False) for r in (0, 1)]


@pytest.fixture(scope="module")
def ddp_run(data_root, tmp_path_factory):
    """Two CPU processes (gloo) through Detectron2's ``launch``, 1 source + 1 target image per rank."""
    folder = tmp_path_factory.mktemp("ddp")
    driver = folder / "ddp_driver.py"
    driver.write_text(DDP_DRIVER.format(tools=str(REPO / "tools")))
    out = folder / "straight"
    return driver, out, run_ddp(driver, out, data_root)


def _is_bn_statistic(name: str) -> bool:
    return name.endswith(("running_mean", "running_var"))


def test_ddp_ranks_hold_identical_weights(ddp_run):
    _, out, (rank0, rank1) = ddp_run
    assert (rank0["rank"], rank1["rank"]) == (0, 1) and rank0["iter"] == rank1["iter"] == DDP_ITERS
    for part in ("student", "teacher"):
        differing = differing_keys(rank0[part], rank1[part])
        # parameters are identical (all-reduced gradients, same AdamW step, same EMA); only the BatchNorm
        # running statistics differ: each rank normalises its own images (no SyncBN, buffers not broadcast,
        # as in the original's MMDistributedDataParallel(broadcast_buffers=False)); that they differ at all
        # shows that the ranks were given different samples
        assert differing and all(_is_bn_statistic(k) for k in differing), (part, differing)
    # the frozen ImageNet model is rank 0's on every rank (random init here: ranks seed differently)
    assert differing_keys(rank0["imnet_model"], rank1["imnet_model"]) == []
    assert differing_keys(optimizer_tensors(rank0["optimizer"]), optimizer_tensors(rank1["optimizer"])) == []
    # only rank 0 writes checkpoints; they hold every rank's RNG streams
    checkpoint = torch.load(out / "model_0000001.pth", map_location="cpu", weights_only=False)
    rng_states = checkpoint["trainer"]["_trainer"]["rng_states"]
    assert len(rng_states) == 2
    assert not torch.equal(rng_states[0]["torch"], rng_states[1]["torch"])
    assert differing_keys(checkpoint_state(out / "model_final.pth")["student"], rank0["student"]) == []


@pytest.mark.slow
def test_ddp_resume_is_bit_exact_on_every_rank(data_root, ddp_run):
    driver, straight_out, straight = ddp_run
    out = straight_out.parent / "resumed"
    run_ddp(driver, out, data_root, stop_after=DDP_ITERS // 2)
    resumed = run_ddp(driver, out, data_root, "--resume")
    for rank in (0, 1):
        for part in ("student", "teacher", "imnet_model"):
            differing = differing_keys(resumed[rank][part], straight[rank][part])
            # checkpoints hold rank 0's models (as Detectron2's and the original's): after a resume the other
            # ranks' BatchNorm running statistics start from rank 0's. They never enter training (train-mode BN
            # normalises with batch statistics), so everything else stays bit-exact on every rank.
            if rank == 0:
                assert differing == [], (rank, part)
            else:
                assert all(_is_bn_statistic(k) for k in differing), (rank, part, differing)
        assert differing_keys(optimizer_tensors(resumed[rank]["optimizer"]),
                              optimizer_tensors(straight[rank]["optimizer"])) == [], rank
