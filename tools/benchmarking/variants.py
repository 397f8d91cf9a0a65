"""The measured variants: config switches against the float32 baseline, and the plan of a benchmark run.

The baseline is float32, no activation checkpointing, no tile reuse, no compile; every other setting is the
config's (README "Performance"). ``--tiny``: mit_b0, 512 x 512 source / target crops, HR crop 256, slide windows
512 / stride 256, batch 1 + 1.
"""
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hrda_d2.config import load_config

__all__ = ["DEFAULT_VARIANTS", "PAPER_CONFIG", "PHASE_NAMES", "TINY_OPTS", "VARIANTS", "build_cfg", "plan_variants"]

PAPER_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "gtaHR2csHR_hrda.yaml"

TINY_OPTS = [
    "MODEL.MIT.VARIANT", "mit_b0",
    "INPUT.SOURCE.CROP_SIZE", "[512, 512]", "INPUT.TARGET.CROP_SIZE", "[512, 512]",
    "MODEL.HRDA.HR_CROP_SIZE", "[256, 256]",
    "TEST.SLIDE.CROP_SIZE", "[512, 512]", "TEST.SLIDE.STRIDE", "[256, 256]",
    "SOLVER.IMS_PER_BATCH", "1",
]

_OFF = [
    "SOLVER.AMP.ENABLED", "False", "MODEL.MIT.CHECKPOINT_ACTIVATIONS", "False",
    "MODEL.SEM_SEG_HEAD.CHECKPOINT_ACTIVATIONS", "False", "TEST.SLIDE.REUSE_HR_TILES", "False",
    "MODEL.COMPILE", "False",
]
_BF16 = ["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "bfloat16"]
_CKPT = ["MODEL.MIT.CHECKPOINT_ACTIVATIONS", "True"]
_REUSE = ["TEST.SLIDE.REUSE_HR_TILES", "True"]

# vfm_infer compares two fixed recipes (VFM-UDA, MIC(HRDA)) and deploy the runtimes of fixed models, not variants:
# only the baseline runs them
PHASE_NAMES = ("train", "infer", "fwdbwd", "ddp", "vfm_infer", "deploy")

# name -> (config overrides on top of the baseline's, phases it changes, description)
VARIANTS: Dict[str, Dict[str, Any]] = {
    "baseline": dict(opts=[], phases=PHASE_NAMES, desc="fp32, no checkpointing, no tile reuse, no compile"),
    "tile_reuse": dict(opts=_REUSE, phases=("infer",), desc="TEST.SLIDE.REUSE_HR_TILES", infer_modes=("slide",)),
    "ckpt": dict(opts=_CKPT, phases=("train", "fwdbwd"), desc="MODEL.MIT.CHECKPOINT_ACTIVATIONS"),
    "ckpt_heads": dict(opts=_CKPT + ["MODEL.SEM_SEG_HEAD.CHECKPOINT_ACTIVATIONS", "True"], phases=("fwdbwd",),
                       desc="MiT blocks and heads checkpointed"),
    "bf16": dict(opts=_BF16, phases=("train", "infer"), desc="SOLVER.AMP bfloat16 (student, teacher, FD)"),
    "fp16": dict(opts=["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "float16"], phases=("train",),
                 desc="SOLVER.AMP float16 + GradScaler"),
    "bf16_ckpt": dict(opts=_BF16 + _CKPT, phases=("train", "fwdbwd"), desc="bf16 + MiT checkpointing"),
    "fast": dict(opts=_BF16 + _CKPT + _REUSE, phases=("train", "infer"),
                 desc="bf16 + MiT checkpointing + tile reuse"),
    "compile": dict(opts=["MODEL.COMPILE", "True"], phases=("train", "infer"), desc="MODEL.COMPILE"),
    "mic": dict(opts=["UDA.MIC.ENABLED", "True"], phases=("train", "ddp"), desc="UDA.MIC (masked image consistency)"),
    "source_only": dict(opts=["UDA.METHOD", "source_only"], phases=("ddp",), desc="UDA.METHOD source_only"),
    # the finite checks' cost: losses read every iteration, without / with the gradient check (compare the two)
    "metrics": dict(opts=["SOLVER.METRICS_PERIOD", "1", "SOLVER.CHECK_FINITE_GRADIENTS", "False"], phases=("train",),
                    desc="SOLVER.METRICS_PERIOD 1 (losses read and checked every iteration), no gradient check"),
    "grad_check": dict(opts=["SOLVER.METRICS_PERIOD", "1"], phases=("train",),
                       desc="SOLVER.METRICS_PERIOD 1 with SOLVER.CHECK_FINITE_GRADIENTS (the default check)"),
}
# "variant:phase+phase" restricts a variant to some of its phases
DEFAULT_VARIANTS = {"cpu": "baseline,tile_reuse,ckpt:fwdbwd,ckpt_heads,bf16",
                    "cuda": "baseline,tile_reuse,ckpt,bf16,bf16_ckpt,fast"}


def build_cfg(base: Optional[str], tiny: bool, variant: str, opts: Sequence[str], device: str):
    """The frozen config of ``variant``: ``base`` (default: the paper's GTA -> Cityscapes config), no weights,
    no evaluation / debug panels / loader workers, metrics never read, a fresh temporary OUTPUT_DIR, then
    ``--tiny``, the baseline's switches, the variant's and ``opts``."""
    fixed = ["MODEL.DEVICE", device, "MODEL.WEIGHTS", "", "SOLVER.METRICS_PERIOD", str(10**9),
             "SOLVER.MAX_ITER", str(10**9), "UDA.DEBUG_IMG_INTERVAL", "0", "TEST.EVAL_PERIOD", "0",
             "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", tempfile.mkdtemp(prefix="hrda_bench_")]
    overrides = fixed + (TINY_OPTS if tiny else []) + _OFF + VARIANTS[variant]["opts"] + list(opts)
    return load_config(base or str(PAPER_CONFIG), overrides, freeze=True)


def plan_variants(variants: str, phases: Sequence[str]) -> Dict[str, List[str]]:
    """``{variant: [phase, ...]}`` for the comma list ``variants`` (each optionally ``name:phase+phase``) and the
    requested ``phases``: a variant runs the requested phases it changes; the baseline always runs, every
    requested phase it supports. Variants left with no phase are dropped. ``ValueError`` names an unknown
    variant or phase."""
    unknown_phases = [ph for ph in phases if ph not in PHASE_NAMES]
    if unknown_phases:
        raise ValueError(f"--phases must be a comma list of {sorted(PHASE_NAMES)}, got {','.join(phases)!r}")
    plan: Dict[str, List[str]] = {"baseline": []}
    for item in (v for v in variants.split(",") if v):
        name, _, only = item.partition(":")
        if name not in VARIANTS:
            raise ValueError(f"unknown variant {name!r} in --variants; choose from {sorted(VARIANTS)}")
        plan[name] = only.split("+") if only else []
    for name, only in plan.items():
        plan[name] = [ph for ph in phases if ph in VARIANTS[name]["phases"] and (not only or ph in only)]
    return {k: v for k, v in plan.items() if v}
