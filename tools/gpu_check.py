#!/usr/bin/env python
"""One command for a CUDA machine: correctness of the fast paths on the GPU, then the paper-size benchmark.

    make gpu-check                      # = python tools/gpu_check.py --out gpu_check_report.json
    python tools/gpu_check.py --skip-benchmark

Checks (tiny MiT-b0 HRDA, random weights, synthetic data), each PASS / FAIL in the printed table:

1. ``cuda_fp32_vs_cpu``: slide-inference probabilities on CUDA (TF32 off) equal the CPU's;
2. ``tile_reuse``: slide inference with shared HR tiles equals the per-window computation on CUDA;
3. ``amp_logits`` / ``amp_losses``: bf16 and fp16 autocast against fp32 (argmax agreement, max |delta prob|,
   relative loss difference of a training forward with a fixed detail crop);
4. ``fp16_resume``: a 2-iteration DACS run with fp16 + GradScaler equals 1 iteration, checkpoint, resume,
   1 iteration (student weights, teacher weights, GradScaler state);
5. ``ddp_nccl``: DistributedDataParallel initialisation with the NCCL backend in this one process
   (world size 1), one forward/backward and an all-reduce;
6. the paper-size benchmark (``tools/benchmark.py`` over ``tools/benchmarking``, mit_b5, 1024 crops, 2 + 2 images; variants baseline,
   tile_reuse, bf16, bf16_ckpt): iteration time, peak memory, slide images/s, MFU.

Exit status: 0 all checks passed, 1 a check failed, 2 no CUDA device (nothing is run). Nothing is installed or
downloaded; the whole run takes about 5-8 minutes on one recent GPU.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS for the resume check

CHECKS: List[Callable] = []


def check(fn: Callable) -> Callable:
    CHECKS.append(fn)
    return fn


def tiny_cfg(*opts: str, device: str = "cuda"):
    """mit_b0 HRDA: 256 crops, HR crop 128, slide 256 / 128, 2 + 2 images, on ``device``."""
    from benchmarking.variants import build_cfg  # imported when a check runs: no CUDA, no wait

    tiny = ["MODEL.MIT.VARIANT", "mit_b0", "INPUT.SOURCE.CROP_SIZE", "[256, 256]",
            "INPUT.TARGET.CROP_SIZE", "[256, 256]", "MODEL.HRDA.HR_CROP_SIZE", "[128, 128]",
            "TEST.SLIDE.CROP_SIZE", "[256, 256]", "TEST.SLIDE.STRIDE", "[128, 128]", "SOLVER.IMS_PER_BATCH", "2",
            "INPUT.TARGET.PSEUDO_MARGINS", "[]"]
    return build_cfg(None, False, "baseline", tiny + list(opts), device)


def _model(cfg, state=None):
    import torch
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(cfg)
    if state is not None:
        model.load_state_dict(state)
    with torch.no_grad():  # confident predictions (the N(0, 0.01) classifier init makes every pixel a tie)
        model.single_scale_head.conv_seg.weight.mul_(100.0)
    return model


def _agreement(ref, other) -> Dict[str, float]:
    return {"argmax_agreement": (ref.argmax(1) == other.argmax(1)).float().mean().item(),
            "max_abs_prob_diff": (ref.float().softmax(1) - other.float().softmax(1)).abs().max().item()}


@check
def cuda_fp32_vs_cpu() -> Dict[str, Any]:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        cpu_model = _model(tiny_cfg(device="cpu")).eval()
        gpu_model = _model(tiny_cfg()).eval()
        gpu_model.load_state_dict(cpu_model.state_dict())
        images = torch.randn(1, 3, 256, 384, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = cpu_model.slide_inference(images)
            got = gpu_model.slide_inference(images.cuda()).cpu()
    finally:
        torch.backends.cudnn.allow_tf32 = True
    out = _agreement(ref, got)
    out["passed"] = out["max_abs_prob_diff"] <= 1e-3 and out["argmax_agreement"] >= 0.999
    return out


@check
def tile_reuse() -> Dict[str, Any]:
    import torch

    model = _model(tiny_cfg()).eval()
    images = torch.randn(2, 3, 256, 640, device="cuda")
    with torch.no_grad():
        shared = model.slide_inference(images)
        model.reuse_hr_tiles = False
        plain = model.slide_inference(images)
    diff = (shared - plain).abs().max().item()
    return {"max_abs_logit_diff": diff, "passed": diff <= 1e-4}


@check
def amp_logits() -> Dict[str, Any]:
    import torch

    model = _model(tiny_cfg()).eval()
    images = torch.randn(2, 3, 256, 384, device="cuda")
    out: Dict[str, Any] = {}
    with torch.no_grad():
        ref = model.slide_inference(images)
        for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            with torch.autocast("cuda", dtype=dtype):
                got = model.slide_inference(images)
            out[name] = dict(_agreement(ref, got), output_dtype=str(got.dtype))
    out["passed"] = all(out[n]["argmax_agreement"] >= 0.98 and out[n]["output_dtype"] == "torch.float32"
                        for n in ("bf16", "fp16"))
    return out


@check
def amp_losses() -> Dict[str, Any]:
    import torch

    model = _model(tiny_cfg()).train()
    for m in model.modules():  # deterministic forward: no dropout / drop-path
        if isinstance(m, torch.nn.Dropout2d) or type(m).__name__ == "DropPath":
            m.eval()
    images = torch.randn(2, 3, 256, 256, device="cuda")
    labels = torch.randint(0, 19, (2, 256, 256), device="cuda")
    out: Dict[str, Any] = {}
    with torch.no_grad():
        ref = {k: v.item() for k, v in model.forward_train(images, labels, crop_box=(0, 128, 64, 192)).losses.items()}
        for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            with torch.autocast("cuda", dtype=dtype):
                losses = model.forward_train(images, labels, crop_box=(0, 128, 64, 192)).losses
            out[name] = {k: {"value": v.item(), "dtype": str(v.dtype),
                             "rel_diff": abs(v.item() - ref[k]) / abs(ref[k])} for k, v in losses.items()}
    out["fp32"] = ref
    out["passed"] = all(t["rel_diff"] <= 0.02 and t["dtype"] == "torch.float32"
                        for n in ("bf16", "fp16") for t in out[n].values())
    return out


@check
def fp16_resume() -> Dict[str, Any]:
    import torch
    from detectron2.utils.env import seed_all_rng

    from benchmarking.synthetic import synthetic_trainer

    torch.use_deterministic_algorithms(True, warn_only=True)  # bilinear backward has no deterministic kernel
    try:
        with tempfile.TemporaryDirectory() as tmp:
            def trainer(max_iter: int, out: str):
                cfg = tiny_cfg("SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "float16",
                               "SOLVER.MAX_ITER", str(max_iter), "OUTPUT_DIR", out)
                seed_all_rng(cfg.SEED)  # Python, NumPy and torch: the same crops / mixing in both runs
                return synthetic_trainer(cfg)

            straight = trainer(2, f"{tmp}/straight")
            straight.resume_or_load(resume=False)
            straight.train()
            first = trainer(1, f"{tmp}/resumed")
            first.resume_or_load(resume=False)
            first.train()
            first.iter = 0  # as the periodic checkpointer saves it after iteration 0
            first.checkpointer.save("model_0000000")
            resumed = trainer(2, f"{tmp}/resumed")
            resumed.resume_or_load(resume=True)
            start = resumed.start_iter
            resumed.train()

            def diff(a, b) -> float:
                return max((x.float() - y.float()).abs().max().item()
                           for x, y in zip(a.state_dict().values(), b.state_dict().values()))

            out = {"start_iter_after_resume": start,
                   "student_max_abs_diff": diff(straight.student, resumed.student),
                   "teacher_max_abs_diff": diff(straight.teacher, resumed.teacher),
                   "grad_scaler_equal": straight.uda_step.grad_scaler.state_dict()
                   == resumed.uda_step.grad_scaler.state_dict(),
                   "grad_scale": straight.uda_step.grad_scaler.get_scale()}
    finally:
        torch.use_deterministic_algorithms(False)
    out["passed"] = (start == 1 and out["grad_scaler_equal"] and out["student_max_abs_diff"] <= 1e-4
                     and out["teacher_max_abs_diff"] <= 1e-4)
    return out


@check
def ddp_nccl() -> Dict[str, Any]:
    import socket

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    try:
        model = DistributedDataParallel(_model(tiny_cfg()).train(), device_ids=[0], broadcast_buffers=False)
        images = torch.randn(2, 3, 256, 256, device="cuda")
        labels = torch.randint(0, 19, (2, 256, 256), device="cuda")
        losses = model(images=images, sem_seg=labels, crop_box=(0, 128, 0, 128)).losses
        sum(losses.values()).backward()
        t = torch.ones(1, device="cuda")
        dist.all_reduce(t)
        grads = all(p.grad is not None for p in model.parameters() if p.requires_grad)
        out = {"backend": dist.get_backend(), "all_reduce": t.item(), "all_grads": grads}
    finally:
        dist.destroy_process_group()
    out["passed"] = out["backend"] == "nccl" and out["all_reduce"] == 1.0 and grads
    return out


def run_benchmark(args) -> Dict[str, Any]:
    """The paper-size benchmark in its own processes (tools/benchmark.py); its table is printed as it is."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, str(Path(__file__).with_name("benchmark.py")), "--device", "cuda",
               "--variants", args.variants, "--phases", "train,infer", "--iters", str(args.iters),
               "--warmup", "2", "--infer-runs", "3", "--json", str(out), "--timeout", str(args.benchmark_timeout)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.benchmark_timeout * 8)
        except subprocess.TimeoutExpired:
            return {"passed": False, "error": f"benchmark timed out after {args.benchmark_timeout * 8:g} s"}
        print(proc.stdout)
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
        report = json.loads(out.read_text()) if out.exists() else {}
    report["passed"] = proc.returncode == 0
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="gpu_check_report.json", help="JSON report")
    p.add_argument("--skip-benchmark", action="store_true")
    p.add_argument("--variants", default="baseline,tile_reuse,bf16,bf16_ckpt")
    p.add_argument("--iters", type=int, default=5, help="measured training iterations per variant")
    p.add_argument("--benchmark-timeout", type=float, default=240, help="seconds per benchmark process")
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device is available (torch.cuda.is_available() is False; "
              f"torch {torch.__version__}, CUDA build {torch.version.cuda}). Run it on a machine with an NVIDIA "
              "GPU and a CUDA build of PyTorch. Nothing was run.", file=sys.stderr)
        return 2
    start = time.perf_counter()
    report: Dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                              "cuda": torch.version.cuda, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                              "checks": {}}
    for fn in CHECKS:
        t0 = time.perf_counter()
        try:
            result = fn()
        except Exception as e:  # a failing check is reported, the others still run
            result = {"passed": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        result["seconds"] = round(time.perf_counter() - t0, 1)
        report["checks"][fn.__name__] = result
        print(f"{fn.__name__:>18}: {'PASS' if result['passed'] else 'FAIL'} ({result['seconds']} s)", flush=True)
    if not args.skip_benchmark:
        report["benchmark"] = run_benchmark(args)
    report["seconds"] = round(time.perf_counter() - start, 1)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))

    rows = [(name, r) for name, r in report["checks"].items()]
    if "benchmark" in report:
        rows.append(("benchmark", report["benchmark"]))
    print(f"\nGPU check on {report['device']} ({report['seconds']:.0f} s), report {args.out}\n")
    print("| check | result | details |\n|---|---|---|")
    for name, r in rows:
        details = {k: v for k, v in r.items() if k not in ("passed", "traceback", "results", "info", "args")}
        text = json.dumps(details, default=str)
        print(f"| {name} | {'PASS' if r['passed'] else 'FAIL'} | {text[:300]} |")
    return 0 if all(r["passed"] for _, r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
