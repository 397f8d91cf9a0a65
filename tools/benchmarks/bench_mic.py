#!/usr/bin/env python
"""Cost of MIC over HRDA: training-iteration time and peak memory on the CPU, tiny demo configs.

    python tools/benchmarks/bench_mic.py [--iters 20] [--warmup 3] [--rounds 2] [--threads 1]

Generates the demo's replicas (``datasets/prepare_synthetic.py --prepare``, a few images) in a temporary folder,
then trains ``configs/demo_hrda.yaml`` (baseline) and ``configs/demo_mic.yaml`` (the same + ``UDA.MIC``) in
alternating fresh processes (``--rounds`` each), one loader worker, no evaluation / checkpoints / debug panels.
Per process: the median wall time of the DACS step (``run_step``) over ``--iters`` iterations after
``--warmup``, and the peak resident memory (``ru_maxrss``) after building the trainer and at the end (the
difference is what training adds). Prints both configs and the ratios MIC / HRDA of the same run.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {"hrda": "configs/demo_hrda.yaml", "mic": "configs/demo_mic.yaml"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per process")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    parser.add_argument("--rounds", type=int, default=2, help="processes per config (alternating)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS / torch threads of the runs")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: config of one run
    return parser.parse_args()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kilobytes on Linux


def child(config: str, warmup: int, iters: int, threads: int) -> dict:
    """One training run in this process; returns its measurements."""
    import torch
    from detectron2.utils.env import seed_all_rng

    from hrda_d2.config import load_config
    from hrda_d2.engine.trainer import HRDATrainer

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(str(REPO / config), [
            "SOLVER.MAX_ITER", str(warmup + iters), "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()",
            "SOLVER.CHECKPOINT_PERIOD", "100000", "UDA.DEBUG_IMG_INTERVAL", "0", "OUTPUT_DIR", out])
        seed_all_rng(cfg.SEED)
        trainer = HRDATrainer(cfg)
        trainer.resume_or_load(resume=False)
        setup_rss = peak_rss_mb()
        step, times = trainer.uda_step, []
        original = step.run_step

        def timed_step():
            start = time.perf_counter()
            original()
            times.append(time.perf_counter() - start)

        step.run_step = timed_step
        trainer.train()
    return {"step_s": statistics.median(times[warmup:]), "setup_rss_mb": setup_rss, "peak_rss_mb": peak_rss_mb()}


def main() -> int:
    args = parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.warmup, args.iters, args.threads)))
        return 0
    with tempfile.TemporaryDirectory() as root:
        data = Path(root) / "data"
        env = dict(os.environ, DETECTRON2_DATASETS=str(data), OMP_NUM_THREADS=str(args.threads),
                   PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="")
        subprocess.run([sys.executable, "datasets/prepare_synthetic.py", str(data), "--num-train", "8",
                        "--num-val", "1", "--prepare"], check=True, env=env, cwd=REPO, capture_output=True)
        results = {name: [] for name in CONFIGS}
        for _ in range(args.rounds):
            for name, config in CONFIGS.items():
                run = subprocess.run([sys.executable, __file__, "--child", config, "--iters", str(args.iters),
                                      "--warmup", str(args.warmup), "--threads", str(args.threads)],
                                     check=True, env=env, cwd=REPO, capture_output=True, text=True)
                results[name].append(json.loads(run.stdout.strip().splitlines()[-1]))
    summary = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
               for name, runs in results.items()}
    print(f"CPU, {args.threads} thread(s), median of {args.rounds} processes x {args.iters} iterations "
          f"(after {args.warmup} warm-up)")
    for name in CONFIGS:
        s = summary[name]
        print(f"  {name:5s} ({CONFIGS[name]}): {1000 * s['step_s']:7.1f} ms/iteration, peak RSS "
              f"{s['peak_rss_mb']:7.1f} MB (after setup {s['setup_rss_mb']:7.1f} MB, training adds "
              f"{s['peak_rss_mb'] - s['setup_rss_mb']:6.1f} MB)")
    hrda, mic = summary["hrda"], summary["mic"]
    print(f"  ratio MIC / HRDA: iteration time {mic['step_s'] / hrda['step_s']:.2f}, peak RSS "
          f"{mic['peak_rss_mb'] / hrda['peak_rss_mb']:.2f}, training increment "
          f"{(mic['peak_rss_mb'] - mic['setup_rss_mb']) / max(hrda['peak_rss_mb'] - hrda['setup_rss_mb'], 1e-9):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
