"""Gradient synchronisation under DDP, counted: backward passes, sync rounds and bucket all-reduces per iteration.

The ``ddp`` phase launches 2 ranks through Detectron2's ``launch`` (CPU: gloo, the GPUs hidden; CUDA: NCCL, skipped
with fewer than 2 GPUs) and runs the project's trainer on synthetic data (:mod:`.synthetic`) in each. The counters
use only public PyTorch hooks, so they count any version of the step:

* :class:`AllReduceCounter`: a DDP communication hook (``register_comm_hook``) that counts the buckets it is given
  and the rounds (a round ends with the bucket that ``is_last()``), then passes each bucket on to PyTorch's
  default all-reduce hook (the same division by the world size and sum as DDP without a hook);
* :class:`BackwardCounter`: a post-accumulate-grad hook on the first trainable parameter (the stem, which every
  forward/backward of the iteration reaches) counts backward passes.

With one all-reduce per iteration (docs/method.md §7.2, the frame: the gradients of all passes add up before
the one optimizer step) a DACS iteration reports 2 backward passes (3 with MIC) and 1 sync round; every
backward synchronised would report as many rounds as passes.
"""
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import torch
from detectron2.engine import launch
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from .settings import BenchmarkSettings
from .synthetic import synthetic_trainer
from .timing import synchronize
from .variants import build_cfg

__all__ = ["AllReduceCounter", "BackwardCounter", "DDP_WORLD_SIZE", "phase_ddp"]

DDP_WORLD_SIZE = 2


class AllReduceCounter:
    """DDP communication hook: counts bucket all-reduces and sync rounds, then all-reduces as PyTorch's default."""

    def __init__(self) -> None:
        self.bucket_allreduces = 0
        self.sync_rounds = 0

    def attach(self, ddp_model: nn.Module) -> "AllReduceCounter":
        ddp_model.register_comm_hook(state=None, hook=self.count_and_allreduce)
        return self

    def reset(self) -> None:
        self.bucket_allreduces = self.sync_rounds = 0

    def count_and_allreduce(self, state, bucket):
        self.bucket_allreduces += 1
        if bucket.is_last():
            self.sync_rounds += 1
        return default_hooks.allreduce_hook(state, bucket)


class BackwardCounter:
    """Counts the backward passes that reach ``module``'s first trainable parameter."""

    def __init__(self, module: nn.Module) -> None:
        self.backward_passes = 0
        first = next(p for p in module.parameters() if p.requires_grad)
        first.register_post_accumulate_grad_hook(self._count)

    def _count(self, _param) -> None:
        self.backward_passes += 1

    def reset(self) -> None:
        self.backward_passes = 0


def _summary(per_iteration: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The measured iterations' counts (one number when every iteration agrees) and the median time."""
    out: Dict[str, Any] = {"iterations": per_iteration,
                           "s_per_iter": statistics.median(r["seconds"] for r in per_iteration)}
    for key in ("backward_passes", "sync_rounds", "bucket_allreduces"):
        values = sorted({r[key] for r in per_iteration})
        out[key] = values[0] if len(values) == 1 else values
    return out


def _rank_main(settings_json: str, variant: str, out_path: str) -> None:
    """One rank: the variant's trainer on synthetic data, counted per iteration; rank 0 writes the result."""
    settings = BenchmarkSettings.from_json(settings_json)
    threads = settings.threads or max(1, (os.cpu_count() or 1) // comm.get_world_size())
    if not settings.device.startswith("cuda"):
        torch.set_num_threads(threads)
    cfg = build_cfg(settings.config_file, settings.tiny, variant, settings.opts, settings.device)
    seed_all_rng(cfg.SEED + comm.get_rank())
    trainer = synthetic_trainer(cfg)
    step = trainer.uda_step
    device = step.student.device
    allreduces = AllReduceCounter().attach(step.model)
    backwards = BackwardCounter(step.student)
    per_iteration = []
    with EventStorage(0) as storage:
        for it in range(settings.warmup + settings.iters):
            step.iter = storage.iter = it
            allreduces.reset()
            backwards.reset()
            synchronize(device)
            start = time.perf_counter()
            step.run_step()
            synchronize(device)
            if it >= settings.warmup:
                per_iteration.append({"seconds": time.perf_counter() - start,
                                      "backward_passes": backwards.backward_passes,
                                      "sync_rounds": allreduces.sync_rounds,
                                      "bucket_allreduces": allreduces.bucket_allreduces})
    if comm.is_main_process():
        result = _summary(per_iteration)
        result.update(world_size=comm.get_world_size(), backend=str(torch.distributed.get_backend()),
                      threads_per_rank=torch.get_num_threads())
        Path(out_path).write_text(json.dumps(result))
    comm.synchronize()


def phase_ddp(settings: BenchmarkSettings, variant: str) -> Dict[str, Any]:
    """``DDP_WORLD_SIZE`` ranks of the variant's training iterations (see the module docstring)."""
    if settings.device.startswith("cuda"):
        found = torch.cuda.device_count()
        if found < DDP_WORLD_SIZE:
            return {"skipped": f"the ddp phase needs {DDP_WORLD_SIZE} GPUs for NCCL, found {found}"}
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # Detectron2's launch takes NCCL as soon as it sees a GPU
    with tempfile.TemporaryDirectory(prefix="hrda_bench_ddp_") as tmp:
        out = Path(tmp) / "ddp.json"
        launch(_rank_main, DDP_WORLD_SIZE, dist_url="auto", args=(settings.to_json(), variant, str(out)))
        return json.loads(out.read_text())
