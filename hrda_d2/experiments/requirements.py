"""What a run configuration needs that this checkout does not have yet (docs/experiments.md §4).

A generated YAML must load with ``tools/train_net.py --config-file`` as it is. Before one is written, every key of
the run's overrides is checked against this checkout:

* the key exists in ``add_hrda_config`` (else: ``needs key K``);
* the value has the key's type (yacs refuses e.g. the string ``'all'`` for the float ``MODEL.HRDA.FEATURE_SCALE``);
* a registered component name (``MODEL.BACKBONE.NAME``, ``MODEL.SEM_SEG_HEAD.NAME``, ...) is registered;
* ``SOLVER.OPTIMIZER`` is one ``hrda_d2.solver.build_optimizer`` builds.

Each problem becomes one line ``needs ...``; a run with problems is listed and skipped instead of written.
"""
import logging
from typing import Any, Dict, List, Mapping, Optional, Tuple

from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY
from torch import nn

from ..config import MIC_METHODS, SELF_TRAINING, add_hrda_config
from ..solver import build_optimizer

__all__ = ["KNOWN_GAPS", "has_key", "missing_support"]

# values that the method needs but this project has not implemented yet, with what they do (facts of the original)
KNOWN_GAPS: Dict[Tuple[str, str], str] = {}  # (none left: the FD on all scales is UDA.FD.ALL_SCALES)
_REGISTRIES = {
    "MODEL.BACKBONE.NAME": ("BACKBONE_REGISTRY", BACKBONE_REGISTRY),
    "MODEL.SEM_SEG_HEAD.NAME": ("SEM_SEG_HEADS_REGISTRY", SEM_SEG_HEADS_REGISTRY),
    "MODEL.HRDA.HEAD_NAME": ("SEM_SEG_HEADS_REGISTRY", SEM_SEG_HEADS_REGISTRY),
    "MODEL.META_ARCHITECTURE": ("META_ARCH_REGISTRY", META_ARCH_REGISTRY),
}


def _defaults() -> CfgNode:
    return add_hrda_config(get_cfg())


def has_key(cfg: CfgNode, key: str) -> bool:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, CfgNode) or part not in node:
            return False
        node = node[part]
    return True


def _type_problem(defaults: CfgNode, key: str, value: Any) -> Optional[str]:
    probe = defaults.clone()
    try:
        probe.merge_from_list([key, value])
    except (KeyError, ValueError, AssertionError, TypeError) as e:
        return str(e).splitlines()[0]
    return None


def _registry_problem(key: str, value: Any) -> Optional[str]:
    name, registry = _REGISTRIES[key]
    if value in registry:
        return None
    return f"{value!r} is not registered in Detectron2's {name}"


def _optimizer_problem(overrides: Mapping[str, Any]) -> Optional[str]:
    cfg = _defaults()
    for key in ("SOLVER.OPTIMIZER", "SOLVER.BASE_LR", "SOLVER.WEIGHT_DECAY"):
        if key in overrides:
            cfg.merge_from_list([key, overrides[key]])
    solver_logger = logging.getLogger("hrda_d2.solver.build")
    level = solver_logger.level
    solver_logger.setLevel(logging.WARNING)  # the probe's param groups are not worth a log line
    try:
        build_optimizer(cfg, nn.Linear(1, 1))
    except ValueError as e:
        return f"hrda_d2.solver.build_optimizer: {e}"
    finally:
        solver_logger.setLevel(level)
    return None


def missing_support(overrides: Mapping[str, Any]) -> List[str]:
    """``needs ...`` lines for every key / value of ``overrides`` this checkout lacks (empty: all supported)."""
    defaults = _defaults()
    problems: List[str] = []
    for key, value in overrides.items():
        if not has_key(defaults, key):
            problems.append(f"needs key {key} (not in hrda_d2.config.add_hrda_config; value {value!r})")
            continue
        gap = KNOWN_GAPS.get((key, value)) if isinstance(value, str) else None
        problem = _type_problem(defaults, key, value)
        if problem is None and key in _REGISTRIES:
            problem = _registry_problem(key, value)
        if problem is None and key == "SOLVER.OPTIMIZER" and value != defaults.SOLVER.OPTIMIZER:
            problem = _optimizer_problem(overrides)
        if problem is not None:
            problems.append(f"needs {key} {value!r} ({gap or problem})")
    method = overrides.get("UDA.METHOD", SELF_TRAINING)
    if overrides.get("UDA.MIC.ENABLED") and method not in MIC_METHODS:
        problems.append(f"needs MIC on UDA.METHOD {method!r} (MIC extends {', '.join(MIC_METHODS)} only)")
    return problems
