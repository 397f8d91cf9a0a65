"""Pre-emption, resume edge cases, ImageNet-weights tolerance and bounded checkpoints of ``HRDATrainer``
(issue 14, items 1, 3, 6, 8), in-process on the generated replicas with the tiny HRDA of tests/helpers/training.py.

The pre-emption test sends a real SIGTERM to this process and to its data-loader worker (as a cluster signals
every process of a job) at an iteration between two periodic checkpoints; the run must stop after that
iteration with exit status 143 and a checkpoint, and ``--resume`` must end with the student and teacher of an
uninterrupted run, bit for bit.
"""
import multiprocessing
import os
import random
import signal

import pytest
import torch
from detectron2.engine import HookBase

from hrda_d2.engine.preemption import PreemptionHook, TrainingInterrupted
from tests.helpers.run_helpers import captured_log
from tests.helpers.training import build_trainer
from tests.helpers.training import make_cfg as make_training_cfg

MAX_ITER, PERIOD = 6, 3  # periodic checkpoints after iterations 2 and 5 (+ model_final)
RUN_OPTS = ["SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.CHECKPOINT_PERIOD", str(PERIOD), "TEST.EVAL_PERIOD", "0",
            "DATASETS.TEST", "()", "UDA.DEBUG_IMG_INTERVAL", "0", "UDA.FD.LAMBDA", "0.005"]


def make_cfg(output_dir, *opts):
    """The shared tiny training config (tests/helpers/training.py) with this module's run settings."""
    return make_training_cfg(output_dir, *RUN_OPTS, *opts)


def weights(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """The uninterrupted run (1 loader worker): (output dir, final student, final teacher)."""
    out = tmp_path_factory.mktemp("reference")
    trainer = build_trainer(make_cfg(out, "DATALOADER.NUM_WORKERS", "1"))
    trainer.resume_or_load(resume=False)
    trainer.train()
    return out, weights(trainer.student), weights(trainer.teacher)


class SignalAt(HookBase):
    """Before iteration ``at``: SIGTERM to this process and to its loader workers (a cluster's pre-emption)."""

    def __init__(self, at: int):
        self.at = at

    def before_step(self):
        if self.trainer.iter == self.at:
            for child in multiprocessing.active_children():
                os.kill(child.pid, signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow  # a bit-exact resume; the default suite's is tests/engine/test_resume.py::test_resume_is_bit_exact[1]
def test_sigterm_checkpoints_and_resume_is_bit_exact(data_root, reference, tmp_path):
    ref_dir, ref_student, ref_teacher = reference
    at = random.randint(PERIOD, MAX_ITER - 2)  # strictly between the checkpoints after iterations 2 and 5
    cfg = make_cfg(tmp_path, "DATALOADER.NUM_WORKERS", "1")
    handler_before = signal.getsignal(signal.SIGTERM)
    first = build_trainer(cfg)
    first.resume_or_load(resume=False)
    first.register_hooks([SignalAt(at)])
    with pytest.raises(TrainingInterrupted) as stop:
        first.train()
    code, message, stopped_at = stop.value.code, str(stop.value), first.iter
    # drop the trainer (and its loader workers) now: the traceback would keep it alive until a garbage
    # collection, whose finalizer order makes torch wait 5 s for each worker
    del stop, first
    checkpoint = tmp_path / f"model_{at:07d}.pth"
    assert code == 128 + signal.SIGTERM, "exit status 143"
    assert message == (f"Training interrupted by SIGTERM after iteration {at} (of {MAX_ITER}); checkpoint "
                       f"written to {checkpoint}. Continue with the same command and --resume.")
    assert stopped_at == at
    assert (tmp_path / "last_checkpoint").read_text() == checkpoint.name
    assert torch.load(checkpoint, map_location="cpu", weights_only=False)["iteration"] == at
    assert signal.getsignal(signal.SIGTERM) is handler_before, "the previous handler is restored"

    second = build_trainer(cfg, seed=4321)  # everything must come from the checkpoint
    second.resume_or_load(resume=True)
    assert second.start_iter == at + 1
    second.train()
    for name, got, expected in (("student", second.student, ref_student), ("teacher", second.teacher, ref_teacher)):
        state = got.state_dict()
        assert [k for k in expected if not torch.equal(state[k], expected[k])] == [], f"{name} differs (SIGTERM at {at})"


def test_unknown_signal_name_is_a_config_error(tmp_path):
    cfg = make_cfg(tmp_path, "SOLVER.PREEMPTION_SIGNALS", "['SIGTERM', 'SIGTERMINATE']")
    with pytest.raises(ValueError, match="SOLVER.PREEMPTION_SIGNALS: 'SIGTERMINATE' is not a signal"):
        PreemptionHook.from_config(cfg)


def test_resume_of_a_finished_run_says_so(data_root, reference):
    ref_dir = reference[0]
    with captured_log("hrda_d2.engine.trainer") as messages:
        trainer = build_trainer(make_cfg(ref_dir))
        trainer.resume_or_load(resume=True)
    assert trainer.start_iter == MAX_ITER
    assert any(f"model_final.pth is at iteration {MAX_ITER} >= SOLVER.MAX_ITER {MAX_ITER}: this run is complete"
               in m for m in messages), messages


def test_resume_without_checkpoint_says_so_and_starts_at_zero(data_root, tmp_path):
    with captured_log("hrda_d2.engine.trainer") as messages:
        trainer = build_trainer(make_cfg(tmp_path))
        trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 0
    assert any(f"--resume: no checkpoint in OUTPUT_DIR {tmp_path} (no last_checkpoint file): starting from "
               f"iteration 0" in m for m in messages), messages


def test_imagenet_weights_are_tolerated_and_reported_once(data_root, tmp_path):
    """MODEL.WEIGHTS with backbone weights only (student and ImageNet model load it): the head's keys are
    reported once, not an error."""
    source = build_trainer(make_cfg(tmp_path / "source"))
    path = tmp_path / "imagenet.pth"
    torch.save({"model": {k: v for k, v in source.student.state_dict().items() if k.startswith("backbone.")}}, path)
    with captured_log("fvcore.common.checkpoint") as messages:
        trainer = build_trainer(make_cfg(tmp_path / "run", "MODEL.WEIGHTS", str(path)))
        trainer.resume_or_load(resume=False)
    reports = [m for m in messages if "not found in the checkpoint" in m]
    assert len(reports) == 1 and "sem_seg_head" in reports[0], messages
    assert torch.equal(trainer.imnet_model.state_dict()["backbone.patch_embed1.proj.weight"],
                       source.student.state_dict()["backbone.patch_embed1.proj.weight"])


def test_checkpoint_max_keep_bounds_the_periodic_files(data_root, tmp_path):
    cfg = make_cfg(tmp_path, "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.CHECKPOINT_MAX_KEEP", "1",
                   "UDA.FD.LAMBDA", "0.0")
    trainer = build_trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["model_0000002.pth", "model_final.pth"]


def test_checkpoint_period_zero_writes_only_the_final_and_the_preemption_checkpoints(data_root, tmp_path):
    """SOLVER.CHECKPOINT_PERIOD 0 (no periodic checkpoints): model_final after the last iteration; a pre-emption
    signal still writes the checkpoint of its iteration."""
    opts = ["SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "0", "UDA.FD.LAMBDA", "0.0"]
    trainer = build_trainer(make_cfg(tmp_path / "full", *opts))
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert sorted(p.name for p in (tmp_path / "full").glob("*.pth")) == ["model_final.pth"]

    stopped = build_trainer(make_cfg(tmp_path / "stopped", *opts))
    stopped.resume_or_load(resume=False)
    stopped.register_hooks([SignalAt(1)])
    with pytest.raises(TrainingInterrupted) as stop:
        stopped.train()
    assert stop.value.code == 128 + signal.SIGTERM
    assert sorted(p.name for p in (tmp_path / "stopped").glob("*.pth")) == ["model_0000001.pth"]
