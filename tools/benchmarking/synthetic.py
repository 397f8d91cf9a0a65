"""Synthetic batches and the project's trainer on them (no dataset needed).

Images are uniform noise in 0..255, labels 64-pixel blocks of all classes (so that ClassMix and the feature
distance have classes to use), target dicts carry an all-ones pseudo-label margin mask.
"""
import itertools
from typing import Any, Dict, List

import torch
from detectron2.utils import comm

from hrda_d2.engine import HRDATrainer

__all__ = ["SyntheticTrainer", "synthetic_batch", "synthetic_trainer"]


def synthetic_batch(cfg, which: str, generator: torch.Generator) -> List[Dict[str, Any]]:
    """Mapper-like dicts of one side (``which``: ``"source"`` or ``"target"``) at its crop size: this rank's
    share of ``SOLVER.IMS_PER_BATCH`` (the global batch, at least one image per rank); ``image``
    ``3 x H x W`` float in 0..255, ``sem_seg`` ``H x W`` int64, target: ``valid_pseudo_mask`` ``H x W`` uint8."""
    h, w = (cfg.INPUT.SOURCE if which == "source" else cfg.INPUT.TARGET).CROP_SIZE
    out = []
    for _ in range(max(1, cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size())):
        yy, xx = torch.meshgrid(torch.arange(h) // 64, torch.arange(w) // 64, indexing="ij")
        d = {"image": torch.rand(3, h, w, generator=generator) * 255,
             "sem_seg": ((yy + 3 * xx) % cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES).long()}
        if which == "target":
            d["valid_pseudo_mask"] = torch.ones(h, w, dtype=torch.uint8)
        out.append(d)
    return out


class SyntheticTrainer(HRDATrainer):
    """``HRDATrainer`` without hooks (no evaluation, no periodic checkpoints) on two synthetic (source, target)
    pairs: iteration ``i`` gets pair ``i % 2``, also after a resume."""

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0):
        g = torch.Generator().manual_seed(0)
        pairs = [(synthetic_batch(cfg, "source", g), synthetic_batch(cfg, "target", g)) for _ in range(2)]
        return itertools.islice(itertools.cycle(pairs), start_iter % 2, None)

    def build_hooks(self):
        return []


def synthetic_trainer(cfg) -> SyntheticTrainer:
    """The project's trainer for ``cfg`` on synthetic data (see :class:`SyntheticTrainer`)."""
    return SyntheticTrainer(cfg)
