"""What an experiment consists of: paper items (tables, figures), run configurations (one per table row or curve
point, run once per seed) and runs (docs/experiments.md §1)."""
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Tuple

from .naming import run_name

__all__ = ["Expected", "NOT_REPORTED", "PaperItem", "Reference", "Run", "RunConfig", "SEEDS"]

SEEDS = (0, 1, 2)  # every paper number is the mean over these three seeds


@dataclass(frozen=True)
class Expected:
    """The paper's number for a run configuration (``value`` None: not reported / not found)."""

    value: Optional[float] = None
    note: str = ""

    def __str__(self) -> str:
        text = "not reported" if self.value is None else f"{self.value:.1f}"
        return f"{text} ({self.note})" if self.note else text


NOT_REPORTED = Expected()


@dataclass(frozen=True)
class Reference:
    """A row of a table or a point of a figure that another run configuration provides (e.g. HRDA Table 7 row 6
    is the final HRDA of experiment 40)."""

    label: str
    exp: str
    stem: str
    x: Optional[float] = None


@dataclass(frozen=True)
class PaperItem:
    """A table or figure of a paper.

    key: file-name stem of its collected table (``hrda_table7``); title: what it shows; figure: the curve drawn for
    it (``"crop_size"``, ``"hr_loss_weight"``) or None; x_label: the curve's x axis; references: rows it shares
    with other run configurations; note: what is known about rows that are not generated.
    """

    key: str
    title: str
    figure: Optional[str] = None
    x_label: str = ""
    references: Tuple[Reference, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class RunConfig:
    """One configuration of an experiment: a row of its paper item, run once per seed.

    exp: experiment id (``44``, ``mic80``, ``dinov2``); stem: the run name without ``_s<seed>``; label: the row's
    name in the paper item; base: the paper config (``configs/<base>``) it starts from; overrides: every key that
    defines it (beyond the base); metric: the number the paper reports (``mIoU`` or ``mIoU16``); original_gpu: the
    GPU the original generator assigned (memory class, :mod:`.memory`); gpus: GPUs of one run; x, series: the
    point on the paper item's curve.
    """

    exp: str
    stem: str
    item: PaperItem
    label: str
    base: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    expected: Expected = NOT_REPORTED
    metric: str = "mIoU"
    original_gpu: Optional[str] = None
    gpus: int = 1
    x: Optional[float] = None
    series: str = ""
    seeds: Tuple[int, ...] = SEEDS

    def runs(self) -> List["Run"]:
        return [Run(self, seed) for seed in self.seeds]


@dataclass(frozen=True)
class Run:
    """A run configuration with its seed."""

    config: RunConfig
    seed: int

    @property
    def name(self) -> str:
        return run_name(self.config.stem, self.seed)

    @property
    def exp(self) -> str:
        return self.config.exp
