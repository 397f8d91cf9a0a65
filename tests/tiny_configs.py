"""Small model configs shared by tests (importable: pytest puts tests/ on sys.path)."""
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


# configs/demo_hrda.yaml shrunk for training on the generated 64x128 replicas: 64x64 crops, 32x32 HR crops / tiles
# (the smallest MiT input), test slide windows 64x64, all RCS classes eligible with so few pixels, no workers
TINY_TRAIN_OPTS = [
    "INPUT.SOURCE.SCALE", "[128, 64]", "INPUT.SOURCE.CROP_SIZE", "[64, 64]",
    "INPUT.TARGET.SCALE", "[128, 64]", "INPUT.TARGET.CROP_SIZE", "[64, 64]",
    "INPUT.TARGET.VALID_MASK_SIZE", "[64, 128]", "INPUT.TARGET.PSEUDO_MARGINS", "[2, 8, 2, 2]",
    "INPUT.TEST.SCALE", "[128, 64]", "MODEL.HRDA.HR_CROP_SIZE", "[32, 32]",
    "TEST.SLIDE.CROP_SIZE", "[64, 64]", "TEST.SLIDE.STRIDE", "[64, 64]",
    "DATASETS.RCS.MIN_PIXELS", "1", "DATALOADER.NUM_WORKERS", "0",
]
