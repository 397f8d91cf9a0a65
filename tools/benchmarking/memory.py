"""The memory meter of a benchmark process: current and peak memory in MB.

CUDA: memory allocated by torch on the device (``torch.cuda.memory_allocated`` / ``max_memory_allocated``, the
peak can be reset); CPU: the resident set size of this process (``/proc/self/statm``; the peak is the process's
``ru_maxrss``, which cannot be reset, so each measurement that needs its own peak runs in a fresh process).
"""
import os
import resource

import torch

__all__ = ["MemoryMeter", "current_rss_mb", "peak_rss_mb"]


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


class MemoryMeter:
    """Peak memory of this process on ``device`` (CUDA: allocated by torch on the device; CPU: resident set size)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def current_mb(self) -> float:
        return torch.cuda.memory_allocated(self.device) / 2**20 if self.cuda else current_rss_mb()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mb(self) -> float:
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda else peak_rss_mb()
