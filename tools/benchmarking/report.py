"""The benchmark's report: the device, and the table of every variant against the baseline of the same run.

Ratios (``×`` columns) are speed-ups for time and throughput (baseline / variant for time, variant / baseline for
images/s: > 1 = faster) and variant / baseline for memory (< 1 = leaner). On CUDA the achieved TFLOP/s (2 FLOPs per
multiply-add) is related to the device's dense peak from :data:`PEAK_TFLOPS` (model FLOP utilisation).
"""
import os
import platform
from typing import Any, Dict, List, Optional

import torch

from .deploy import MODEL_LABELS
from .timing import STAGE_LABELS

__all__ = ["PEAK_TFLOPS", "device_info", "summarise"]

# dense peak TFLOP/s (float32 without TF32, bf16/fp16 tensor cores) assumed for MFU; None = unknown
PEAK_TFLOPS = {
    "H200": (67.0, 989.0), "H100": (67.0, 989.0), "A100": (19.5, 312.0), "A10": (31.2, 125.0),
    "L40S": (91.6, 362.0), "L4": (30.3, 121.0), "RTX 4090": (82.6, 165.0), "RTX 3090": (35.6, 71.0),
    "TITAN RTX": (16.3, 130.0), "V100": (15.7, 125.0), "T4": (8.1, 65.0),
}

Results = Dict[str, Dict[str, Dict[str, Any]]]  # variant -> phase -> measurements


def device_info(device: str) -> Dict[str, Any]:
    """The device's name (and, for a known GPU, its assumed fp32 / bf16 peak TFLOP/s)."""
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


def _main_table(results: Results) -> List[str]:
    base = results.get("baseline", {})
    columns = [  # header, phase, key, kind of ratio
        ("train s/it", "train", "s_per_iter", "time"), ("train peak MB", "train", "peak_mb", "memory"),
        ("slide img/s", "infer", "slide_img_s", "rate"), ("slide peak MB", "infer", "slide_peak_mb", "memory"),
        ("whole img/s", "infer", "whole_img_s", "rate"),
        ("fwd/bwd s", "fwdbwd", "s", "time"), ("fwd/bwd peak growth MB", "fwdbwd", "growth_mb", "memory"),
    ]
    rows = {v: phases for v, phases in results.items() if any(c[1] in phases for c in columns)}
    if not rows:
        return []
    lines = ["| variant | " + " | ".join(f"{c[0]} | ×" for c in columns) + " |",
             "|" + "---|" * (1 + 2 * len(columns))]
    for variant, phases in rows.items():
        cells = []
        for _, phase, key, kind in columns:
            v = phases.get(phase, {}).get(key)
            cells += [_fmt(v), _ratio(v, base.get(phase, {}).get(key), kind) if variant != "baseline" else "–"]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return lines


def _stage_table(results: Results) -> List[str]:
    rows = [(v, r["train"]) for v, r in results.items() if "train" in r]
    if not rows:
        return []
    names: List[str] = []
    for _, r in rows:
        names += [n for n in r["stages_s"] if n not in names]
    order = list(STAGE_LABELS.values())  # the step's order; other names after them
    names.sort(key=lambda n: order.index(n) if n in order else len(order))
    lines = ["", "Training stages (median s): ", "", "| variant | " + " | ".join(names) + " | first iteration s |",
             "|" + "---|" * (len(names) + 2)]
    for v, r in rows:
        lines.append(f"| {v} | " + " | ".join(_fmt(r["stages_s"].get(n)) for n in names)
                     + f" | {_fmt(r['first_s'])} |")
    return lines


def _ddp_table(results: Results) -> List[str]:
    rows = [(v, r["ddp"]) for v, r in results.items() if "ddp" in r]
    if not rows:
        return []
    lines = ["", "DDP, per iteration (2 ranks): ", "",
             "| variant | backward passes | gradient sync rounds | bucket all-reduces | s/it |", "|---|---|---|---|---|"]
    for v, r in rows:
        if "skipped" in r:
            lines.append(f"| {v} | skipped: {r['skipped']} | | | |")
        else:
            lines.append(f"| {v} | {r['backward_passes']} | {r['sync_rounds']} | {r['bucket_allreduces']} | "
                         f"{_fmt(r['s_per_iter'])} |")
    return lines


def _vfm_table(results: Results) -> List[str]:
    """The ``vfm_infer`` phase: both recipes with the same ViT, and the ratio VFM-UDA / MIC(HRDA)."""
    r = results.get("baseline", {}).get("vfm_infer")
    if not r:
        return []
    g = r["geometry"]
    models = r["models"]
    lines = ["", f"VFM-UDA vs MIC(HRDA) slide inference, {r['vit']} (random weights), one "
             f"{r['image_size'][0]}x{r['image_size'][1]} image, windows {g['window']} / stride {g['stride']} "
             f"(MIC(HRDA): HR tiles {g['hr_tile']} / stride {g['hr_tile'] // 2}), median of {r['rounds']} "
             f"alternating rounds:", "",
             "| model | config | ViT images / image | ViT tokens / image | s / image | images/s | GMAC / image "
             "(fvcore) | of which ViT |", "|---|---|---|---|---|---|---|---|"]
    for name, label in (("mic_hrda", "MIC(HRDA)"), ("vfm_uda", "VFM-UDA")):
        m = models[name]
        shapes = ", ".join(f"{n} x {t}" for t, n in m["vit_inputs"]["by_tokens"].items())
        flops = _fmt(m["flops"] / 1e9, ".4g") if "flops" in m else "–"
        vit = (f"{_fmt(m['flops_vit'] / 1e9, '.4g')} ({100 * m['flops_vit'] / m['flops']:.0f} %)"
               if "flops" in m else "–")
        lines.append(f"| {label} | {m['config']} | {m['vit_inputs']['images']} ({shapes} tokens) | "
                     f"{m['vit_inputs']['tokens']} | {_fmt(m['s_per_image'])} | {_fmt(m['img_s'])} | {flops} | {vit} |")
    ratio_flops = f"{r['ratio_flops']:.2f}×" if "ratio_flops" in r else "–"
    lines.append(f"| VFM-UDA / MIC(HRDA) | | | | | {r['ratio_img_s']:.2f}× | {ratio_flops} | |")
    for name, label in (("mic_hrda", "MIC(HRDA)"), ("vfm_uda", "VFM-UDA")):
        skipped = models[name].get("flops_unsupported")
        if skipped:
            lines.append(f"fvcore did not count ({label}, op: calls): "
                         + ", ".join(f"{op}: {n}" for op, n in skipped.items()))
    return lines


def _ops(profile: Dict[str, Any]) -> str:
    return ", ".join(f"{op} {100 * t / profile['s']:.0f} %" for op, t in profile["ops"].items())


def _deploy_table(results: Results) -> List[str]:
    """The ``deploy`` phase: every runtime / option row with its ratio to eager, the goal, where the time goes."""
    r = results.get("baseline", {}).get("deploy")
    if not r:
        return []
    lines = ["", f"Deployment: eager PyTorch vs the exported model (hrda_d2_deploy), weights {r['weights']}, median of "
             f"{r['rounds']} alternating rounds; × eager = eager s / row s with the same model, image and threads "
             f"(> 1 = faster); agreement and Δ against that eager output; best = the fastest round (a gauge of "
             f"interference from other processes, which the median may still include):", "",
             "| model | image | runtime | option | threads | s / image | images/s | × eager | best s | "
             "argmax agreement % | max \\|Δ logit\\| |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {MODEL_LABELS.get(row['model'], row['model'])} | {row['size'][0]}x{row['size'][1]} | "
                     f"{row['runtime']} | {row['option'] or '–'} | {row['threads']} | {_fmt(row['s_per_image'])} | "
                     f"{_fmt(row['img_s'])} | {row['ratio']:.2f}× | {_fmt(row.get('best_s'))} | "
                     f"{row['argmax_agreement']:.4f} | "
                     f"{row['max_abs_diff']:.2g} |")
    g = r["goal"]
    lines += ["", f"Goal onnxruntime >= {g['ratio']:g}× eager (HRDA demo slide inference, "
              f"{g['size'][0]}x{g['size'][1]}, {g['threads']} thread(s)): {g['measured']:.2f}×, "
              f"{'met' if g['met'] else 'NOT met'}"]
    p = r.get("profile")
    if p:
        lines.append(f"Where the time goes (HRDA demo, {p['size'][0]}x{p['size'][1]}, {p['threads']} thread(s), one "
                     f"extra call each):")
        for runtime in ("onnxruntime", "torchscript"):
            b = p[runtime]
            parts = ", ".join(f"{k} {100 * v / b['total']:.1f} %" for k, v in b.items() if k != "total")
            lines.append(f"  {runtime}: {b['total']:.3g} s = {parts}")
        for graph, ops in p["onnxruntime_ops"].items():
            lines.append(f"  onnxruntime operators, graph {graph!r}: {ops['s']:.3g} s kernel time ({_ops(ops)})")
        lines.append(f"  eager operators (self CPU time): {p['eager_ops']['s']:.3g} s ({_ops(p['eager_ops'])})")
    lines.append("Exports (s, not timed in the rows): " + ", ".join(f"{k} {v:.1f}" for k, v in r["exports"].items()))
    return lines


def _gradient_lines(results: Results) -> List[str]:
    grads = results.get("baseline", {}).get("fwdbwd", {}).get("grad_norms")
    lines = []
    for variant, r in results.items():
        if variant != "baseline" and grads and "grad_norms" in r.get("fwdbwd", {}):
            other = r["fwdbwd"]["grad_norms"]
            rel = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(grads, other))
            lines.append(f"{variant}: max relative difference of per-parameter gradient norms vs baseline {rel:.2g}")
    return lines


def _flops_lines(results: Results, info: Dict[str, Any]) -> List[str]:
    lines = []
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
                lines.append(text)
    return [""] + lines if lines else []


def summarise(results: Results, info: Dict[str, Any]) -> str:
    """The printed report of ``results`` on the device ``info`` (:func:`device_info`)."""
    lines = [f"Device: {info['device']}", "", "× after a time or img/s = speed-up over the baseline (> 1 = faster); "
             "× after memory = variant / baseline (< 1 = leaner).", ""]
    lines += _main_table(results)
    lines += _stage_table(results)
    lines += _gradient_lines(results)
    lines += _ddp_table(results)
    lines += _vfm_table(results)
    lines += _deploy_table(results)
    lines += _flops_lines(results, info)
    return "\n".join(lines)
