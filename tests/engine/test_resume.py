"""Exact resume and crash safety of the training workflow.

* exact resume: N iterations straight == N/2, stop, resume in a fresh trainer, N/2 more (student, teacher,
  ImageNet model, optimizer, scheduler, losses: bit-identical on CPU), with 0 and 1 loader workers;
* SIGKILL during a checkpoint write and at a random time: every ``*.pth`` loads, ``last_checkpoint`` names a
  complete file, partial files are never used (and are removed on resume), ``--resume`` finishes the run and
  the result equals the uninterrupted run bit for bit.
"""
import glob
import os
import random
import re
import signal
import subprocess
import sys
import time
from typing import List

import pytest
import torch
from tests.helpers.training import (
    checkpoint_files,
    REF_ITERS,
    REF_OPTS,
    REPO,
    StopAfter,
    TRAIN_NET,
    StopTraining,
    assert_same_training_state,
    build_trainer,
    checkpoint_state,
    cli_opts,
    final_state,
    loss_history,
    make_cfg,
    release,
    run_cli,
    subprocess_env,
)


# ------------------------------------------------------------------------------------------- 3. exact resume
# the default suite's one bit-exact resume test (1 loader worker: the most complete); the other resume tests
# (0 workers, SIGKILL, SIGTERM pre-emption, MIC) are slow
@pytest.mark.parametrize("num_workers", [pytest.param(0, marks=pytest.mark.slow), 1])
def test_resume_is_bit_exact(data_root, reference_run, tmp_path, num_workers):
    half = REF_ITERS // 2
    cfg = make_cfg(tmp_path, *REF_OPTS, "DATALOADER.NUM_WORKERS", str(num_workers))
    first = build_trainer(cfg)
    first.resume_or_load(resume=False)
    first.register_hooks([StopAfter(half)])
    with pytest.raises(StopTraining):
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


def _assert_checkpoints_complete(folder) -> None:
    """Every checkpoint loads completely; last_checkpoint names one of them."""
    for path in checkpoint_files(folder):
        data = torch.load(path, map_location="cpu", weights_only=False)
        assert {"model", "teacher", "trainer", "iteration"} <= set(data), path
    tag = os.path.join(folder, "last_checkpoint")
    if os.path.exists(tag):
        with open(tag) as f:
            named = f.read().strip()
        assert os.path.join(folder, named) in checkpoint_files(folder), named


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


@pytest.mark.slow  # resumes bit-exactly as test_resume_is_bit_exact[1] does in the default suite
@pytest.mark.parametrize("random_kills", [0, 2])
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
