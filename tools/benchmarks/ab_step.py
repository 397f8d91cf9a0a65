#!/usr/bin/env python
"""A/B timing of the training step of two checkouts (e.g. a ``git worktree`` of an older commit and this one).

    git worktree add /tmp/old <commit>
    python tools/benchmarks/ab_step.py --repo old=/tmp/old --repo new=. --rounds 3 --iters 60
    python tools/benchmarks/ab_step.py --repo old=/tmp/old --repo new=. INPUT.SOURCE.CROP_SIZE "[256, 256]" ...

Each checkout trains ``--config`` (default ``configs/demo_hrda.yaml``: tiny HRDA, MiT-b0, DACS) for ``--iters``
iterations through its OWN ``tools/train_net.py`` (``PYTHONPATH`` = that checkout, so it imports its own
``hrda_d2``), on generated replicas (``datasets/prepare_synthetic.py``, written once), with evaluation off. The
runs alternate between the checkouts, round by round (A B, B A, A B, ...), so that a change in the machine's load
hits both alike. Per run the seconds per iteration are read from Detectron2's ``metrics.json`` (``time``: the
median over each 20-iteration window; the first window, with the warm-up, is dropped). Printed: per checkout the
median and the minimum of those window medians, and the ratio of each checkout's median and minimum to the
first checkout's (the baseline, measured in the same run). Nothing is asserted: the machines are noisy.
"""
import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger("ab_step")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", action="append", required=True, metavar="NAME=PATH",
                   help="a checkout to time (the first is the baseline); give two or more")
    p.add_argument("--config", default="configs/demo_hrda.yaml", help="config, relative to each checkout")
    p.add_argument("--iters", type=int, default=60, help="iterations per run (windows of 20; the first is dropped)")
    p.add_argument("--rounds", type=int, default=3, help="runs per checkout, alternating")
    p.add_argument("--data", default=None, help="generated replicas (default: a temporary folder, written once)")
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS per run (0: leave as it is)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ... for every run")
    args = p.parse_args(argv)
    repos = []
    for item in args.repo:
        name, sep, path = item.partition("=")
        if not sep or not (Path(path) / "tools" / "train_net.py").is_file():
            p.error(f"--repo {item!r}: use NAME=PATH with PATH a checkout that has tools/train_net.py")
        repos.append((name, Path(path).resolve()))
    if len(repos) < 2:
        p.error("give at least two --repo NAME=PATH")
    if args.iters < 40:
        p.error("--iters must be at least 40 (two 20-iteration windows, the first dropped)")
    args.repos = repos
    return args


def window_times(metrics_file: Path):
    """The ``time`` values of metrics.json (one JSON object per line), without the first window."""
    times = []
    for line in metrics_file.read_text().splitlines():
        record = json.loads(line)
        if "time" in record:
            times.append(float(record["time"]))
    return times[1:]


def one_run(repo: Path, config: str, iters: int, opts, data: Path, out: Path, threads: int):
    env = dict(os.environ, PYTHONPATH=str(repo), DETECTRON2_DATASETS=str(data))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, str(repo / "tools" / "train_net.py"), "--config-file", str(repo / config),
           "SOLVER.MAX_ITER", str(iters), "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()",
           "SOLVER.CHECKPOINT_PERIOD", str(iters), "OUTPUT_DIR", str(out), *opts]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{repo}: train_net exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return window_times(out / "metrics.json")


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="ab_step_") as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "data"
        if not data.exists():
            first = args.repos[0][1]
            subprocess.run([sys.executable, "datasets/prepare_synthetic.py", str(data), "--prepare"], cwd=first,
                           env=dict(os.environ, PYTHONPATH=str(first)), check=True, capture_output=True)
        times = {name: [] for name, _ in args.repos}
        for r in range(args.rounds):
            order = args.repos if r % 2 == 0 else args.repos[::-1]
            for name, repo in order:
                t = one_run(repo, args.config, args.iters, args.opts, data, Path(tmp) / f"{name}_{r}", args.threads)
                times[name].extend(t)
                logger.info(f"round {r + 1}/{args.rounds} {name}: " + " ".join(f"{x:.3f}" for x in t) + " s/it")
    base = args.repos[0][0]
    b_med, b_min = statistics.median(times[base]), min(times[base])
    print(f"\n{'checkout':<12} {'median s/it':>12} {'min s/it':>10} {'median x':>9} {'min x':>7} {'windows':>8}")
    for name, _ in args.repos:
        med, low = statistics.median(times[name]), min(times[name])
        print(f"{name:<12} {med:>12.4f} {low:>10.4f} {med / b_med:>9.3f} {low / b_min:>7.3f} {len(times[name]):>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
