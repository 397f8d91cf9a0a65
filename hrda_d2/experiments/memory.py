"""The memory switches a run needs on a GPU of a given size (docs/experiments.md §6; README "Performance").

The original generator assigned each run a GPU (``gpu_model``): a 24 GB TITAN RTX for the 1024-crop HRDA runs
(22.5 GB and 32 h for HRDA GTA->Cityscapes, HRDA paper supplement) and an 11 GB RTX 2080 Ti for the others. On a
smaller GPU the README's tiers apply, scaled to the run's class: below the class, bf16 autocast plus activation
checkpointing of the encoder (README: "16 GB"); below 2/3 of it also of the decode heads and window-by-window
slide inference ("12 GB"); below half of it the run does not fit one GPU. These are expectations from the CPU
measurements, not GPU measurements.
"""
from typing import List, Optional

from .spec import RunConfig

__all__ = ["GPU_MEMORY_GB", "memory_switches", "memory_summary"]

GPU_MEMORY_GB = {"NVIDIATITANRTX": 24.0, "NVIDIAGeForceRTX2080Ti": 11.0}


def _encoder_checkpointing(config: RunConfig) -> str:
    timm = config.overrides.get("MODEL.BACKBONE.NAME") == "build_timm_backbone" or "dinov2" in config.base
    return "MODEL.TIMM.CHECKPOINT_ACTIVATIONS" if timm else "MODEL.MIT.CHECKPOINT_ACTIVATIONS"


def memory_switches(config: RunConfig, gpu_memory_gb: Optional[float]) -> List[str]:
    """``KEY VALUE`` overrides for a GPU of ``gpu_memory_gb`` (None: the original's GPU, no switch); a run that
    does not fit raises ``ValueError`` with the reason."""
    need = GPU_MEMORY_GB.get(config.original_gpu or "")
    if gpu_memory_gb is None or need is None or gpu_memory_gb >= need:
        return []
    if gpu_memory_gb < need / 2:
        raise ValueError(f"{config.stem}: the original ran on a {need:g} GB GPU; {gpu_memory_gb:g} GB is below half of "
                         f"it even with every memory switch; use 2 GPUs with 1 + 1 images each (--gpus 2)")
    switches = ["SOLVER.AMP.ENABLED", "True", _encoder_checkpointing(config), "True"]
    if gpu_memory_gb < need * 2 / 3:
        switches += ["MODEL.SEM_SEG_HEAD.CHECKPOINT_ACTIVATIONS", "True", "TEST.SLIDE.BATCHED", "False"]
    return switches


LISTED_GPU_SIZES_GB = (24.0, 16.0, 12.0)  # README "Performance": the tiers it names


def _on(config: RunConfig, gpu_memory_gb: float, need: float) -> str:
    try:
        switches = memory_switches(config, gpu_memory_gb)
    except ValueError:
        return "does not fit one GPU (2 GPUs)"
    return " ".join(switches) if switches else "none"


def memory_summary(config: RunConfig, gpu_memory_gb: Optional[float] = None) -> str:
    """One line for ``--list``: the switches on a ``gpu_memory_gb`` GPU (None: on 24, 16 and 12 GB)."""
    need = GPU_MEMORY_GB.get(config.original_gpu or "")
    if need is None:
        extra = f"{config.gpus} GPUs (SOLVER.IMS_PER_BATCH over them)" if config.gpus > 1 else "1 GPU"
        return f"not measured; {extra}"
    sizes = LISTED_GPU_SIZES_GB if gpu_memory_gb is None else (gpu_memory_gb,)
    tiers = "; ".join(f"{size:g} GB: {_on(config, size, need)}" for size in sizes)
    return f"original {need:g} GB GPU; {tiers}"
