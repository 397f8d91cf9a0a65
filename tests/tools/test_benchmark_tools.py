"""tools/benchmark.py and tools/gpu_check.py (thin command lines over tools/benchmarking) without running a
benchmark: the variant plan, the ratio table (speed-ups and memory ratios against the baseline of the same run),
the FLOP handle of the attention, the GPU check failing clearly (exit 2, no hang) without a CUDA device, and the
vfm_infer phase (VFM-UDA vs MIC(HRDA) inference) at a tiny size: its plan, geometry and table; the deploy phase
(eager vs TorchScript vs onnxruntime): its rows and table (its quick run: slow)."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from benchmarking.deploy import DEMO_SIZE, DeployCase, deploy_cases
from benchmarking.flops import count_flops
from benchmarking.phases import run_phase
from benchmarking.report import summarise
from benchmarking.settings import BenchmarkSettings
from benchmarking.vfm_inference import scaled_geometry
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


def test_vfm_infer_phase_is_planned_alone_with_scaled_geometry():
    args = bench.parse_args(["--device", "cpu", "--phases", "vfm_infer", "--variants", "tile_reuse,bf16"])
    assert args.plan == {"baseline": ["vfm_infer"]}  # two fixed recipes, no variants
    assert (args.vit, args.infer_runs, args.image_size) == ("s", 3, [1024, 2048])  # 3 alternating rounds on CPU
    assert scaled_geometry([1024, 2048]) == {"window": 1024, "stride": 512, "hr_tile": 512}  # the configs' own
    assert scaled_geometry([512, 1024]) == {"window": 512, "stride": 256, "hr_tile": 256}
    with pytest.raises(SystemExit):  # the windows cannot scale to a height that is no multiple of 64
        bench.parse_args(["--device", "cpu", "--phases", "vfm_infer", "--image-size", "100", "200"])


def test_vfm_infer_phase_reports_both_recipes_and_their_ratio():
    """The phase itself at a 64 x 128 image (ViT-S, random weights): structure of its table, not timings."""
    settings = BenchmarkSettings(device="cpu", image_size=[64, 128], infer_runs=1, vit="s")
    r = run_phase(settings, "baseline", "vfm_infer")
    mic, vfm = r["models"]["mic_hrda"], r["models"]["vfm_uda"]
    # 3 windows 64 / stride 32; MIC(HRDA): per window the 0.5 context + 9 HR tiles 32 / stride 16, 2 x 2 tokens
    # each; VFM-UDA: per window one 70 x 70 (1.1 x 64, down to a multiple of 14) input, 5 x 5 tokens
    assert mic["vit_inputs"] == {"images": 30, "tokens": 120, "by_tokens": {"4": 30}}
    assert vfm["vit_inputs"] == {"images": 3, "tokens": 75, "by_tokens": {"25": 3}}
    assert r["ratio_img_s"] == pytest.approx(vfm["img_s"] / mic["img_s"])
    assert r["ratio_flops"] == pytest.approx(vfm["flops"] / mic["flops"]) and mic["flops"] > 0
    assert 0 < vfm["flops_vit"] < vfm["flops"] and 0 < mic["flops_vit"] < mic["flops"]  # the rest: pyramid, heads
    assert "aten::gelu" in vfm["flops_unsupported"]  # element-wise ops fvcore does not count are named
    table = summarise({"baseline": {"vfm_infer": r}}, {"device": "CPU test"})
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| model |")]
    assert [row.split("|")[1].strip() for row in rows] == ["MIC(HRDA)", "VFM-UDA", "VFM-UDA / MIC(HRDA)"]
    assert rows[0].split("|")[4].strip() == "120" and rows[1].split("|")[3].strip() == "3 (3 x 25 tokens)"
    assert rows[2].split("|")[6].strip() == f"{r['ratio_img_s']:.2f}×"
    assert "windows 64 / stride 32 (MIC(HRDA): HR tiles 32 / stride 16), median of 1 alternating rounds" in table
    assert "fvcore did not count (VFM-UDA, op: calls): " in table


def test_deploy_phase_is_planned_alone_with_its_rows(monkeypatch):
    args = bench.parse_args(["--device", "cpu", "--phases", "deploy", "--variants", "tile_reuse,bf16"])
    assert args.plan == {"baseline": ["deploy"]}  # fixed models and runtimes, no variants
    assert (args.infer_runs, args.image_size, args.deploy_full) == (3, [512, 1024], False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    cases = deploy_cases(BenchmarkSettings(image_size=[512, 1024]))
    main = [c for c in cases if c.size == (512, 1024)]
    # the main size: eager / TorchScript / onnxruntime with 1 thread, onnxruntime without batch chunks; every other
    # option at the demo's size
    unchunked = "batch_pixels 0 (one call per batch)"
    assert [(c.model, c.runtime, c.threads, c.option) for c in main] == [
        ("hrda", "eager", 1, ""), ("hrda", "torchscript", 1, ""), ("hrda", "onnxruntime", 1, ""),
        ("hrda", "onnxruntime", 1, unchunked)]
    demo = [(c.model, c.runtime, c.threads, c.option) for c in cases if c.size == DEMO_SIZE]
    assert ("hrda", "eager", 2, "") in demo and ("hrda", "onnxruntime", 2, "") in demo
    assert {o for m, rt, t, o in demo if rt == "onnxruntime"} == {
        "", "opt_level disable", "opt_level basic", "opt_level extended", "int8 dynamic",
        "fp16 (CUDA provider's format; CPU provider here)"}
    assert [rt for m, rt, t, o in demo if m == "one_scale"] == ["eager", "torchscript", "onnxruntime"]
    full = deploy_cases(BenchmarkSettings(image_size=[512, 1024], deploy_full=True))
    assert sorted((c.model, c.runtime, c.threads, c.option) for c in full if c.size == (512, 1024)) == sorted(
        demo + [("hrda", rt, 1, unchunked) for rt in ("torchscript", "onnxruntime")])
    quick = deploy_cases(BenchmarkSettings(image_size=[512, 1024], tiny=True))
    assert {c.size for c in quick} == {DEMO_SIZE} and {c.threads for c in quick} == {1}
    assert len(quick) == len(demo) - 3 + 2  # every row kind once, one thread count
    for c in cases:  # every row has its eager reference before it
        ref = cases.index(DeployCase(c.model, c.size, "eager", c.threads))
        assert ref <= cases.index(c)


def _deploy_result():
    rows = []
    for runtime, option, s, agree in (("eager", "", 2.0, 100.0), ("torchscript", "", 1.6, 100.0),
                                      ("onnxruntime", "", 1.0, 100.0), ("onnxruntime", "int8 dynamic", 0.8, 99.5)):
        rows.append({"model": "hrda", "size": [512, 1024], "runtime": runtime, "threads": 1, "option": option,
                     "s_per_image": s, "img_s": 1 / s, "ratio": 2.0 / s, "best_s": s - 0.1, "argmax_agreement": agree,
                     "max_abs_diff": 0.0 if runtime == "eager" else 0.03})
    breakdown = {"total": 1.0, "graph calls": 0.9, "tile stacking": 0.01, "tile merging": 0.02,
                 "window merging": 0.05, "rest": 0.02}
    return {"rows": rows, "rounds": 3, "main_size": [512, 1024], "threads": [1], "weights": "random (seed 0)",
            "exports": {"hrda_onnx_fp32": 4.0},
            "goal": {"ratio": 1.5, "measured": 2.0, "met": True, "size": [512, 1024], "threads": 1},
            "profile": {"size": [512, 1024], "threads": 1, "onnxruntime": breakdown, "torchscript": breakdown,
                        "onnxruntime_ops": {"tiles": {"s": 0.7, "ops": {"Conv": 0.35, "MatMul": 0.14}}},
                        "eager_ops": {"s": 2.0, "ops": {"aten::mkldnn_convolution": 1.2}}}}


def test_deploy_table_shows_ratios_to_eager_and_where_the_time_goes():
    table = summarise({"baseline": {"deploy": _deploy_result()}}, {"device": "CPU test"})
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| HRDA")]
    assert [(r[2].strip(), r[3].strip(), r[7].strip(), r[8].strip(), r[9].strip()) for r in rows] == [
        ("eager", "–", "1.00×", "1.9", "100.0000"), ("torchscript", "–", "1.25×", "1.5", "100.0000"),
        ("onnxruntime", "–", "2.00×", "0.9", "100.0000"),
        ("onnxruntime", "int8 dynamic", "2.50×", "0.7", "99.5000")]
    assert "Goal onnxruntime >= 1.5× eager (HRDA demo slide inference, 512x1024, 1 thread(s)): 2.00×, met" in table
    assert "onnxruntime: 1 s = graph calls 90.0 %, tile stacking 1.0 %, tile merging 2.0 %, window merging 5.0 %" \
        in table
    assert "graph 'tiles': 0.7 s kernel time (Conv 50 %, MatMul 20 %)" in table
    assert "eager operators (self CPU time): 2 s (aten::mkldnn_convolution 60 %)" in table


@pytest.mark.slow
def test_deploy_phase_quick_mode_reports_every_row():
    """The phase itself in its quick mode (--tiny: the demo's 128 x 256, one round, ~1 min for the six exports):
    the rows and the agreement of fp32 exports, not timings."""
    settings = BenchmarkSettings(device="cpu", tiny=True, infer_runs=1, image_size=[128, 256], threads=1)
    r = run_phase(settings, "baseline", "deploy")
    assert [(row["model"], row["runtime"], row["option"]) for row in r["rows"]] == [
        (c.model, c.runtime, c.option) for c in deploy_cases(settings)]
    for row in r["rows"]:
        assert row["s_per_image"] == row["best_s"] > 0 and len(row["runs_s"]) == 1
        if row["precision"] == "fp32":  # exported float32 graphs equal eager PyTorch
            assert row["argmax_agreement"] == 100.0 and row["max_abs_diff"] <= 1e-4 * max(1, row["max_abs_logit"])
    assert set(r["profile"]["onnxruntime_ops"]) == {"tiles", "window"}
    assert r["profile"]["onnxruntime"]["graph calls"] > 0
    table = summarise({"baseline": {"deploy": r}}, {"device": "CPU test"})
    assert sum(line.startswith("| HRDA demo") for line in table.splitlines()) == 10  # 3 + 2 unchunked + 5 options
    assert sum(line.startswith("| DAFormer tiny") for line in table.splitlines()) == 3
