"""The config layer: every key with its default (:mod:`.defaults`), the checks across keys
(:mod:`.validation`) and the tools' loading (:mod:`.loading`)."""
from .defaults import MIC_MODE_NAMES, add_hrda_config
from .loading import load_config
from .uda_method import MIC_METHODS, MIC_WITH_OWN_TEACHER, SELF_TRAINING, UDA_METHODS, uda_method
from .validation import ConfigError, config_problems, validate_config

__all__ = ["ConfigError", "MIC_METHODS", "MIC_MODE_NAMES", "MIC_WITH_OWN_TEACHER", "SELF_TRAINING", "UDA_METHODS", "add_hrda_config", "config_problems",
           "load_config", "uda_method", "validate_config"]
