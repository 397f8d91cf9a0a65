"""tools/benchmark.py and tools/gpu_check.py (thin command lines over tools/benchmarking) without running a
benchmark: the variant plan, the ratio table (speed-ups and memory ratios against the baseline of the same run),
the FLOP handle of the attention, and the GPU check failing clearly (exit 2, no hang) without a CUDA device."""
import subprocess
import sys

import torch
import torch.nn.functional as F

from benchmarking.flops import count_flops
from benchmarking.report import summarise
from tests.helpers.paths import REPO_ROOT, TOOLS_DIR
from tests.helpers.scripts import import_script

REPO = REPO_ROOT


def load_tool(name):
    return import_script(TOOLS_DIR / f"{name}.py", f"tool_{name}")


bench = load_tool("benchmark")


def test_plan_always_has_the_baseline_and_restricts_phases():
    args = bench.parse_args(["--tiny", "--device", "cpu", "--variants", "tile_reuse,ckpt:fwdbwd,bf16"])
    assert args.plan == {"baseline": ["train", "infer", "fwdbwd"], "tile_reuse": ["infer"], "ckpt": ["fwdbwd"],
                         "bf16": ["train", "infer"]}
    assert args.image_size == [512, 1024]
    args = bench.parse_args(["--device", "cpu", "--variants", "ckpt", "--phases", "infer"])
    assert args.plan == {"baseline": ["infer"]}  # checkpointing changes no inference


def test_table_shows_speed_ups_and_memory_ratios():
    results = {
        "baseline": {"infer": {"slide_img_s": 2.0, "slide_peak_mb": 1000.0},
                     "fwdbwd": {"s": 4.0, "growth_mb": 800.0, "grad_norms": [1.0, 2.0]}},
        "tile_reuse": {"infer": {"slide_img_s": 3.0, "slide_peak_mb": 900.0}},
        "ckpt": {"fwdbwd": {"s": 5.0, "growth_mb": 400.0, "grad_norms": [1.0, 2.0 + 2e-7]}},
    }
    table = summarise(results, {"device": "CPU test"})
    row = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
           for line in table.splitlines() if line.startswith("| ") and "variant" not in line}
    assert row["tile_reuse"][4:8] == ["3", "1.50×", "900", "0.90×"]  # 3 / 2 img/s; 900 / 1000 MB
    assert row["ckpt"][10:14] == ["5", "0.80×", "400", "0.50×"]  # 4 s / 5 s = 0.8x speed; 400 / 800 MB
    assert "ckpt: max relative difference of per-parameter gradient norms vs baseline 1e-07" in table


def test_attention_flops_are_the_two_matrix_products():
    class Attention(torch.nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v)

    q, k = torch.randn(2, 3, 50, 8), torch.randn(2, 3, 20, 8)
    macs = count_flops(Attention(), Attention(), q, k, k.clone())
    assert macs == 2 * (2 * 3 * 50 * 20 * 8)


def test_gpu_check_fails_clearly_without_cuda(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_check.py"), "--out", str(tmp_path / "r.json")],
                          capture_output=True, text=True, timeout=120, env={**__import__("os").environ,
                                                                            "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no CUDA device" in proc.stderr and not (tmp_path / "r.json").exists()


def test_ddp_phase_is_planned_and_reported_per_iteration():
    args = bench.parse_args(["--device", "cpu", "--phases", "ddp", "--variants", "mic,source_only,bf16"])
    assert args.plan == {"baseline": ["ddp"], "mic": ["ddp"], "source_only": ["ddp"]}  # bf16: no ddp phase
    results = {"baseline": {"ddp": {"backward_passes": 2, "sync_rounds": 1, "bucket_allreduces": 3, "s_per_iter": 2.0}},
               "mic": {"ddp": {"skipped": "the ddp phase needs 2 GPUs for NCCL, found 1"}}}
    table = summarise(results, {"device": "CPU test"})
    assert "| baseline | 2 | 1 | 3 | 2 |" in table
    assert "| mic | skipped: the ddp phase needs 2 GPUs for NCCL, found 1 |" in table
    assert "train s/it" not in table  # no row of the main table without its phases
