"""Device synchronisation and the stage timer of the training benchmark.

:class:`StageTimer` is a stage listener of the UDA step (:class:`hrda_d2.uda.StageListener`): it synchronises the
device at every stage boundary and records each stage's wall time, so the step needs no patching to be timed.
The step's stage names (docs/method.md §7.2) are reported under the benchmark's column names (:data:`STAGE_LABELS`).
"""
import time
from typing import Dict, List

import torch

__all__ = ["STAGE_LABELS", "StageTimer", "synchronize"]

# the step's stage name -> the benchmark's column (the "train" phase's stages_s keys)
STAGE_LABELS = {"ema": "ema", "source": "source_fwd_bwd", "pseudo_labels": "pseudo_labels", "mix": "mix_augment",
                "mixed": "mixed_fwd_bwd", "masked": "masked_fwd_bwd", "optimizer": "optimizer"}


def synchronize(device: torch.device) -> None:
    """Wait for the queued work of ``device`` (CUDA); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageTimer:
    """Stage listener: ``seconds[label]`` = the wall times of that stage, one entry per step, the device
    synchronised at the start and the end of each stage."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: Dict[str, List[float]] = {}
        self._started: Dict[str, float] = {}

    def stage_started(self, name: str) -> None:
        synchronize(self.device)
        self._started[name] = time.perf_counter()

    def stage_finished(self, name: str) -> None:
        synchronize(self.device)
        elapsed = time.perf_counter() - self._started.pop(name)
        self.seconds.setdefault(STAGE_LABELS.get(name, name), []).append(elapsed)

    def clear(self) -> None:
        self.seconds.clear()
