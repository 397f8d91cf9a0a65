"""``load_config``: the command-line tools' config (file + ``KEY VALUE`` overrides), checked before use."""
import logging
import os
from typing import Sequence

import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .defaults import add_hrda_config
from .validation import ConfigError, validate_config

__all__ = ["load_config"]

logger = logging.getLogger(__name__)


def _yaml_error_message(error: "yaml.YAMLError", config_file: str) -> str:
    """``<file>, line L, column C: <problem>`` of a YAML parser error, without the parser's traceback."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = "; ".join(str(p) for p in (getattr(error, "context", None), getattr(error, "problem", None)) if p)
    if mark is None:
        return f"Config file {config_file} is not valid YAML: {problem or error}"
    name = mark.name if mark.name and not mark.name.startswith("<") else config_file
    return (f"Config file {name}, line {mark.line + 1}, column {mark.column + 1}: YAML syntax error: "
            f"{problem or error}")


def load_config(config_file: str, opts: Sequence[str] = (), freeze: bool = True) -> CN:
    """Detectron2 config with every hrda_d2 key, merged from ``config_file`` and ``KEY VALUE`` overrides.

    A missing file, a YAML syntax error (file, line and column) or an unknown / ill-typed key raises
    ``SystemExit`` with a message naming it (for the command-line tools), and so does any setting that
    :func:`~.validation.validate_config` refuses (every problem listed with its key, value and fix). ``MODEL.DEVICE`` falls back to "cpu" (with a warning) when CUDA is not available.
    """
    cfg = add_hrda_config(get_cfg())
    if not os.path.isfile(config_file):
        raise SystemExit(f"Config file '{config_file}' does not exist (configs/ lists the experiments).")
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
    except yaml.YAMLError as e:  # a _BASE_ file may be the broken one: the parser's mark names it
        raise SystemExit(_yaml_error_message(e, config_file)) from None
    except (KeyError, AssertionError, ValueError) as e:
        raise SystemExit(f"Invalid config ({config_file} or command-line overrides): {e}\n"
                         f"Every valid key is defined in hrda_d2/config/defaults.py (add_hrda_config).") from e
    try:
        validate_config(cfg, f"{config_file} with the command-line overrides" if opts else config_file)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    import torch  # deferred: keeps `import hrda_d2.config` light

    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: running on the CPU (MODEL.DEVICE cpu).")
        cfg.MODEL.DEVICE = "cpu"
    if freeze:
        cfg.freeze()
    return cfg
