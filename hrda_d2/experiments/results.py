"""Every run's final evaluation, and their mean and spread over seeds (docs/experiments.md §8).

Only finished runs (:mod:`.status`) are averaged. The spread is the **sample** standard deviation over the seeds
found (``statistics.stdev``, divisor n - 1); with a single seed it is undefined (None). Every run that is not
finished stays in :attr:`ConfigSummary.missing` with its state, so a table never averages it away silently.
"""
import math
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ..data.datasets.cityscapes_classes import CITYSCAPES_CLASSES
from .spec import Run, RunConfig
from .status import RunStatus, final_evaluation, run_status

__all__ = ["ConfigSummary", "RunResult", "class_names", "mean_and_std", "read_run", "summarize_config"]


@dataclass
class RunResult:
    """One run: where it writes, its state, the final evaluation (``mIoU``, ``IoU-<class>``, ...) if finished,
    and why it is missing otherwise."""

    run: Run
    output_dir: str
    status: Optional[RunStatus]
    metrics: Optional[Dict[str, float]] = None
    missing_reason: str = ""

    @property
    def finished(self) -> bool:
        return self.metrics is not None


def read_run(run: Run, output_dir: str, max_iter: Optional[int], eval_period: int,
             blocked: Sequence[str] = ()) -> RunResult:
    """The result of ``run`` from ``output_dir`` (``max_iter`` None: no generated config, the run is blocked)."""
    if blocked or max_iter is None:
        return RunResult(run, output_dir, None, missing_reason="blocked: " + "; ".join(blocked))
    status = run_status(output_dir, max_iter, eval_period)
    metrics = final_evaluation(output_dir, max_iter) if status.state.value == "finished" else None
    if metrics is None:
        reason = str(status) if status.state.value != "finished" else "finished without evaluation"
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
