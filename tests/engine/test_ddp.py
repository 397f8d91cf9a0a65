"""Two-process DDP (gloo, CPU) through Detectron2's ``launch``: identical weights on both ranks, exact resume on
every rank.
"""
import os
import signal
import subprocess
import sys

import pytest
import torch

from tests.helpers.training import REPO, checkpoint_state, cli_opts, differing_keys, optimizer_tensors, subprocess_env

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
