#!/usr/bin/env python
"""Benchmark of HRDA training and inference: every variant against a baseline measured in the same run.

    python tools/benchmark.py --tiny                      # mit_b0, 512 crops, HR 256, slide 512/256, 1+1 images
    python tools/benchmark.py                             # the paper's GTA->Cityscapes config (mit_b5, 1024 crops)
    python tools/benchmark.py --tiny --variants baseline,tile_reuse --json out.json
    python tools/benchmark.py --phases fwdbwd --variants baseline,ckpt MODEL.MIT.VARIANT mit_b5 \
        INPUT.SOURCE.CROP_SIZE "[512, 512]" MODEL.HRDA.HR_CROP_SIZE "[256, 256]"

Each (variant, phase) runs in a fresh subprocess, so that its peak memory is its own (CPU: the peak resident set
size of that process; CUDA: ``torch.cuda.max_memory_allocated``). Phases:

* ``train``: full DACS iterations through the project's trainer (``DACSStepTrainer.run_step``) on synthetic data:
  median seconds per iteration after warm-up and the median time of each stage (EMA update, source fwd/bwd incl.
  the feature distance, pseudo-labels, mixing + strong augmentation, mixed fwd/bwd, optimizer step; the device
  is synchronised at every stage boundary). The first iteration is reported separately (``first_s``: it
  includes ``torch.compile`` for the compile variant).
* ``infer``: slide inference (TEST.SLIDE windows, the test image of --image-size) and whole-image inference,
  images/s over --infer-runs runs after one warm-up.
* ``fwdbwd``: ONE student training forward/backward with a fixed detail crop (train mode: dropout and
  drop-path on) and how much it grows the peak memory over the memory before it; then the median time of
  --iters more such steps; a per-parameter gradient-norm fingerprint of the first step checks that a
  variant's gradients equal the baseline's.

FLOPs are counted with fvcore's ``FlopCountAnalysis`` (one multiply-add = one FLOP, fvcore's convention;
``F.scaled_dot_product_attention`` is counted as its two matrix products). Training FLOPs per iteration are
``3 x (source + mixed student forward) + teacher pseudo-label forward + ImageNet-model forward`` (backward =
2 x forward; activation-checkpointing recomputation is not counted, as usual for model FLOP utilisation). On
CUDA the achieved TFLOP/s (2 FLOPs per multiply-add) is related to the device's peak from ``PEAK_TFLOPS``.

The baseline is float32, no activation checkpointing, no tile reuse, no compile; every other setting is the
config's. Ratios (``x`` columns) are variant / baseline for throughput and time (higher = faster), and
variant / baseline for memory (lower = leaner).
"""
import argparse
import contextlib
import itertools
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

logger = logging.getLogger("hrda_d2.benchmark")

PAPER_CONFIG = REPO / "configs" / "gtaHR2csHR_hrda.yaml"

# --tiny: mit_b0, 512x512 source/target crops, HR crop 256, slide windows 512 / stride 256, batch 1 + 1
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

# name -> (config overrides on top of the baseline's, phases it changes, description)
VARIANTS: Dict[str, Dict[str, Any]] = {
    "baseline": dict(opts=[], phases=("train", "infer", "fwdbwd"),
                     desc="fp32, no checkpointing, no tile reuse, no compile"),
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
}
# "variant:phase+phase" restricts a variant to some of its phases
DEFAULT_VARIANTS = {"cpu": "baseline,tile_reuse,ckpt:fwdbwd,ckpt_heads,bf16",
                    "cuda": "baseline,tile_reuse,ckpt,bf16,bf16_ckpt,fast"}

# dense peak TFLOP/s (float32 without TF32, bf16/fp16 tensor cores) assumed for MFU; None = unknown
PEAK_TFLOPS = {
    "H200": (67.0, 989.0), "H100": (67.0, 989.0), "A100": (19.5, 312.0), "A10": (31.2, 125.0),
    "L40S": (91.6, 362.0), "L4": (30.3, 121.0), "RTX 4090": (82.6, 165.0), "RTX 3090": (35.6, 71.0),
    "TITAN RTX": (16.3, 130.0), "V100": (15.7, 125.0), "T4": (8.1, 65.0),
}


# ---------------------------------------------------------------------------------------------- helpers
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


class Memory:
    """Peak memory of this process (CUDA: allocated by torch on the device; CPU: resident set size)."""

    def __init__(self, device):
        import torch

        self.device = device
        self.cuda = device.type == "cuda"
        self._torch = torch

    def current_mb(self) -> float:
        return self._torch.cuda.memory_allocated(self.device) / 2**20 if self.cuda else _current_rss_mb()

    def reset_peak(self) -> None:
        if self.cuda:
            self._torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mb(self) -> float:
        return self._torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda else _peak_rss_mb()


def build_cfg(base: Optional[str], tiny: bool, variant: str, opts: Sequence[str], device: str):
    from hrda_d2.config import load_config

    fixed = ["MODEL.DEVICE", device, "MODEL.WEIGHTS", "", "SOLVER.METRICS_PERIOD", str(10**9),
             "SOLVER.MAX_ITER", str(10**9), "UDA.DEBUG_IMG_INTERVAL", "0", "TEST.EVAL_PERIOD", "0",
             "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", tempfile.mkdtemp(prefix="hrda_bench_")]
    overrides = fixed + (TINY_OPTS if tiny else []) + _OFF + VARIANTS[variant]["opts"] + list(opts)
    return load_config(base or str(PAPER_CONFIG), overrides, freeze=True)


def synthetic_batch(cfg, which: str, generator) -> List[Dict[str, Any]]:
    """Mapper-like dicts of one side: 0..255 images, block labels (so ClassMix / FD have classes to use)."""
    import torch

    h, w = (cfg.INPUT.SOURCE if which == "source" else cfg.INPUT.TARGET).CROP_SIZE
    out = []
    for _ in range(cfg.SOLVER.IMS_PER_BATCH):
        yy, xx = torch.meshgrid(torch.arange(h) // 64, torch.arange(w) // 64, indexing="ij")
        d = {"image": torch.rand(3, h, w, generator=generator) * 255,
             "sem_seg": ((yy + 3 * xx) % cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES).long()}
        if which == "target":
            d["valid_pseudo_mask"] = torch.ones(h, w, dtype=torch.uint8)
        out.append(d)
    return out


def _attention_flop_handle(inputs, outputs):
    """fvcore handle for ``aten::scaled_dot_product_attention``: ``q k^T`` and ``attn v`` multiply-adds."""
    from fvcore.nn.jit_handles import get_shape

    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    batch = 1
    for s in q[:-2]:
        batch *= s
    return 2 * batch * q[-2] * k[-2] * q[-1]


def count_flops(owner, fn: Callable, *inputs) -> int:
    """fvcore multiply-adds of ``fn(*inputs)``; ``owner`` is the module whose parameters ``fn`` uses (traced
    as a submodule of a wrapper, so that its parameters are graph inputs, not constants)."""
    import torch
    from fvcore.nn import FlopCountAnalysis

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.owner = owner

        def forward(self, *args):
            out = fn(*args)
            if isinstance(out, dict):
                return sum(v.float().sum() for v in out.values())
            return out

    analysis = FlopCountAnalysis(Wrapper(), inputs)
    analysis.set_op_handle("aten::scaled_dot_product_attention", _attention_flop_handle)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        return int(analysis.total())


# ------------------------------------------------------------------------------------------------- phases
def _dacs_module():
    from hrda_d2.uda import dacs_step

    return dacs_step


def synthetic_trainer(cfg):
    """The project's trainer (``HRDATrainer``) on synthetic data, without hooks (no evaluation, no periodic
    checkpoints): iteration ``i`` gets synthetic batch ``i % 2``, also after a resume."""
    import torch

    from hrda_d2.engine import HRDATrainer

    class SyntheticTrainer(HRDATrainer):
        @classmethod
        def build_train_loader(cls, cfg, start_iter: int = 0):
            g = torch.Generator().manual_seed(0)
            pairs = [(synthetic_batch(cfg, "source", g), synthetic_batch(cfg, "target", g)) for _ in range(2)]
            return itertools.islice(itertools.cycle(pairs), start_iter % 2, None)

        def build_hooks(self):
            return []

    return SyntheticTrainer(cfg)


def phase_train(cfg, args) -> Dict[str, Any]:
    import torch
    from detectron2.utils.events import EventStorage

    trainer = synthetic_trainer(cfg)
    step = trainer.dacs_step
    device = step.student.device
    memory = Memory(device)
    marks: Dict[str, float] = {}

    def mark(name: str) -> None:
        _sync(device)
        marks[name] = time.perf_counter()

    def timed(fn: Callable, before: str, after: Optional[str] = None) -> Callable:
        def wrapper(*a, **k):
            mark(before)
            out = fn(*a, **k)
            if after:
                mark(after)
            return out
        return wrapper

    dacs = _dacs_module()
    dacs.ema_update_ = timed(dacs.ema_update_, "ema0", "ema1")
    dacs.class_mix_masks = timed(dacs.class_mix_masks, "mix0")
    step.teacher.generate_pseudo_label = timed(step.teacher.generate_pseudo_label, "pl0")
    student_forward = step.student.forward

    def forward(*a, **k):
        if "weight" in k:  # the mixed forward
            mark("mixed0")
        return student_forward(*a, **k)

    step.student.forward = forward
    step._optimizer_step = timed(step._optimizer_step, "opt0", "opt1")
    stages = {"ema": ("ema0", "ema1"), "source_fwd_bwd": ("ema1", "pl0"), "pseudo_labels": ("pl0", "mix0"),
              "mix_augment": ("mix0", "mixed0"), "mixed_fwd_bwd": ("mixed0", "opt0"), "optimizer": ("opt0", "opt1")}

    times: List[float] = []
    first = None
    per_stage: Dict[str, List[float]] = {k: [] for k in stages}
    before_mb = memory.current_mb()
    memory.reset_peak()
    with EventStorage(0) as storage:
        for it in range(args.warmup + args.iters):
            step.iter = storage.iter = it
            mark("start")
            step.run_step()
            mark("end")
            if it == 0:
                first = marks["end"] - marks["start"]
            if it >= args.warmup:
                times.append(marks["end"] - marks["start"])
                for k, (a, b) in stages.items():
                    per_stage[k].append(marks[b] - marks[a])
    result = {"s_per_iter": statistics.median(times), "first_s": first, "peak_mb": memory.peak_mb(),
              "before_mb": before_mb, "stages_s": {k: statistics.median(v) for k, v in per_stage.items()}}
    if args.flops:
        student, teacher, imnet = step.student, step.teacher, step.imnet_model
        src = synthetic_batch(cfg, "source", torch.Generator().manual_seed(1))
        images = student.normalize(torch.stack([d["image"] for d in src]))
        labels = torch.stack([d["sem_seg"] for d in src]).to(device)
        box = (0, student.hr_crop_size[0], 0, student.hr_crop_size[1]) if student.is_multi_scale else None
        fwd = count_flops(student, lambda x, y: student.forward_train(x, y, crop_box=box), images, labels)
        pl = count_flops(teacher, teacher.generate_pseudo_label, images)
        fd = count_flops(imnet, imnet.extract_features, images) if imnet is not None else 0
        result["flops"] = {"student_fwd": fwd, "teacher_fwd": pl, "imnet_fwd": fd, "iteration": 6 * fwd + pl + fd}
    return result


def phase_infer(cfg, args) -> Dict[str, Any]:
    import torch
    from detectron2.modeling import build_model

    model = build_model(cfg).eval()
    device = model.device
    memory = Memory(device)
    h, w = args.image_size
    images = model.normalize(torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)) * 255)
    amp = (torch.autocast(device.type, dtype={"bfloat16": torch.bfloat16, "float16": torch.float16}[
        cfg.SOLVER.AMP.DTYPE]) if cfg.SOLVER.AMP.ENABLED else contextlib.nullcontext())
    result: Dict[str, Any] = {"before_mb": memory.current_mb()}
    memory.reset_peak()
    modes = VARIANTS[args.worker_variant].get("infer_modes", ("slide", "whole"))
    for mode, fn in (("slide", model.slide_inference), ("whole", model.whole_inference)):
        if mode not in modes:
            continue
        with torch.no_grad(), amp:
            _sync(device)
            t0 = time.perf_counter()
            fn(images)
            _sync(device)
            result[f"{mode}_first_s"] = time.perf_counter() - t0
            runs = []
            for _ in range(args.infer_runs):
                t0 = time.perf_counter()
                fn(images)
                _sync(device)
                runs.append(time.perf_counter() - t0)
        result[f"{mode}_img_s"] = 1.0 / statistics.median(runs)
        result[f"{mode}_peak_mb"] = memory.peak_mb()
        memory.reset_peak()
    if args.flops:
        fns = {"slide": model.slide_inference, "whole": model.whole_inference}
        result["flops"] = {mode: count_flops(model, fns[mode], images) for mode in modes}
    return result


def phase_fwdbwd(cfg, args) -> Dict[str, Any]:
    import torch
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(cfg).train()
    device = model.device
    memory = Memory(device)
    g = torch.Generator().manual_seed(0)
    batch = synthetic_batch(cfg, "source", g)
    images = model.normalize(torch.stack([d["image"] for d in batch]))
    labels = torch.stack([d["sem_seg"] for d in batch]).to(device)
    box = (0, model.hr_crop_size[0], 0, model.hr_crop_size[1]) if model.is_multi_scale else None
    amp = (torch.autocast(device.type, dtype={"bfloat16": torch.bfloat16, "float16": torch.float16}[
        cfg.SOLVER.AMP.DTYPE]) if cfg.SOLVER.AMP.ENABLED else contextlib.nullcontext())

    def step() -> float:
        torch.manual_seed(1)  # the same dropout / drop-path masks in every variant
        model.zero_grad(set_to_none=False)
        _sync(device)
        t0 = time.perf_counter()
        with amp:
            losses = model.forward_train(images, labels, crop_box=box)
        sum(losses.values()).backward()
        _sync(device)
        return time.perf_counter() - t0

    for p in model.parameters():  # gradient buffers exist before the measured step, as in training
        p.grad = torch.zeros_like(p)
    before = memory.current_mb()
    memory.reset_peak()
    first = step()
    peak = memory.peak_mb()
    fingerprint = [float(p.grad.double().norm()) for p in model.parameters()]
    seconds = statistics.median(step() for _ in range(args.iters))
    return {"first_s": first, "s": seconds, "before_mb": before, "peak_mb": peak, "growth_mb": peak - before,
            "grad_norms": fingerprint}


PHASES = {"train": phase_train, "infer": phase_infer, "fwdbwd": phase_fwdbwd}


# ------------------------------------------------------------------------------------------------- driver
def run_worker(args) -> None:
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    cfg = build_cfg(args.config_file, args.tiny, args.worker_variant, args.opts, args.device)
    result = PHASES[args.worker_phase](cfg, args)
    result["threads"] = torch.get_num_threads()
    Path(args.worker_out).write_text(json.dumps(result))


def device_info(device: str) -> Dict[str, Any]:
    import platform

    import torch

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(0)
        peak = next((v for k, v in PEAK_TFLOPS.items() if k.lower() in name.lower()), None)
        return {"device": name, "peak_tflops_fp32": peak and peak[0], "peak_tflops_bf16": peak and peak[1]}
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"device": f"CPU {cpu} ({os.cpu_count()} cores visible)"}


def _fmt(v: Optional[float], spec: str = ".3g") -> str:
    return "–" if v is None else format(v, spec)


def _ratio(v: Optional[float], base: Optional[float], kind: str) -> str:
    """speed-up for "rate" (v / base) and "time" (base / v): > 1 = faster; "memory": v / base, < 1 = leaner."""
    if v is None or base is None or base == 0 or v == 0:
        return "–"
    return f"{(base / v if kind == 'time' else v / base):.2f}×"


def summarise(results: Dict[str, Dict[str, Dict[str, Any]]], info: Dict[str, Any]) -> str:
    base = results.get("baseline", {})

    def get(variant: str, phase: str, key: str):
        return results.get(variant, {}).get(phase, {}).get(key)

    columns = [  # header, phase, key, kind of ratio
        ("train s/it", "train", "s_per_iter", "time"), ("train peak MB", "train", "peak_mb", "memory"),
        ("slide img/s", "infer", "slide_img_s", "rate"), ("slide peak MB", "infer", "slide_peak_mb", "memory"),
        ("whole img/s", "infer", "whole_img_s", "rate"),
        ("fwd/bwd s", "fwdbwd", "s", "time"), ("fwd/bwd peak growth MB", "fwdbwd", "growth_mb", "memory"),
    ]
    lines = [f"Device: {info['device']}", "", "× after a time or img/s = speed-up over the baseline (> 1 = faster); "
             "× after memory = variant / baseline (< 1 = leaner).", ""]
    head = "| variant | " + " | ".join(f"{c[0]} | ×" for c in columns) + " |"
    lines += [head, "|" + "---|" * (1 + 2 * len(columns))]
    for variant in results:
        cells = []
        for _, phase, key, kind in columns:
            v = get(variant, phase, key)
            cells += [_fmt(v), _ratio(v, base.get(phase, {}).get(key), kind) if variant != "baseline" else "–"]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    stage_rows = [(v, r["train"]) for v, r in results.items() if "train" in r]
    if stage_rows:
        names = list(stage_rows[0][1]["stages_s"])
        lines += ["", "Training stages (median s): ", "", "| variant | " + " | ".join(names) + " | first iteration s |",
                  "|" + "---|" * (len(names) + 2)]
        for v, r in stage_rows:
            lines.append(f"| {v} | " + " | ".join(_fmt(r["stages_s"][n]) for n in names)
                         + f" | {_fmt(r['first_s'])} |")
    grads = base.get("fwdbwd", {}).get("grad_norms")
    for variant, r in results.items():
        if variant != "baseline" and grads and "grad_norms" in r.get("fwdbwd", {}):
            other = r["fwdbwd"]["grad_norms"]
            rel = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(grads, other))
            lines.append(f"{variant}: max relative difference of per-parameter gradient norms vs baseline {rel:.2g}")
    flops_lines = []
    for variant, r in results.items():
        for phase, unit in (("train", "iteration"), ("infer", "slide"), ("infer", "whole")):
            fl = r.get(phase, {}).get("flops", {}).get(unit)
            if fl:
                text = f"{variant} {phase} {unit}: {fl / 1e9:.1f} GMAC (fvcore)"
                seconds = (r[phase]["s_per_iter"] if phase == "train" else 1.0 / r[phase][f"{unit}_img_s"])
                tflops = 2 * fl / seconds / 1e12
                text += f", {tflops:.3g} TFLOP/s achieved"
                bf16 = "bf16" in variant or variant == "fast"
                peak = info.get("peak_tflops_bf16" if bf16 else "peak_tflops_fp32")
                if peak:
                    text += f" = {100 * tflops / peak:.1f} % of the assumed {peak:g} TFLOP/s peak"
                flops_lines.append(text)
    if flops_lines:
        lines += [""] + flops_lines
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=None, help=f"config (default {PAPER_CONFIG.relative_to(REPO)})")
    p.add_argument("--tiny", action="store_true", help="mit_b0, 512 crops, HR crop 256, slide 512/256, 1+1 images")
    p.add_argument("--variants", default=None, help=f"comma list of {sorted(VARIANTS)}, each optionally "
                                                    f"restricted to phases as in ckpt:fwdbwd; baseline always runs "
                                                    f"(default cpu: {DEFAULT_VARIANTS['cpu']}; cuda: "
                                                    f"{DEFAULT_VARIANTS['cuda']})")
    p.add_argument("--phases", default="train,infer,fwdbwd", help="comma list of train, infer, fwdbwd")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--iters", type=int, default=None, help="measured training iterations (after --warmup)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--infer-runs", type=int, default=None, help="measured inference runs (after one warm-up)")
    p.add_argument("--image-size", type=int, nargs=2, default=None, help="test image H W "
                                                                       "(default 1024 2048; --tiny 512 1024)")
    p.add_argument("--no-flops", dest="flops", action="store_false", help="skip the fvcore FLOP counts")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0 = torch's default)")
    p.add_argument("--json", default=None, help="write the raw numbers here")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per (variant, phase) process")
    p.add_argument("--worker-variant", help=argparse.SUPPRESS)
    p.add_argument("--worker-phase", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = p.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    args.iters = args.iters or (2 if kind == "cpu" else 10)
    args.infer_runs = args.infer_runs or (1 if kind == "cpu" else 10)
    args.image_size = args.image_size or ([512, 1024] if args.tiny else [1024, 2048])
    args.phase_list = [ph for ph in args.phases.split(",") if ph]
    if any(ph not in PHASES for ph in args.phase_list):
        p.error(f"--phases must be a comma list of {sorted(PHASES)}, got {args.phases!r}")
    plan: Dict[str, List[str]] = {"baseline": []}
    for item in (v for v in (args.variants or DEFAULT_VARIANTS[kind]).split(",") if v):
        name, _, only = item.partition(":")
        if name not in VARIANTS:
            p.error(f"unknown variant {name!r} in --variants; choose from {sorted(VARIANTS)}")
        plan[name] = only.split("+") if only else []
    # a variant runs the requested phases it changes (the baseline: every requested phase a variant needs)
    for name, only in plan.items():
        plan[name] = [ph for ph in args.phase_list if ph in VARIANTS[name]["phases"] and (not only or ph in only)]
    args.plan = {k: v for k, v in plan.items() if v}
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker_phase:
        run_worker(args)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    results: Dict[str, Dict[str, Dict[str, Any]]] = {}
    forwarded = ["--device", args.device, "--iters", str(args.iters), "--warmup", str(args.warmup),
                 "--infer-runs", str(args.infer_runs), "--threads", str(args.threads),
                 "--image-size", *map(str, args.image_size)]
    forwarded += (["--tiny"] if args.tiny else []) + ([] if args.flops else ["--no-flops"])
    forwarded += ["--config-file", args.config_file] if args.config_file else []
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant, phases in args.plan.items():
            for phase in phases:
                out = Path(tmp) / f"{variant}_{phase}.json"
                # FLOPs: the baseline counts them; tile reuse changes the slide inference's
                count = args.flops and (variant == "baseline" or (variant == "tile_reuse" and phase == "infer"))
                cmd = [sys.executable, str(Path(__file__).resolve()), *forwarded, "--worker-variant", variant,
                       "--worker-phase", phase, "--worker-out", str(out)] + ([] if count else ["--no-flops"])
                cmd += list(args.opts)
                logger.info("[%6.0f s] %s / %s ...", time.perf_counter() - start, variant, phase)
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                except subprocess.TimeoutExpired:
                    failures.append(f"{variant}/{phase}: timed out after {args.timeout:g} s")
                    continue
                if proc.returncode != 0 or not out.exists():
                    failures.append(f"{variant}/{phase}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
                    continue
                results.setdefault(variant, {})[phase] = json.loads(out.read_text())
    info = device_info(args.device)
    table = summarise(results, info)
    config = str(args.config_file or PAPER_CONFIG.relative_to(REPO)) + (" --tiny" if args.tiny else "")
    print(f"\nConfig: {config} {' '.join(args.opts)}".rstrip())
    print("Variants: " + "; ".join(f"{v} = {VARIANTS[v]['desc']} ({'+'.join(ph)})" for v, ph in args.plan.items()))
    print(table)
    print(f"\nTotal benchmark time {time.perf_counter() - start:.0f} s")
    if args.json:
        payload = {"config": config, "opts": list(args.opts), "info": info, "args": {
            k: v for k, v in vars(args).items() if not k.startswith("worker")}, "results": results,
            "failures": failures, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
        Path(args.json).write_text(json.dumps(payload, indent=1))
    for f in failures:
        print(f"FAILED {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
