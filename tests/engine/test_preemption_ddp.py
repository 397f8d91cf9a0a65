"""Under DDP every rank stops after the same iteration, also when only one rank receives the signal
(issue 14, item 3): two gloo processes run :class:`PreemptionHook` over a stand-in trainer; rank 1 alone gets
SIGUSR1 before iteration 2, rank 0 never does."""
import json
import os
import signal
import socket

import torch.multiprocessing as mp

SIGNAL_AT = 2


class _Checkpointer:
    def __init__(self):
        self.saved = []

    def save(self, name, **kwargs):
        self.saved.append((name, kwargs["iteration"]))


class _Trainer:
    def __init__(self):
        self.iter, self.max_iter = 0, 10
        self.checkpointer = _Checkpointer()


def _rank(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from detectron2.utils import comm

    from hrda_d2.engine.preemption import PreemptionHook, TrainingInterrupted

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    comm.create_local_process_group(2)
    trainer = _Trainer()
    hook = PreemptionHook([signal.SIGTERM, signal.SIGUSR1], checkpoint_period=100, output_dir="/run")
    hook.trainer = trainer
    hook.before_train()
    result = {"stopped_at": None}
    try:
        for trainer.iter in range(trainer.max_iter):
            if rank == 1 and trainer.iter == SIGNAL_AT:
                os.kill(os.getpid(), signal.SIGUSR1)
            hook.after_step()
    except TrainingInterrupted as e:
        result = {"stopped_at": trainer.iter, "code": e.code, "message": str(e), "saved": trainer.checkpointer.saved}
    finally:
        hook.after_train()
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_all_ranks_stop_after_the_same_iteration(tmp_path):
    # fork: the ranks start from this process's imports (spawn would import torch and hrda_d2 twice, ~10 s)
    mp.start_processes(_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for result in results:
        assert result["stopped_at"] == SIGNAL_AT, results
        assert result["code"] == 128 + signal.SIGUSR1
        assert result["saved"] == [[f"model_{SIGNAL_AT:07d}", SIGNAL_AT]], "every rank joins the (collective) save"
        assert result["message"].startswith(f"Training interrupted by SIGUSR1 after iteration {SIGNAL_AT} (of 10)")
