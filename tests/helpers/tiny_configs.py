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


def small_input_hrda_cfg(**overrides):
    """``tiny_hrda_cfg()`` for small inputs: attention head 16 wide, HR crop 64 (MiT needs >= 64 px), slide
    windows 128 / stride 64; ``overrides`` maps config keys to values (``{"TEST.SLIDE.BATCHED": False}``)."""
    cfg = tiny_hrda_cfg()
    cfg.MODEL.HRDA.ATTENTION_EMBED_DIM = 16
    cfg.MODEL.HRDA.HR_CROP_SIZE = [64, 64]
    cfg.TEST.SLIDE.CROP_SIZE = [128, 128]
    cfg.TEST.SLIDE.STRIDE = [64, 64]
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        target = cfg
        for name in path:
            target = getattr(target, name)
        setattr(target, leaf, value)
    return cfg
