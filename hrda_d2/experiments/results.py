"""``--collect``: every run's final evaluation -> one table per paper item, CSV, curves, seed spread
(docs/experiments.md §8).

Only finished runs (:func:`~.launch.run_status`) are averaged. The spread is the **sample** standard deviation over
the seeds found (``statistics.stdev``, divisor n - 1); with a single seed it is undefined. Every run that is not
finished stays in :attr:`ConfigSummary.missing` with its state, so a table never averages it away silently.

Per experiment, under ``<results dir>/<exp>/``: ``results.md`` (every paper item: the main table (row, run, seeds
found, metric mean ± sample std, the paper's value), the per-class IoU table, the missing or unfinished runs),
``<item>.csv`` (one line per row, the numbers in separate columns), ``<item>.png`` for items with a curve (HRDA
Fig. 4: mIoU over the relative crop size; Fig. S1: over the detail loss weight; mean, sample-std error bars, every
seed as a dot) and ``seed_spread.png`` (every row, each seed a dot, the mean a bar). Rows a paper item shares with
another experiment (e.g. HRDA Table 7 row 6 = the final HRDA of exp 40) are read from that experiment's runs.
"""
import csv
import io
import logging
import math
import os
import statistics
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402

from ..data.datasets.cityscapes_classes import CITYSCAPES_CLASSES  # noqa: E402
from .catalog import experiment, find_config  # noqa: E402
from .configs import GeneratedRun, load_run_config  # noqa: E402
from .launch import RunState, RunStatus, final_evaluation, run_status  # noqa: E402
from .runs import PaperItem, Run, RunConfig  # noqa: E402

__all__ = ["CollectReport", "ConfigSummary", "RunResult", "collect_experiment", "mean_and_std"]

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    """One run: where it writes, its state, the final evaluation (``mIoU``, ``IoU-<class>``, ...) if finished,
    and why it is missing otherwise."""

    run: Run
    output_dir: str
    status: RunStatus
    metrics: Optional[Dict[str, float]] = None
    missing_reason: str = ""

    @property
    def finished(self) -> bool:
        return self.metrics is not None


def read_run(run: Run, output_dir: str, max_iter: int, eval_period: int) -> RunResult:
    """The result of ``run`` from ``output_dir``."""
    status = run_status(output_dir, max_iter, eval_period)
    metrics = final_evaluation(output_dir, max_iter) if status.state is RunState.FINISHED else None
    if metrics is None:
        reason = str(status) if status.state is not RunState.FINISHED else "finished without evaluation"
        return RunResult(run, output_dir, status, missing_reason=reason)
    return RunResult(run, output_dir, status, metrics)


def mean_and_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (None when there are no / too few values; NaNs are left out)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


@dataclass
class ConfigSummary:
    """A run configuration's row of a table: its runs and their statistics."""

    config: RunConfig
    label: str
    results: List[RunResult] = field(default_factory=list)
    x: Optional[float] = None
    series: str = ""
    source_exp: str = ""

    @property
    def finished(self) -> List[RunResult]:
        return [r for r in self.results if r.finished]

    @property
    def missing(self) -> List[RunResult]:
        return [r for r in self.results if not r.finished]

    def values(self, key: str) -> List[float]:
        return [r.metrics.get(key, math.nan) for r in self.finished]

    def stat(self, key: str) -> Tuple[Optional[float], Optional[float]]:
        return mean_and_std(self.values(key))

    @property
    def seeds_found(self) -> str:
        return f"{len(self.finished)}/{len(self.results)}"


def summarize_config(config: RunConfig, results: List[RunResult], label: Optional[str] = None,
                     x: Optional[float] = None, series: Optional[str] = None, source_exp: str = "") -> ConfigSummary:
    return ConfigSummary(config, label or config.label, results, config.x if x is None else x,
                         config.series if series is None else series, source_exp)


def class_names(summaries: Sequence[ConfigSummary]) -> List[str]:
    """The classes with an ``IoU-<class>`` entry in any finished run, in Cityscapes train-id order first."""
    found = {key[4:] for s in summaries for r in s.finished for key in r.metrics if key.startswith("IoU-")}
    ordered = [c for c in CITYSCAPES_CLASSES if c in found]
    return ordered + sorted(found - set(ordered))


STD_NOTE = "mean ± sample standard deviation (n - 1) over the seeds found; '± –' with a single seed"


def format_cell(mean: Optional[float], std: Optional[float]) -> str:
    if mean is None:
        return "–"
    return f"{mean:.1f} ± {std:.1f}" if std is not None else f"{mean:.1f} ± –"


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def item_markdown(item: PaperItem, summaries: Sequence[ConfigSummary]) -> str:
    """The Markdown section of ``item``."""
    lines = [f"## {item.title}", ""]
    main = [(s.label, f"`{s.config.stem}`", s.seeds_found, s.config.metric,
             format_cell(*s.stat(s.config.metric)), str(s.config.expected)) for s in summaries]
    lines += _markdown_table(["row", "run (name without _s<seed>)", "seeds", "metric", "ours", "paper"], main)
    if item.note:
        lines += ["", f"Note: {item.note}."]
    classes = class_names(summaries)
    if classes:
        per_class = [(s.label, *(format_cell(*s.stat(f"IoU-{c}")) for c in classes)) for s in summaries]
        lines += ["", "Per-class IoU:", ""] + _markdown_table(["row", *classes], per_class)
    missing = [(s, r) for s in summaries for r in s.missing]
    lines += ["", f"Missing or unfinished runs ({len(missing)}):" if missing else "Every run is finished."]
    lines += [f"- `{r.run.name}`: {r.missing_reason}" for _, r in missing]
    return "\n".join(lines) + "\n"


def item_csv(item: PaperItem, summaries: Sequence[ConfigSummary]) -> str:
    """The CSV of ``item``: one line per row."""
    classes = class_names(summaries)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["item", "row", "exp", "stem", "seeds_found", "seeds_expected", "metric", "mean", "std", "paper",
                     "paper_note", "x", "series", *(f"IoU-{c}_{p}" for c in classes for p in ("mean", "std")),
                     "missing"])
    for s in summaries:
        mean, std = s.stat(s.config.metric)
        per_class = [v for c in classes for v in s.stat(f"IoU-{c}")]
        writer.writerow([item.key, s.label, s.config.exp, s.config.stem, len(s.finished), len(s.results),
                         s.config.metric, _num(mean), _num(std), _num(s.config.expected.value),
                         s.config.expected.note, _num(s.x), s.series, *(_num(v) for v in per_class),
                         " ".join(f"{r.run.name}:{r.missing_reason}" for r in s.missing)])
    return out.getvalue()


def _num(value: Optional[float]) -> str:
    return "" if value is None else repr(float(value))


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


GeneratedLookup = Callable[[str], Sequence[GeneratedRun]]  # experiment id -> its generated runs


@dataclass
class CollectReport:
    exp: str
    files: List[str] = field(default_factory=list)
    finished: int = 0
    total: int = 0
    missing: List[RunResult] = field(default_factory=list)


def _limits(config_file: str) -> Tuple[int, int]:
    cfg = load_run_config(config_file)
    return int(cfg.SOLVER.MAX_ITER), int(cfg.TEST.EVAL_PERIOD) if cfg.DATASETS.TEST else 0


def _results(config: RunConfig, generated: Sequence[GeneratedRun]) -> List[RunResult]:
    by_name = {g.run.name: g for g in generated}
    out = []
    for run in config.runs():
        gen = by_name[run.name]
        max_iter, eval_period = _limits(gen.config_file)
        out.append(read_run(run, gen.output_dir, max_iter, eval_period))
    return out


def _item_rows(item: PaperItem, configs: Sequence[RunConfig], generated: Sequence[GeneratedRun],
               lookup: GeneratedLookup, exp: str) -> List[ConfigSummary]:
    rows = [summarize_config(c, _results(c, generated)) for c in configs if c.item.key == item.key]
    for ref in item.references:
        config = find_config(ref.exp, ref.stem)
        rows.append(summarize_config(config, _results(config, lookup(ref.exp)), label=ref.label, x=ref.x,
                                     series=rows[0].series if rows and ref.x is not None else None,
                                     source_exp=ref.exp if ref.exp != exp else ""))
    return rows


def collect_experiment(exp: str, generated: Sequence[GeneratedRun], results_dir: str,
                       lookup: GeneratedLookup) -> CollectReport:
    """Write the tables and figures of ``exp`` (``generated``: its runs; ``lookup``: the runs of the experiments
    that its paper items reference) below ``<results_dir>/<exp>/``."""
    configs = experiment(exp)
    folder = os.path.join(results_dir, exp)
    os.makedirs(folder, exist_ok=True)
    report = CollectReport(exp)
    items: Dict[str, PaperItem] = {}
    for config in configs:
        items.setdefault(config.item.key, config.item)
    sections = [f"# Experiment {exp}: collected results", "",
                f"Metric cells: {STD_NOTE}. Paper values: 'not reported' where no stored source gives one.", ""]
    spread: List[ConfigSummary] = []
    for item in items.values():
        rows = _item_rows(item, configs, generated, lookup, exp)
        own = [r for r in rows if r.config.exp == exp and not r.source_exp and r.config.item.key == item.key]
        spread += own
        report.total += sum(len(r.results) for r in own)
        report.finished += sum(len(r.finished) for r in own)
        report.missing += [m for r in own for m in r.missing]
        sections.append(item_markdown(item, rows))
        csv_path = os.path.join(folder, f"{item.key}.csv")
        with open(csv_path, "w") as f:
            f.write(item_csv(item, rows))
        report.files.append(csv_path)
        if item.figure:
            png = os.path.join(folder, f"{item.key}.png")
            report.files.append(curve_figure(item, rows, png))
            sections.append(f"![{item.title}]({item.key}.png)\n")
    report.files.append(seed_spread_figure(f"Experiment {exp}", spread, os.path.join(folder, "seed_spread.png")))
    sections.append("![seed spread](seed_spread.png)\n")
    markdown = os.path.join(folder, "results.md")
    with open(markdown, "w") as f:
        f.write("\n".join(sections))
    report.files.insert(0, markdown)
    logger.info("experiment %s: %d of %d runs finished; tables and figures in %s", exp, report.finished,
                report.total, folder)
    return report
