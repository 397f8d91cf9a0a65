"""Small model configs shared by tests."""
from detectron2.config import get_cfg

from hrda_d2 import add_hrda_config


def tiny_hrda_cfg(embed_dim: int = 32):
    """The paper's HRDA config with a MiT-b0 backbone and ``embed_dim``-wide heads, on the CPU (not frozen)."""
    cfg = add_hrda_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.MIT.VARIANT = "mit_b0"
    cfg.MODEL.SEM_SEG_HEAD.EMBED_DIM = embed_dim
    cfg.MODEL.HRDA.ATTENTION_EMBED_DIM = embed_dim
    return cfg
