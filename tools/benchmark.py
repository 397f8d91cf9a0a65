#!/usr/bin/env python
"""Benchmark of HRDA training and inference: every variant against a baseline measured in the same run.

    python tools/benchmark.py --tiny                      # mit_b0, 512 crops, HR 256, slide 512/256, 1+1 images
    python tools/benchmark.py                             # the paper's GTA->Cityscapes config (mit_b5, 1024 crops)
    python tools/benchmark.py --tiny --variants baseline,tile_reuse --json out.json
    python tools/benchmark.py --phases fwdbwd --variants baseline,ckpt MODEL.MIT.VARIANT mit_b5 \
        INPUT.SOURCE.CROP_SIZE "[512, 512]" MODEL.HRDA.HR_CROP_SIZE "[256, 256]"
    python tools/benchmark.py --tiny --phases ddp --variants mic,source_only   # gradient all-reduces under DDP
    python tools/benchmark.py --phases vfm_infer --vit s --infer-runs 3         # VFM-UDA vs MIC(HRDA), same ViT
    python tools/benchmark.py --phases deploy                 # eager vs TorchScript vs onnxruntime, tiny HRDA

Each (variant, phase) runs in a fresh subprocess, so that its peak memory is its own (CPU: the peak resident set
size of that process; CUDA: ``torch.cuda.max_memory_allocated``). Phases (``tools/benchmarking/phases.py``):

* ``train``: full DACS iterations through the project's trainer on synthetic data: median seconds per iteration
  after warm-up and the median time of each named stage of the step (the device synchronised at every stage
  boundary by a stage listener); the first iteration separately (``first_s``: it includes ``torch.compile`` for
  the compile variant).
* ``infer``: slide and whole-image inference, images/s over --infer-runs runs after one warm-up.
* ``fwdbwd``: ONE student training forward/backward with a fixed detail crop and how much it grows the peak
  memory; then the median time of --iters more; a gradient-norm fingerprint against the baseline's.
* ``ddp`` (not in the default --phases): 2 ranks (CPU: gloo; CUDA: NCCL, skipped with fewer than 2 GPUs),
  backward passes, gradient sync rounds and bucket all-reduces per iteration. Per rank: SOLVER.IMS_PER_BATCH /
  2 images, at least 1.
* ``vfm_infer`` (not in the default --phases; the baseline only): VFM-UDA (configs/vfm_uda/gta2cs_vfm_uda_vitb.yaml)
  against MIC(HRDA) (configs/gtaHR2csHR_mic_hrda_dinov2_vitb.yaml) slide inference with the same DINOv2 ViT
  (--vit, random weights) on one image of --image-size (the test windows, strides and HR tiles scaled with its
  height / 1024), --infer-runs alternating rounds (default 3) through ``model([{"image", "height", "width"}])``:
  median s/image, images/s, fvcore FLOPs, and the ratios VFM-UDA / MIC(HRDA). --config-file, --tiny's config
  switches and --variants do not apply to it; config overrides apply to both recipes.
* ``deploy`` (not in the default --phases; the baseline only; CPU): the tiny demo HRDA (configs/demo_hrda.yaml)
  through eager PyTorch (``HRDA.inference``), its TorchScript export and its onnxruntime export
  (``hrda_d2_deploy.ExportedModel``) on the same image of --image-size (default 512 1024, the network input: no
  test rescale) and of the demo's 128 x 256, --infer-runs alternating rounds (default 3), medians, every row's
  ratio to eager of the same image and threads, argmax agreement and largest logit difference against it. At
  --image-size also onnxruntime without batch chunks; at 128 x 256 also onnxruntime optimisation levels, int8 and
  fp16 exports, both thread counts (1 and the cores; --threads N: N only) and a one-scale model (tiny DAFormer,
  whole inference); --deploy-full measures those at --image-size too. Then where the time goes at --image-size
  (graph calls vs NumPy merging, onnxruntime's and eager's operators). --tiny: every row once at 128 x 256 (a
  quick check). Config overrides apply to the demo HRDA (e.g. MODEL.WEIGHTS of a trained demo model).

FLOPs are counted with fvcore's ``FlopCountAnalysis`` (one multiply-add = one FLOP, fvcore's convention;
``F.scaled_dot_product_attention`` is counted as its two matrix products). Training FLOPs per iteration are
``3 x (source + mixed student forward) + teacher pseudo-label forward + ImageNet-model forward``. On CUDA the
achieved TFLOP/s (2 FLOPs per multiply-add) is related to the device's peak (MFU).

The baseline is float32, no activation checkpointing, no tile reuse, no compile; every other setting is the
config's. Ratios (``x`` columns) are variant / baseline for throughput and time (higher = faster), and
variant / baseline for memory (lower = leaner).
"""
import argparse
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarking.report import device_info, summarise  # noqa: E402
from benchmarking.runner import run_plan  # noqa: E402
from benchmarking.settings import BenchmarkSettings  # noqa: E402
from benchmarking.variants import DEFAULT_VARIANTS, PAPER_CONFIG, PHASE_NAMES, VARIANTS, plan_variants  # noqa: E402
from benchmarking.vfm_inference import VIT_NAMES, scaled_geometry  # noqa: E402

logger = logging.getLogger("hrda_d2.benchmark")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=None, help=f"config (default {PAPER_CONFIG.relative_to(REPO)})")
    p.add_argument("--tiny", action="store_true", help="mit_b0, 512 crops, HR crop 256, slide 512/256, 1+1 images")
    p.add_argument("--variants", default=None, help=f"comma list of {sorted(VARIANTS)}, each optionally "
                                                    f"restricted to phases as in ckpt:fwdbwd; baseline always runs "
                                                    f"(default cpu: {DEFAULT_VARIANTS['cpu']}; cuda: "
                                                    f"{DEFAULT_VARIANTS['cuda']})")
    p.add_argument("--phases", default="train,infer,fwdbwd", help=f"comma list of {', '.join(PHASE_NAMES)}")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--iters", type=int, default=None, help="measured training iterations (after --warmup)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--infer-runs", type=int, default=None, help="measured inference runs (after one warm-up)")
    p.add_argument("--image-size", type=int, nargs=2, default=None, help="test image H W "
                                                                       "(default 1024 2048; --tiny 512 1024)")
    p.add_argument("--no-flops", dest="flops", action="store_false", help="skip the fvcore FLOP counts")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0 = torch's default)")
    p.add_argument("--vit", default="s", choices=sorted(VIT_NAMES), help="DINOv2 ViT size of both models of the "
                                                                        "vfm_infer phase (default s: ViT-S/14)")
    p.add_argument("--deploy-full", action="store_true", help="deploy phase: every option row at --image-size too "
                                                                  "(default: at the demo's 128 x 256 only)")
    p.add_argument("--json", default=None, help="write the raw numbers here")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per (variant, phase) process")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = p.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    args.iters = args.iters or (2 if kind == "cpu" else 10)
    phases = [ph for ph in args.phases.split(",") if ph]
    args.infer_runs = args.infer_runs or (3 if ("vfm_infer" in phases or "deploy" in phases) and kind == "cpu" else
                                          1 if kind == "cpu" else 10)
    args.image_size = args.image_size or ([512, 1024] if args.tiny or phases == ["deploy"] else [1024, 2048])
    if "vfm_infer" in phases:
        try:
            scaled_geometry(args.image_size)
        except ValueError as e:
            p.error(str(e))
    try:
        args.plan = plan_variants(args.variants or DEFAULT_VARIANTS[kind], phases)
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    settings = BenchmarkSettings(
        config_file=str(Path(args.config_file).resolve()) if args.config_file else None, tiny=args.tiny,
        opts=list(args.opts), device=args.device, iters=args.iters, warmup=args.warmup, infer_runs=args.infer_runs,
        image_size=list(args.image_size), flops=args.flops, threads=args.threads, vit=args.vit,
        deploy_full=args.deploy_full)
    results, failures = run_plan(settings, args.plan, args.timeout)
    info = device_info(args.device)
    table = summarise(results, info)
    config = str(args.config_file or PAPER_CONFIG.relative_to(REPO)) + (" --tiny" if args.tiny else "")
    if all(phases == ["vfm_infer"] for phases in args.plan.values()):
        config = f"the vfm_infer phase's two recipes (below), --vit {args.vit}"
    if all(phases == ["deploy"] for phases in args.plan.values()):
        config = "the deploy phase's models (below)"
    print(f"\nConfig: {config} {' '.join(args.opts)}".rstrip())
    print("Variants: " + "; ".join(f"{v} = {VARIANTS[v]['desc']} ({'+'.join(ph)})" for v, ph in args.plan.items()))
    print(table)
    print(f"\nTotal benchmark time {time.perf_counter() - start:.0f} s")
    if args.json:
        payload = {"config": config, "opts": list(args.opts), "info": info, "args": vars(args), "results": results,
                   "failures": failures, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
        Path(args.json).write_text(json.dumps(payload, indent=1))
    for f in failures:
        print(f"FAILED {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
