"""Inputs and listeners for tests that drive a UDA step directly (no data loader, no trainer)."""
import torch


def synthetic_pairs(generator: torch.Generator, batch_size: int = 1, size: int = 128):
    """The same (source, target) pair of ``batch_size`` mapper dicts of ``size x size`` forever: random images,
    source labels in 32-px class blocks."""
    labels = (torch.arange(size)[:, None] // 32 + 3 * (torch.arange(size)[None] // 32)) % 19
    source = [{"image": torch.rand(3, size, size, generator=generator) * 255, "sem_seg": labels.long()}
              for _ in range(batch_size)]
    target = [{"image": torch.rand(3, size, size, generator=generator) * 255} for _ in range(batch_size)]
    while True:
        yield source, target


class RecordStages:
    """A stage listener that records ``("started" | "finished", name)`` events in order."""

    def __init__(self):
        self.events = []

    def stage_started(self, name):
        self.events.append(("started", name))

    def stage_finished(self, name):
        self.events.append(("finished", name))

    @property
    def started(self):
        return [name for event, name in self.events if event == "started"]
