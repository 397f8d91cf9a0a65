"""Figures of the collected results (matplotlib, Agg backend; docs/experiments.md §8).

* :func:`curve_figure`: a paper item's curve (HRDA Fig. 4: mIoU over the relative crop size, one line per series;
  Fig. S1: mIoU over the detail loss weight): mean over the seeds found, error bars of the sample std, every seed
  as a dot; points without a finished seed are left out (the tables list them).
* :func:`seed_spread_figure`: every row of an experiment, each seed as a dot, the mean as a bar.
"""
import os
from collections import OrderedDict
from typing import Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402

from .results import ConfigSummary  # noqa: E402
from .spec import PaperItem  # noqa: E402

__all__ = ["curve_figure", "seed_spread_figure"]


def _save(figure, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def curve_figure(item: PaperItem, summaries: Sequence[ConfigSummary], path: str) -> str:
    """Write the curve of ``item`` (rows with an ``x``) to ``path``."""
    series: Dict[str, List[ConfigSummary]] = OrderedDict()
    for s in summaries:
        if s.x is not None:
            series.setdefault(s.series or item.title, []).append(s)
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, points in series.items():
        points = sorted((p for p in points if p.finished), key=lambda p: p.x)
        if not points:
            continue
        metric = points[0].config.metric
        means = [p.stat(metric)[0] for p in points]
        stds = [p.stat(metric)[1] or 0.0 for p in points]
        line = axes.errorbar([p.x for p in points], means, yerr=stds, marker="o", capsize=3, label=name)
        for p in points:
            axes.scatter([p.x] * len(p.finished), p.values(metric), s=10, alpha=0.5, color=line[0].get_color())
    axes.set_xlabel(item.x_label or "x")
    axes.set_ylabel("mIoU (%)")
    axes.set_title(item.title, fontsize=8, wrap=True)
    axes.grid(alpha=0.3)
    if series:
        axes.legend(fontsize=7)
    return _save(figure, path)


def seed_spread_figure(title: str, summaries: Sequence[ConfigSummary], path: str) -> str:
    """Write the per-seed values of every row to ``path`` (rows without a finished seed: empty)."""
    figure, axes = plt.subplots(figsize=(max(6, 0.45 * len(summaries) + 2), 4.5))
    for i, s in enumerate(summaries):
        values = s.values(s.config.metric)
        mean = s.stat(s.config.metric)[0]
        if mean is not None:
            axes.bar(i, mean, color="#c6dbef", width=0.6)
        axes.scatter([i] * len(values), values, color="#08519c", s=14, zorder=3)
    axes.set_xticks(range(len(summaries)))
    axes.set_xticklabels([s.label for s in summaries], rotation=60, ha="right", fontsize=6)
    axes.set_ylabel("metric of the row (mIoU / mIoU16, %)")
    axes.set_title(f"{title}: seeds (dots) and their mean (bars)", fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)
