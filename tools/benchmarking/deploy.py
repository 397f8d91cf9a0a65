"""The ``deploy`` phase: eager PyTorch against the exported model (TorchScript, onnxruntime), in one process.

For the same model and the same image, images/s of

* ``eager``: ``HRDA.inference`` of the normalised image under ``torch.inference_mode()`` (what
  ``SemSegPredictor`` runs, without its test rescale: the image is the network input);
* ``torchscript`` / ``onnxruntime``: ``hrda_d2_deploy.ExportedModel.inference`` of the same image (RGB 0..255;
  the graphs normalise), folders written by :func:`hrda_d2.export.export_model` into a temporary folder,

and every row's ratio to eager of the same model, image and thread count measured in the same run, with the argmax
agreement and the largest logit difference against that eager output.

Models: :data:`DEMO_CONFIG` (the tiny demo HRDA, MiT-b0: slide windows 128 / stride 64, HR tiles 64 / stride 32,
tile reuse; ``settings.opts`` apply to it, e.g. ``MODEL.WEIGHTS`` of a trained demo model, else random weights) and,
for comparison, a one-scale model: :data:`ONE_SCALE_CONFIG` shrunk with ``tiny_overrides`` (MiT-b0 DAFormer, random
weights) with whole-image inference (one graph call per image). Images: ``sample_image`` (a smooth random image) of
the main size ``settings.image_size`` (512 x 1024 by default: 105 windows, 465 distinct HR tiles) and of the demo's
own :data:`DEMO_SIZE` (128 x 256: 3 windows, 21 tiles).

Rows (:func:`deploy_cases`; ``T`` = ``settings.threads`` or 1, ``T2`` = the cores, when ``settings.threads`` is 0):

* at both sizes, HRDA: eager / TorchScript / onnxruntime (fp32, optimisation level "all") with ``T`` threads;
* at the main size: onnxruntime with ``batch_pixels`` 0 (every batch of windows / tiles in one graph call, the
  runtime before its chunks; at the demo's size every batch fits one chunk anyway), with ``settings.deploy_full``
  TorchScript too;
* at the demo size (``settings.deploy_full``: at both sizes): the three with ``T2`` threads; onnxruntime
  optimisation levels "disable" / "basic" / "extended"; onnxruntime int8 (dynamically quantised MatMul weights) and
  fp16 (meant for the CUDA provider; here on the CPU provider); the one-scale model's eager / TorchScript /
  onnxruntime;
* ``settings.tiny`` (quick): every row kind once, at the demo size, with ``T`` threads only.

Timing: one warm-up call of every row (its output gives the agreement), then ``infer_runs`` rounds that call every
row once, in alternating order (reversed in odd rounds); medians. Eager and TorchScript run with
``torch.set_num_threads(threads)`` set before each call, onnxruntime sessions with ``intra_op_num_threads``.

Where the time goes, at the main size with ``T`` threads: one extra call of the exported HRDA under ``cProfile``
(graph calls / HR-tile stacking / tile merging / window merging / the rest), onnxruntime's per-operator profile of
the two graphs on inputs of the same shapes (``SessionOptions.enable_profiling``; batches chunked as the runtime
does) and the eager call's operators (``torch.profiler``, self time).
"""
import cProfile
import json
import os
import pstats
import shutil
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.modeling import build_model

from hrda_d2.checkpoint import load_model_weights
from hrda_d2.config import load_config
from hrda_d2.experiments.configs import load_run_config, tiny_overrides
from hrda_d2.export import export_model, sample_image
from hrda_d2_deploy import ExportedModel, RuntimeOptions
from hrda_d2_deploy.geometry import shared_tile_plan, sliding_window_boxes
from hrda_d2_deploy.runtime import DEFAULT_BATCH_PIXELS, read_manifest
from .settings import BenchmarkSettings

__all__ = ["DEMO_CONFIG", "DEMO_SIZE", "DeployCase", "GOAL", "MODEL_LABELS", "ONE_SCALE_CONFIG", "deploy_cases",
           "phase_deploy"]

_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEMO_CONFIG = _CONFIGS / "demo_hrda.yaml"
ONE_SCALE_CONFIG = _CONFIGS / "gta2cs_daformer.yaml"
DEMO_SIZE = (128, 256)
MODEL_LABELS = {"hrda": "HRDA demo (MiT-b0), slide", "one_scale": "DAFormer tiny (MiT-b0), whole"}
GOAL = 1.5  # issue 27: onnxruntime >= 1.5x eager for the tiny HRDA slide inference
_FORMAT = {"torchscript": "torchscript", "onnxruntime": "onnx"}


@dataclass(frozen=True)
class DeployCase:
    """One row: ``model`` ("hrda" / "one_scale") at ``size`` through ``runtime`` ("eager", "torchscript",
    "onnxruntime") with ``threads``; exported ``precision``, onnxruntime ``opt_level``, runtime ``batch_pixels``."""

    model: str
    size: Tuple[int, int]
    runtime: str
    threads: int
    precision: str = "fp32"
    opt_level: str = "all"
    batch_pixels: int = DEFAULT_BATCH_PIXELS

    @property
    def option(self) -> str:
        """What differs from the defaults (fp32, onnxruntime level "all", chunked batches), or ""."""
        parts = []
        if self.precision != "fp32":
            parts.append(self.precision + (" (CUDA provider's format; CPU provider here)"
                                           if self.precision == "fp16" else " dynamic"))
        if self.runtime == "onnxruntime" and self.opt_level != "all":
            parts.append(f"opt_level {self.opt_level}")
        if self.runtime != "eager" and self.batch_pixels != DEFAULT_BATCH_PIXELS:
            parts.append(f"batch_pixels {self.batch_pixels}" + (" (one call per batch)" if not self.batch_pixels
                                                                 else ""))
        return ", ".join(parts)

    @property
    def export_key(self) -> Optional[Tuple[str, str, str]]:
        """(model, format, precision) of its exported folder; None for eager."""
        return None if self.runtime == "eager" else (self.model, _FORMAT[self.runtime], self.precision)

    def as_dict(self) -> Dict[str, Any]:
        return {"model": self.model, "size": list(self.size), "runtime": self.runtime, "threads": self.threads,
                "precision": self.precision, "opt_level": self.opt_level, "batch_pixels": self.batch_pixels,
                "option": self.option}


def _thread_counts(settings: BenchmarkSettings) -> List[int]:
    if settings.threads > 0:
        return [settings.threads]
    return [1] + ([os.cpu_count()] if (os.cpu_count() or 1) > 1 else [])


def deploy_cases(settings: BenchmarkSettings) -> List[DeployCase]:
    """The rows of the phase (module docstring), eager first per (model, size, threads)."""
    threads = _thread_counts(settings)
    main = tuple(int(s) for s in settings.image_size)
    sizes = [DEMO_SIZE] if settings.tiny else list(dict.fromkeys([main, DEMO_SIZE]))
    option_sizes = sizes if settings.deploy_full or settings.tiny else [DEMO_SIZE]
    extra_threads = [] if settings.tiny else threads[1:]
    t = threads[0]
    cases: List[DeployCase] = []
    for size in sizes:
        options = size in option_sizes
        for n in [t] + (extra_threads if options else []):
            cases += [DeployCase("hrda", size, rt, n) for rt in ("eager", "torchscript", "onnxruntime")]
        if size == sizes[0]:  # the batches the chunks split (at the demo's size every batch fits one chunk)
            cases += [DeployCase("hrda", size, rt, t, batch_pixels=0)
                      for rt in (("torchscript", "onnxruntime") if options else ("onnxruntime",))]
        if not options:
            continue
        cases += [DeployCase("hrda", size, "onnxruntime", t, opt_level=lvl) for lvl in ("disable", "basic",
                                                                                        "extended")]
        cases += [DeployCase("hrda", size, "onnxruntime", t, precision=p) for p in ("int8", "fp16")]
        cases += [DeployCase("one_scale", size, rt, t) for rt in ("eager", "torchscript", "onnxruntime")]
    return cases


# ---------------------------------------------------------------------------------------------------- models
def _configs(settings: BenchmarkSettings) -> Dict[str, Any]:
    """The two models' frozen configs: the demo HRDA with ``settings.opts``; the tiny one-scale DAFormer, whole."""
    common = ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", tempfile.mkdtemp(prefix="hrda_bench_deploy_")]
    hrda = load_config(str(DEMO_CONFIG), common + list(settings.opts), freeze=True)
    full = load_run_config(str(ONE_SCALE_CONFIG))
    tiny: List[str] = []
    for key, value in tiny_overrides(full).items():
        tiny += [key, str(value)]
    one_scale = load_run_config(str(ONE_SCALE_CONFIG), tiny + common + ["TEST.MODE", "whole"])
    one_scale.freeze()
    return {"hrda": hrda, "one_scale": one_scale}


def _export(model: torch.nn.Module, cfg, folder: str, fmt: str, precision: str, image: np.ndarray) -> float:
    """Export into ``folder`` (int8 / fp16: measured here, not refused: min agreement 0); seconds taken."""
    start = time.perf_counter()
    manifest = export_model(model, cfg, folder, fmt, image=image, precision=precision,
                            min_agreement=None if precision == "fp32" else 0.0)
    fixed = [name for name, graph in manifest["graphs"].items() if not graph["dynamic"]]
    if fixed:
        raise ValueError(f"{folder}: graphs {fixed} of the deploy phase's model exported for one size only; the "
                         f"phase runs them at several sizes")
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------- profiles
def _runtime_breakdown(fn: Callable[[], Any]) -> Dict[str, float]:
    """Seconds of one exported-model call by part, from ``cProfile``: the graph calls (the runtime's
    ``run_onnx`` / ``run_torchscript``, their input copies included), HR-tile stacking (``_stack``), tile merging
    (``merge_tiles``, its resizes included), window merging (``merge_windows``' own NumPy work when called from
    ``inference``), and the rest (Python, chunk concatenation, plans)."""
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.runcall(fn)
    total = time.perf_counter() - start
    parts = Counter()
    for (path, _, name), (_, _, own, cumulative, callers) in pstats.Stats(profile).stats.items():
        base = os.path.basename(path)
        if base == "runtime.py" and name in ("run_onnx", "run_torchscript"):
            parts["graph calls"] += cumulative
        elif base == "predictor.py" and name == "_stack":
            parts["tile stacking"] += cumulative
        elif base == "numerics.py" and name == "merge_tiles":
            parts["tile merging"] += cumulative
        elif base == "numerics.py" and name == "merge_windows":
            parts["window merging"] += sum(c[2] for (p, _, caller), c in callers.items()
                                           if caller == "inference" and os.path.basename(p) == "predictor.py")
    out = {"total": total, **{k: parts.get(k, 0.0) for k in ("graph calls", "tile stacking", "tile merging",
                                                             "window merging")}}
    out["rest"] = max(0.0, total - sum(v for k, v in out.items() if k != "total"))
    return out


def _graph_inputs(folder: str, size: Tuple[int, int]) -> Dict[str, List[Dict[str, np.ndarray]]]:
    """Random inputs of the shapes the runtime feeds the graphs of the exported HRDA ``folder`` (its manifest:
    windows, tiles) for one image of ``size``: all distinct tiles, then all windows with their HR logits, in the
    chunks of ``DEFAULT_BATCH_PIXELS``."""
    manifest = read_manifest(folder)
    rng = np.random.default_rng(0)
    window, tiles = manifest["window"], manifest["tiles"]
    boxes = sliding_window_boxes(size, window["size"], window["stride"])
    plan = shared_tile_plan(boxes, tiles["size"], tiles["stride"])
    k, s = int(manifest["num_classes"]), int(tiles["output_stride"])

    def batches(n: int, hw: Sequence[int]) -> List[int]:
        step = max(1, DEFAULT_BATCH_PIXELS // (hw[0] * hw[1]))
        return [min(step, n - i) for i in range(0, n, step)]

    th, tw = tiles["size"]
    wh, ww = boxes[0][1] - boxes[0][0], boxes[0][3] - boxes[0][2]
    return {"tiles": [{"image": rng.uniform(0, 255, (b, 3, th, tw)).astype(np.float32)}
                      for b in batches(len(plan.tiles), (th, tw))],
            "window": [{"image": rng.uniform(0, 255, (b, 3, wh, ww)).astype(np.float32),
                        "hr_logits": rng.normal(0, 1, (b, k, wh // s, ww // s)).astype(np.float32)}
                       for b in batches(len(boxes), (wh, ww))]}


def _onnx_op_profile(folder: str, feeds: Dict[str, List[Dict[str, np.ndarray]]], threads: int,
                     top: int = 6) -> Dict[str, Any]:
    """onnxruntime's per-operator kernel time (level "all", ``threads``) of every graph in ``feeds`` on those
    inputs after one warm-up run (not counted): ``{graph: {"s": kernel seconds, "ops": {op: s} (the ``top``
    largest)}}``."""
    import onnxruntime as ort

    out: Dict[str, Any] = {}
    for name, batches in feeds.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(folder, f"profile_{name}")
        session = ort.InferenceSession(os.path.join(folder, name + ".onnx"), sess_options=so,
                                       providers=["CPUExecutionProvider"])
        for feed in [batches[0]] + batches:
            session.run(None, feed)
        with open(session.end_profiling()) as f:
            events = json.load(f)
        runs = sorted((e["ts"], e["dur"]) for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
        warm_up_end = runs[0][0] + runs[0][1]
        ops: Counter = Counter()
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= warm_up_end:
                ops[e["args"]["op_name"]] += e["dur"] * 1e-6
        out[name] = {"s": sum(ops.values()), "ops": dict(ops.most_common(top))}
    return out


def _eager_op_profile(fn: Callable[[], Any], top: int = 6) -> Dict[str, Any]:
    """The eager call's operators by self CPU time (``torch.profiler``): ``{"s": total, "ops": {op: s}}``."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    ops = {e.key: e.self_cpu_time_total * 1e-6 for e in prof.key_averages()}
    largest = sorted(ops.items(), key=lambda kv: -kv[1])[:top]
    return {"s": sum(ops.values()), "ops": dict(largest)}


# ---------------------------------------------------------------------------------------------------- the phase
def phase_deploy(settings: BenchmarkSettings) -> Dict[str, Any]:
    """Every row of :func:`deploy_cases` (module docstring). Returns ``{"rows": [case dict + "s_per_image",
    "img_s", "runs_s", "best_s" (the fastest round), "first_s", "ratio" (to eager of the same model, size,
    threads), "argmax_agreement" (%), "max_abs_diff", "max_abs_logit"], "exports": {folder: seconds}, "goal": {...},
    "profile": {...} (main size), "weights", "rounds", "main_size", "threads"}``."""
    cases = deploy_cases(settings)
    cfgs = _configs(settings)
    torch.manual_seed(0)
    models = {name: build_model(cfg).eval() for name, cfg in cfgs.items()}
    weights = cfgs["hrda"].MODEL.WEIGHTS
    if weights:
        load_model_weights(models["hrda"], weights, cfgs["hrda"].TEST.WEIGHTS_SOURCE)
    sizes = list(dict.fromkeys(c.size for c in cases))
    images = {size: sample_image(cfgs["hrda"], image_size=size) for size in sizes}
    smallest = min(sizes, key=lambda s: s[0] * s[1])
    tmp = tempfile.mkdtemp(prefix="hrda_bench_deploy_")
    try:
        folders, exports = {}, {}
        for key in dict.fromkeys(c.export_key for c in cases if c.export_key):
            folder = os.path.join(tmp, "_".join(key))
            exports[os.path.basename(folder)] = _export(models[key[0]], cfgs[key[0]], folder, key[1], key[2],
                                                        images[smallest])
            folders[key] = folder
        result = _measure(settings, cases, models, images, folders)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result.update(exports=exports, weights=weights or "random (seed 0)")
    return result


def _measure(settings: BenchmarkSettings, cases: List[DeployCase], models: Dict[str, torch.nn.Module],
             images: Dict[Tuple[int, int], np.ndarray], folders: Dict[Tuple[str, str, str], str]) -> Dict[str, Any]:
    """Warm-up, the alternating rounds and the profiles of :func:`phase_deploy` (the exported ``folders`` by
    ``DeployCase.export_key``)."""
    tensors = {size: torch.from_numpy(image) for size, image in images.items()}

    def eager_fn(case: DeployCase) -> Callable[[], np.ndarray]:
        model, x = models[case.model], tensors[case.size]

        def run() -> np.ndarray:
            with torch.inference_mode():
                return model.inference(model.normalize(x)).numpy()
        return run

    def exported_fn(case: DeployCase) -> Callable[[], np.ndarray]:
        exported = ExportedModel(folders[case.export_key], RuntimeOptions(
            threads=case.threads, opt_level=case.opt_level, batch_pixels=case.batch_pixels))
        return lambda: exported.inference(images[case.size])

    fns = {c: eager_fn(c) if c.runtime == "eager" else exported_fn(c) for c in cases}

    def call(case: DeployCase) -> Tuple[float, Any]:
        torch.set_num_threads(case.threads)
        start = time.perf_counter()
        out = fns[case]()
        return time.perf_counter() - start, out

    rows: Dict[DeployCase, Dict[str, Any]] = {}
    eager_out: Dict[Tuple[str, Tuple[int, int], int], np.ndarray] = {}
    for case in cases:  # warm-up; eager comes first for each (model, size, threads)
        seconds, out = call(case)
        ref_key = (case.model, case.size, case.threads)
        if case.runtime == "eager":
            eager_out[ref_key] = out
        ref = eager_out[ref_key]
        diff = np.abs(out.astype(np.float64) - ref)
        rows[case] = {**case.as_dict(), "first_s": seconds, "runs_s": [], "max_abs_diff": float(diff.max()),
                      "max_abs_logit": float(np.abs(ref).max()),
                      "argmax_agreement": float((out.argmax(1) == ref.argmax(1)).mean() * 100.0)}
    del eager_out
    rounds = max(1, settings.infer_runs)
    for r in range(rounds):
        for case in (reversed(cases) if r % 2 else cases):
            rows[case]["runs_s"].append(call(case)[0])
    for case, row in rows.items():
        row["s_per_image"] = statistics.median(row["runs_s"])
        row["best_s"] = min(row["runs_s"])
        row["img_s"] = 1.0 / row["s_per_image"]
    for case, row in rows.items():
        eager = rows[DeployCase(case.model, case.size, "eager", case.threads)]
        row["ratio"] = eager["s_per_image"] / row["s_per_image"]
    main = cases[0].size
    t = cases[0].threads
    ort_main = rows[DeployCase("hrda", main, "onnxruntime", t)]
    result: Dict[str, Any] = {
        "rows": list(rows.values()), "rounds": rounds, "main_size": list(main), "threads": _thread_counts(settings),
        "goal": {"ratio": GOAL, "measured": ort_main["ratio"], "met": ort_main["ratio"] >= GOAL,
                 "size": list(main), "threads": t}}
    # where the time goes at the main size (extra calls, not part of the medians)
    torch.set_num_threads(t)
    profile: Dict[str, Any] = {"size": list(main), "threads": t}
    for runtime in ("onnxruntime", "torchscript"):
        case = DeployCase("hrda", main, runtime, t)
        profile[runtime] = _runtime_breakdown(fns[case])
    onnx_folder = folders["hrda", "onnx", "fp32"]
    profile["onnxruntime_ops"] = _onnx_op_profile(onnx_folder, _graph_inputs(onnx_folder, main), t)
    profile["eager_ops"] = _eager_op_profile(fns[DeployCase("hrda", main, "eager", t)])
    result["profile"] = profile
    return result
