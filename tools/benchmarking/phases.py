"""What one (variant, phase) worker process measures.

* ``train``: full DACS iterations through the project's trainer (``DACSStepTrainer.run_step``) on synthetic data:
  median seconds per iteration after warm-up and the median time of each named stage of the step (EMA update,
  source fwd/bwd incl. the feature distance, pseudo-labels, mixing + strong augmentation, mixed fwd/bwd, MIC's
  masked fwd/bwd, optimizer step), timed by a stage listener that synchronises the device at every stage boundary
  (:class:`.timing.StageTimer`). The first iteration is reported separately (``first_s``: it includes
  ``torch.compile`` for the compile variant).
* ``infer``: slide inference (TEST.SLIDE windows, a test image of ``image_size``) and whole-image inference,
  images/s over ``infer_runs`` runs after one warm-up.
* ``fwdbwd``: ONE student training forward/backward with a fixed detail crop (train mode: dropout and drop-path
  on) and how much it grows the peak memory over the memory before it; then the median time of ``iters`` more
  such steps; a per-parameter gradient-norm fingerprint of the first step checks that a variant's gradients equal
  the baseline's.
* ``ddp``: 2 ranks, backward passes / gradient sync rounds / bucket all-reduces per iteration (:mod:`.ddp`).
* ``vfm_infer``: VFM-UDA against MIC(HRDA) slide inference with the same DINOv2 ViT, alternating rounds in one
  process, images/s and FLOPs and their ratio (:mod:`.vfm_inference`).
* ``deploy``: eager PyTorch against the exported model (TorchScript, onnxruntime and its options) on the same
  image, alternating rounds in one process, images/s and their ratios to eager (:mod:`.deploy`).

Training FLOPs per iteration are ``3 x (source + mixed student forward) + teacher pseudo-label forward +
ImageNet-model forward`` (backward = 2 x forward; activation-checkpointing recomputation is not counted, as usual
for model FLOP utilisation).
"""
import statistics
import time
from contextlib import nullcontext
from typing import Any, Callable, Dict

import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from hrda_d2.uda import amp_dtype_from_config
from .ddp import phase_ddp
from .flops import count_flops
from .memory import MemoryMeter
from .settings import BenchmarkSettings
from .synthetic import synthetic_batch, synthetic_trainer
from .timing import StageTimer, synchronize
from .variants import VARIANTS, build_cfg
from .deploy import phase_deploy
from .vfm_inference import phase_vfm_infer

__all__ = ["PHASES", "run_phase"]


def _autocast(cfg, device: torch.device):
    dtype = amp_dtype_from_config(cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.DTYPE)
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _source_inputs(cfg, model, seed: int):
    """Normalised images ``N x 3 x H x W``, labels ``N x H x W`` of a synthetic source batch on the model's device,
    and the fixed detail crop box (the top-left HR crop; None for a single-scale model)."""
    batch = synthetic_batch(cfg, "source", torch.Generator().manual_seed(seed))
    images = model.normalize(torch.stack([d["image"] for d in batch]))
    labels = torch.stack([d["sem_seg"] for d in batch]).to(model.device)
    box = (0, model.hr_crop_size[0], 0, model.hr_crop_size[1]) if model.is_multi_scale else None
    return images, labels, box


def phase_train(cfg, settings: BenchmarkSettings, variant: str) -> Dict[str, Any]:
    trainer = synthetic_trainer(cfg)
    step = trainer.uda_step
    device = step.student.device
    memory = MemoryMeter(device)
    timer = StageTimer(device)
    step.stage_listener = timer
    times, stages = [], {}
    first = None
    before_mb = memory.current_mb()
    memory.reset_peak()
    with EventStorage(0) as storage:
        for it in range(settings.warmup + settings.iters):
            step.iter = storage.iter = it
            timer.clear()
            synchronize(device)
            start = time.perf_counter()
            step.run_step()
            synchronize(device)
            seconds = time.perf_counter() - start
            if it == 0:
                first = seconds
            if it >= settings.warmup:
                times.append(seconds)
                for label, values in timer.seconds.items():
                    stages.setdefault(label, []).append(sum(values))
    result = {"s_per_iter": statistics.median(times), "first_s": first, "peak_mb": memory.peak_mb(),
              "before_mb": before_mb, "stages_s": {k: statistics.median(v) for k, v in stages.items()}}
    if settings.flops:
        student, teacher, imnet = step.student, step.teacher, step.imnet_model
        images, labels, box = _source_inputs(cfg, student, seed=1)
        fwd = count_flops(student, lambda x, y: student.forward_train(x, y, crop_box=box).losses, images,
                           labels)
        pl = count_flops(teacher, teacher.generate_pseudo_label, images)
        fd = count_flops(imnet, imnet.extract_features, images) if imnet is not None else 0
        result["flops"] = {"student_fwd": fwd, "teacher_fwd": pl, "imnet_fwd": fd, "iteration": 6 * fwd + pl + fd}
    return result


def phase_infer(cfg, settings: BenchmarkSettings, variant: str) -> Dict[str, Any]:
    model = build_model(cfg).eval()
    device = model.device
    memory = MemoryMeter(device)
    h, w = settings.image_size
    images = model.normalize(torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)) * 255)
    result: Dict[str, Any] = {"before_mb": memory.current_mb()}
    memory.reset_peak()
    modes = VARIANTS[variant].get("infer_modes", ("slide", "whole"))
    inference = {"slide": model.slide_inference, "whole": model.whole_inference}
    for mode in modes:
        fn = inference[mode]
        with torch.no_grad(), _autocast(cfg, device):
            synchronize(device)
            start = time.perf_counter()
            fn(images)
            synchronize(device)
            result[f"{mode}_first_s"] = time.perf_counter() - start
            runs = []
            for _ in range(settings.infer_runs):
                start = time.perf_counter()
                fn(images)
                synchronize(device)
                runs.append(time.perf_counter() - start)
        result[f"{mode}_img_s"] = 1.0 / statistics.median(runs)
        result[f"{mode}_peak_mb"] = memory.peak_mb()
        memory.reset_peak()
    if settings.flops:
        result["flops"] = {mode: count_flops(model, inference[mode], images) for mode in modes}
    return result


def phase_fwdbwd(cfg, settings: BenchmarkSettings, variant: str) -> Dict[str, Any]:
    torch.manual_seed(0)
    model = build_model(cfg).train()
    device = model.device
    memory = MemoryMeter(device)
    images, labels, box = _source_inputs(cfg, model, seed=0)

    def step() -> float:
        torch.manual_seed(1)  # the same dropout / drop-path masks in every variant
        model.zero_grad(set_to_none=False)
        synchronize(device)
        start = time.perf_counter()
        with _autocast(cfg, device):
            losses = model.forward_train(images, labels, crop_box=box).losses
        sum(losses.values()).backward()
        synchronize(device)
        return time.perf_counter() - start

    for p in model.parameters():  # gradient buffers exist before the measured step, as in training
        p.grad = torch.zeros_like(p)
    before = memory.current_mb()
    memory.reset_peak()
    first = step()
    peak = memory.peak_mb()
    fingerprint = [float(p.grad.double().norm()) for p in model.parameters()]
    seconds = statistics.median(step() for _ in range(settings.iters))
    return {"first_s": first, "s": seconds, "before_mb": before, "peak_mb": peak, "growth_mb": peak - before,
            "grad_norms": fingerprint}


def _phase_ddp(cfg, settings: BenchmarkSettings, variant: str) -> Dict[str, Any]:
    return phase_ddp(settings, variant)  # every rank builds its own config


def _phase_vfm_infer(cfg, settings: BenchmarkSettings, variant: str) -> Dict[str, Any]:
    return phase_vfm_infer(settings)  # builds the configs of its two recipes


def _phase_deploy(cfg, settings: BenchmarkSettings, variant: str) -> Dict[str, Any]:
    return phase_deploy(settings)  # builds the demo HRDA's and the one-scale model's configs


PHASES: Dict[str, Callable[..., Dict[str, Any]]] = {
    "train": phase_train, "infer": phase_infer, "fwdbwd": phase_fwdbwd, "ddp": _phase_ddp,
    "vfm_infer": _phase_vfm_infer, "deploy": _phase_deploy}
# phases that build their own configs (not the variant's of --config-file)
_OWN_CONFIGS = ("ddp", "vfm_infer", "deploy")


def run_phase(settings: BenchmarkSettings, variant: str, phase: str) -> Dict[str, Any]:
    """Measure ``phase`` of ``variant`` in this process (the variant's config is built here)."""
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    cfg = None if phase in _OWN_CONFIGS else build_cfg(settings.config_file, settings.tiny, variant, settings.opts,
                                                  settings.device)
    result = PHASES[phase](cfg, settings, variant)
    result["threads"] = torch.get_num_threads()
    return result
