#!/usr/bin/env python
"""CPU forward time of our MiT backbone against transformers' SegformerModel with the same weights.

    python tools/benchmarks/bench_mit.py [--variants mit_b0 mit_b5] [--size 512 512] [--repeats 3] [--threads N]

Batch 1, eval mode, ``torch.no_grad``; one warm-up forward, then the median of ``--repeats`` timed forwards per
model (the two models alternate, so both see the same machine load). Prints milliseconds, the ratio
ours / transformers and the largest output difference (a sanity check that both compute the same thing).
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from detectron2.config import get_cfg

from hrda_d2 import add_hrda_config
from hrda_d2.modeling.backbone import build_mit_backbone
from transformers_segformer import load_transformers_segformer  # tools/benchmarks/, next to this script


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["mit_b0", "mit_b5"])
    parser.add_argument("--size", nargs=2, type=int, default=[512, 512], metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    return parser.parse_args()


def timed_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return 1000.0 * (time.perf_counter() - start)


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input 1x3x{args.size[0]}x{args.size[1]}, "
          f"median of {args.repeats} after 1 warm-up")
    x = torch.randn(1, 3, *args.size)
    for variant in args.variants:
        cfg = add_hrda_config(get_cfg())
        cfg.MODEL.MIT.VARIANT = variant
        ours = build_mit_backbone(cfg).eval()
        with tempfile.TemporaryDirectory() as workdir:
            theirs = load_transformers_segformer(ours.state_dict(), variant, Path(workdir))
        with torch.no_grad():
            a, b = list(ours(x).values()), theirs(x, output_hidden_states=True).hidden_states  # warm-up
            diff = max((p - q).abs().max().item() for p, q in zip(a, b))
            ours_ms, theirs_ms = [], []
            for _ in range(args.repeats):
                ours_ms.append(timed_ms(lambda: ours(x)))
                theirs_ms.append(timed_ms(lambda: theirs(x, output_hidden_states=True)))
        o, t = statistics.median(ours_ms), statistics.median(theirs_ms)
        print(f"{variant}: hrda_d2 {o:8.1f} ms | transformers {t:8.1f} ms | ratio {o / t:.2f} | "
              f"max |diff| {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
