"""One paper item's collected rows as Markdown and CSV (docs/experiments.md §8).

Markdown: the main table (row, run, seeds found, metric mean ± sample std, the paper's value), the per-class IoU
table (mean ± std of every class), and the list of missing or unfinished runs with their state. CSV: one line per
row with the numbers in separate columns (``<metric>_mean``, ``<metric>_std``, ``paper``, ``IoU-<class>_mean`` /
``_std``, seeds found / expected, the missing runs).
"""
import csv
import io
from typing import List, Optional, Sequence

from .results import ConfigSummary, class_names
from .spec import PaperItem

__all__ = ["STD_NOTE", "format_cell", "item_csv", "item_markdown"]

STD_NOTE = "mean ± sample standard deviation (n - 1) over the seeds found; '± –' with a single seed"


def format_cell(mean: Optional[float], std: Optional[float]) -> str:
    if mean is None:
        return "–"
    return f"{mean:.1f} ± {std:.1f}" if std is not None else f"{mean:.1f} ± –"


def _paper(summary: ConfigSummary) -> str:
    return str(summary.config.expected)


def _row_label(summary: ConfigSummary) -> str:
    return summary.label


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def item_markdown(item: PaperItem, summaries: Sequence[ConfigSummary]) -> str:
    """The Markdown section of ``item``."""
    lines = [f"## {item.title}", ""]
    main = [(_row_label(s), f"`{s.config.stem}`", s.seeds_found, s.config.metric,
             format_cell(*s.stat(s.config.metric)), _paper(s)) for s in summaries]
    lines += _markdown_table(["row", "run (name without _s<seed>)", "seeds", "metric", "ours", "paper"], main)
    if item.note:
        lines += ["", f"Note: {item.note}."]
    classes = class_names(summaries)
    if classes:
        per_class = [(_row_label(s), *(format_cell(*s.stat(f"IoU-{c}")) for c in classes)) for s in summaries]
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
        writer.writerow([item.key, _row_label(s), s.config.exp, s.config.stem, len(s.finished), len(s.results),
                         s.config.metric, _num(mean), _num(std), _num(s.config.expected.value),
                         s.config.expected.note, _num(s.x), s.series, *(_num(v) for v in per_class),
                         " ".join(f"{r.run.name}:{r.missing_reason}" for r in s.missing)])
    return out.getvalue()


def _num(value: Optional[float]) -> str:
    return "" if value is None else repr(float(value))
