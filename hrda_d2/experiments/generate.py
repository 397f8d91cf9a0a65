"""Write every run of an experiment as a YAML that ``tools/train_net.py --config-file`` accepts as it is
(docs/experiments.md §4).

``configs/generated/<exp>/<run name>.yaml`` holds ``_BASE_`` (the paper config the run starts from, as a path
relative to the file), the keys where the run differs from it, ``SEED`` and ``OUTPUT_DIR``
(``<work dir>/<exp>/<run name>``). With ``tiny``, ``configs/generated/<exp>/tiny/<run name>.yaml`` adds the
:mod:`.tiny` overlay to the full file (``OUTPUT_DIR`` ``<work dir>/tiny/<exp>/<run name>``). Each file is loaded
with :func:`hrda_d2.config.load_config` (every check across keys) before it replaces an older one. A run whose keys
this checkout lacks (:mod:`.requirements`) is not written; it is returned with its ``needs ...`` lines.
"""
import contextlib
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import yaml
from detectron2.config import CfgNode, get_cfg

from ..config import add_hrda_config, load_config
from .catalog import experiment
from .requirements import has_key, missing_support
from .spec import Run
from .tiny import tiny_overrides, tiny_problems

__all__ = ["GeneratedRun", "GenerationError", "REPO_ROOT", "generate_experiment", "nested", "quiet_config_loading",
           "run_output_dir"]

logger = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(REPO_ROOT, "configs")


class GenerationError(RuntimeError):
    """A generated file does not load (a bug of the generator, not a missing key); names the file and the error."""


@dataclass
class GeneratedRun:
    """A run and its generated file (``config_file`` None when the run is blocked: see ``problems``)."""

    run: Run
    output_dir: str
    config_file: Optional[str] = None
    problems: List[str] = field(default_factory=list)

    @property
    def blocked(self) -> bool:
        return self.config_file is None


def _get(cfg: CfgNode, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return type(a) is type(b) and a == b


def differences(overrides: Mapping[str, Any], base: CfgNode) -> "OrderedDict[str, Any]":
    """The entries of ``overrides`` whose value differs from ``base`` (keys ``base`` lacks are kept)."""
    return OrderedDict((k, v) for k, v in overrides.items() if not (has_key(base, k) and _same(_get(base, k), v)))


def nested(flat: Mapping[str, Any]) -> Dict[str, Any]:
    """``{"A.B": 1}`` -> ``{"A": {"B": 1}}`` (tuples become lists, as YAML has no tuples)."""
    out: Dict[str, Any] = {}
    for key, value in flat.items():
        *path, leaf = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return out


def run_output_dir(work_dir: str, run: Run, tiny: bool = False, startup_test: bool = False) -> str:
    """``<work dir>[/tiny][/startup-test]/<exp>/<run name>``."""
    parts = [work_dir] + (["tiny"] if tiny else []) + (["startup-test"] if startup_test else [])
    return os.path.join(*parts, run.exp, run.name)


class _YamlDumper(yaml.SafeDumper):
    """Block-style mappings, flow-style lists (``CROP_SIZE: [512, 512]``)."""


_YamlDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True))


def _write_checked(path: str, header: Sequence[str], content: Dict[str, Any]) -> None:
    """Write ``path`` via a temporary file that must pass ``load_config`` (else :class:`GenerationError`)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    body = yaml.dump(content, Dumper=_YamlDumper, sort_keys=False, width=120, default_flow_style=False)
    text = "".join(f"# {line}\n" for line in header) + body
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    try:
        with quiet_config_loading():
            load_config(tmp)
    except SystemExit as e:
        os.unlink(tmp)
        raise GenerationError(f"generated config {path} does not load:\n{e}") from None
    os.replace(tmp, path)


@contextlib.contextmanager
def quiet_config_loading() -> Iterator[None]:
    """``load_config``'s "CUDA is not available" warning is about running, not about the generated file."""
    loading = logging.getLogger("hrda_d2.config.loading")
    level = loading.level
    loading.setLevel(logging.ERROR)
    try:
        yield
    finally:
        loading.setLevel(level)


def _base_cfg(base: str) -> CfgNode:
    cfg = add_hrda_config(get_cfg())
    cfg.merge_from_file(os.path.join(CONFIG_DIR, base))
    return cfg


def _header(run: Run, what: str) -> List[str]:
    config = run.config
    return [f"{what} by tools/experiments.py --exp {run.exp}: regenerated on demand, do not edit",
            f"run {run.name} (seed {run.seed})",
            f"{config.item.title}",
            f"row: {config.label}; paper: {config.expected} ({config.metric})"]


def generate_experiment(exp: str, generated_dir: Optional[str] = None, work_dir: str = "output/experiments",
                        tiny: bool = False, tiny_iterations: int = 4) -> List[GeneratedRun]:
    """Write the YAML of every run of ``exp`` (and, with ``tiny``, its tiny overlay; the returned ``config_file``
    is then the tiny one). Runs that need keys this checkout lacks are returned blocked, nothing written."""
    generated_dir = generated_dir or os.path.join(CONFIG_DIR, "generated")
    folder = os.path.join(generated_dir, exp)
    out: List[GeneratedRun] = []
    for config in experiment(exp):
        problems = missing_support(config.overrides)
        base = _base_cfg(config.base)
        keys = differences(config.overrides, base)
        for run in config.runs():
            output_dir = run_output_dir(work_dir, run, tiny=tiny)
            item = GeneratedRun(run, output_dir, problems=list(problems))
            out.append(item)
            if problems:
                continue
            path = os.path.join(folder, f"{run.name}.yaml")
            content = {"_BASE_": os.path.relpath(os.path.join(CONFIG_DIR, config.base), folder), **nested(keys),
                       "SEED": run.seed, "OUTPUT_DIR": run_output_dir(work_dir, run)}
            _write_checked(path, _header(run, "Generated"), content)
            item.config_file = path
            if tiny:
                item.config_file = _write_tiny(path, run, output_dir, tiny_iterations, item)
    written = sum(not g.blocked for g in out)
    logger.info("experiment %s: %d runs, %d written under %s, %d blocked", exp, len(out), written, folder,
                len(out) - written)
    return out


def _write_tiny(full_path: str, run: Run, output_dir: str, iterations: int, item: GeneratedRun) -> Optional[str]:
    with quiet_config_loading():
        cfg = load_config(full_path)
    overlay = tiny_overrides(cfg, iterations)
    item.problems = tiny_problems(overlay, cfg)
    if item.problems:
        return None
    folder = os.path.join(os.path.dirname(full_path), "tiny")
    path = os.path.join(folder, os.path.basename(full_path))
    content = {"_BASE_": os.path.relpath(full_path, folder), **nested(overlay), "OUTPUT_DIR": output_dir}
    _write_checked(path, _header(run, "Tiny CPU version (--tiny)"), content)
    return path
