"""The config layer: every key with its default (:mod:`.defaults`), the values of the choice keys (:mod:`.choices`),
the checks across keys (:mod:`.validation`) and the tools' loading (:mod:`.loading`)."""
from .choices import (AMP_DTYPES, CHOICES, GAN_LOSSES, HEAD_FUSIONS, INPUT_FORMATS, LR_SCHEDULERS, MIC_MASK_TYPES,
                      MIC_METHODS, MIC_MODE_NAMES, MIC_WITH_OWN_TEACHER, OPTIMIZERS, SELF_TRAINING, TEST_MODES, UDA_METHODS,
                      UDA_MIXES, VFM_FD_FEATURES, VFM_FLIPS, VFM_UDA, WARMUP_METHODS, WEIGHTS_SOURCES)
from .defaults import add_hrda_config
from .loading import load_config
from .validation import ConfigError, catchable_signal, check_choice, config_problems, uda_method, validate_config

__all__ = ["AMP_DTYPES", "CHOICES", "ConfigError", "GAN_LOSSES", "HEAD_FUSIONS", "INPUT_FORMATS", "LR_SCHEDULERS",
           "MIC_MASK_TYPES", "MIC_METHODS", "MIC_MODE_NAMES", "MIC_WITH_OWN_TEACHER", "OPTIMIZERS", "SELF_TRAINING", "TEST_MODES",
           "UDA_METHODS", "UDA_MIXES", "VFM_FD_FEATURES", "VFM_FLIPS", "VFM_UDA", "WARMUP_METHODS", "WEIGHTS_SOURCES", "add_hrda_config", "catchable_signal",
           "check_choice", "config_problems", "load_config", "uda_method", "validate_config"]
