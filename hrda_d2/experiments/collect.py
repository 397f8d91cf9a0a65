"""``--collect``: every run's ``metrics.json`` -> one table per paper item, CSV, curves, seed spread
(docs/experiments.md §8).

Per experiment, under ``<results dir>/<exp>/``: ``results.md`` (every paper item: main table with the paper's value,
per-class IoU, missing / unfinished runs), ``<item>.csv``, ``<item>.png`` for items with a curve (HRDA Fig. 4,
Fig. S1) and ``seed_spread.png``. Rows a paper item shares with another experiment (e.g. HRDA Table 7 row 6 = the
final HRDA of exp 40) are read from that experiment's runs.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..config import load_config
from .catalog import experiment, find_config
from .generate import GeneratedRun, quiet_config_loading
from .plots import curve_figure, seed_spread_figure
from .results import ConfigSummary, RunResult, read_run, summarize_config
from .spec import PaperItem, RunConfig
from .tables import STD_NOTE, item_csv, item_markdown

__all__ = ["CollectReport", "collect_experiment"]

logger = logging.getLogger(__name__)

GeneratedLookup = Callable[[str], Sequence[GeneratedRun]]  # experiment id -> its generated runs


@dataclass
class CollectReport:
    exp: str
    files: List[str] = field(default_factory=list)
    finished: int = 0
    total: int = 0
    missing: List[RunResult] = field(default_factory=list)


def _limits(config_file: Optional[str]) -> Tuple[Optional[int], int]:
    if config_file is None:
        return None, 0
    with quiet_config_loading():
        cfg = load_config(config_file)
    return int(cfg.SOLVER.MAX_ITER), int(cfg.TEST.EVAL_PERIOD) if cfg.DATASETS.TEST else 0


def _results(config: RunConfig, generated: Sequence[GeneratedRun]) -> List[RunResult]:
    by_name = {g.run.name: g for g in generated}
    out = []
    for run in config.runs():
        gen = by_name[run.name]
        max_iter, eval_period = _limits(gen.config_file)
        out.append(read_run(run, gen.output_dir, max_iter, eval_period, gen.problems if gen.blocked else ()))
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
