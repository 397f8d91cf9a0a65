"""``load_config``: the tools' config (file + ``KEY VALUE`` overrides), upgraded and checked before use."""
import difflib
import logging
import os
import re
from typing import List, Sequence

import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .choices import SELF_TRAINING
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


def _check_bases(config_file: str) -> None:
    """``config_file`` and its bases hold mappings of keys, and every ``_BASE_`` file exists (a relative one next
    to the file naming it, as Detectron2 resolves them); else a :class:`ConfigError` naming the including file."""
    with open(config_file) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.constructor.ConstructorError:  # Python tags: Detectron2 loads such files unsafely itself
            return
    if not isinstance(data, dict):
        held = "nothing" if data is None else f"a {type(data).__name__} ({str(data)[:40]})"
        raise ConfigError(f"{config_file}: holds {held}, not config keys; write KEY: value lines as in configs/*.yaml")
    bases = data.get("_BASE_")
    for base in [bases] if isinstance(bases, str) else bases or []:
        path = os.path.expanduser(str(base))
        if path.startswith(("https://", "http://")):
            continue
        path = os.path.join(os.path.dirname(config_file), path)  # an absolute path stays as it is
        if not os.path.isfile(path):
            raise ConfigError(f"{config_file}: _BASE_ '{base}' does not exist (looked for {path}); copy it next to "
                              f"this file, or set _BASE_ to its path (absolute, or relative to this file's folder)")
        _check_bases(path)


def _merge_error_message(error: Exception, where: str, cfg: CN) -> str:
    """One line for Detectron2's merge errors (unknown key, wrong type, odd override list), with the nearest valid
    key for an unknown one."""
    message = str(error.args[0]) if error.args else str(error)
    unknown = re.search(r"Non-existent (?:config )?key: (\S+)", message)
    if unknown:
        close = difflib.get_close_matches(unknown.group(1), _full_keys(cfg), n=1)
        return (f"{where}: {message}; " + (f"did you mean {close[0]}? " if close else "")
                + "Every valid key is in hrda_d2/config/defaults.py")
    if message.startswith("Type mismatch"):
        return f"{where}: {message}; give a value of the default's type (hrda_d2/config/defaults.py)"
    if isinstance(error, TypeError):  # a section (MODEL, SOLVER, ...) given a plain value
        return f"{where}: {message}: a section of keys is given a plain value? Compare with hrda_d2/config/defaults.py"
    return f"{where}: {message}"


def _full_keys(cfg: CN, prefix: str = "") -> List[str]:
    keys = []
    for key, value in cfg.items():
        keys += _full_keys(value, f"{prefix}{key}.") if isinstance(value, CN) else [f"{prefix}{key}"]
    return keys


def _upgrade_uda_enabled(cfg: CN, source: str) -> None:
    """The first release's ``UDA.ENABLED`` moved to ``UDA.METHOD`` (False = ``source_only``) with a deprecation
    warning, as checkpoint/legacy_layout.py upgrades old weights; ``UDA.ENABLED`` is None afterwards. False with
    another method than the default is refused (no silent change of meaning)."""
    enabled, method = cfg.UDA.ENABLED, cfg.UDA.METHOD
    if enabled is None:
        return
    if not enabled:
        if method not in (SELF_TRAINING, "source_only"):
            raise ConfigError(f"{source}: UDA.ENABLED=False (source-only training, the first release's switch) "
                              f"contradicts UDA.METHOD={method!r}: remove UDA.ENABLED (UDA.METHOD selects the method)")
        method = "source_only"
    logger.warning(f"{source}: UDA.ENABLED is deprecated and read as UDA.METHOD {method}: write UDA.METHOD instead "
                   f"(UDA.ENABLED False = UDA.METHOD source_only)")
    cfg.UDA.METHOD = method
    cfg.UDA.ENABLED = None


def load_config(config_file: str, opts: Sequence[str] = (), freeze: bool = True) -> CN:
    """Detectron2 config with every hrda_d2 key, merged from ``config_file`` and ``KEY VALUE`` overrides.

    A missing file or ``_BASE_`` (named with the file that includes it), a YAML syntax error (file, line and
    column), an unknown / ill-typed key or any setting that :func:`~.validation.validate_config` refuses (every
    problem listed with its key, value and fix) raises a :class:`~.validation.ConfigError` whose message the tools
    print as their exit message. The deprecated ``UDA.ENABLED`` is upgraded to ``UDA.METHOD`` (a warning).
    ``MODEL.DEVICE`` falls back to "cpu" (with a warning) when CUDA is not available.
    """
    cfg = add_hrda_config(get_cfg())
    if not os.path.isfile(config_file):
        raise ConfigError(f"Config file '{config_file}' does not exist (configs/ lists the experiments)")
    try:
        _check_bases(config_file)
        cfg.merge_from_file(config_file)
    except ConfigError:
        raise
    except yaml.YAMLError as e:  # a _BASE_ file may be the broken one: the parser's mark names it
        raise ConfigError(_yaml_error_message(e, config_file)) from None
    except (KeyError, AssertionError, ValueError, TypeError) as e:
        raise ConfigError(_merge_error_message(e, config_file, cfg)) from None
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError, ValueError) as e:
        raise ConfigError(_merge_error_message(e, "command-line override", cfg)) from None
    source = f"{config_file} with the command-line overrides" if opts else config_file
    _upgrade_uda_enabled(cfg, source)
    validate_config(cfg, source)
    import torch  # deferred: keeps `import hrda_d2.config` light

    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: running on the CPU (MODEL.DEVICE cpu).")
        cfg.MODEL.DEVICE = "cpu"
    if freeze:
        cfg.freeze()
    return cfg
