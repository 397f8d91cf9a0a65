"""``--list``: every run of an experiment with its paper item, the paper's value, the memory switches it needs and
its state (or what blocks it) (docs/experiments.md §1)."""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

from ..config import load_config
from .generate import GeneratedRun, quiet_config_loading
from .memory import memory_summary
from .status import run_status

__all__ = ["list_experiment"]


def _state(gen: GeneratedRun) -> str:
    if gen.blocked:
        return "blocked"
    with quiet_config_loading():
        cfg = load_config(gen.config_file)
    return str(run_status(gen.output_dir, int(cfg.SOLVER.MAX_ITER),
                          int(cfg.TEST.EVAL_PERIOD) if cfg.DATASETS.TEST else 0))


def list_experiment(exp: str, generated: Sequence[GeneratedRun], gpu_memory_gb: Optional[float]) -> str:
    """The text of ``--list`` for ``exp``."""
    blocked = sum(g.blocked for g in generated)
    lines = [f"experiment {exp}: {len(generated)} runs, {len(generated) - blocked} generated, {blocked} blocked"]
    by_item: Dict[str, List[GeneratedRun]] = OrderedDict()
    for gen in generated:
        by_item.setdefault(gen.run.config.item.title, []).append(gen)
    for title, runs in by_item.items():
        lines.append(f"  {title}")
        for gen in runs:
            config = gen.run.config
            lines.append(f"    {gen.run.name}")
            lines.append(f"        row: {config.label} | paper: {config.expected} ({config.metric}) | memory: "
                         f"{memory_summary(config, gpu_memory_gb)} | state: {_state(gen)}")
            if gen.problems and gen.run.seed != config.seeds[0]:
                lines.append("        blocked as the first seed")
            else:
                lines += [f"        {problem}" for problem in gen.problems]
            if gen.config_file:
                lines.append(f"        config: {gen.config_file}")
    return "\n".join(lines)
