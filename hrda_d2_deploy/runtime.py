"""An exported model folder and its graphs, run by onnxruntime or TorchScript (``torch.jit``), without Detectron2.

A folder written by ``tools/deploy/export_model.py`` holds ``model.json`` (the manifest below), one file per graph
(``<graph>.onnx`` or ``<graph>.ts``) and ``config.yaml`` (the config it was exported from, for reference only).

Manifest (JSON)::

    format          "onnx" | "torchscript"
    precision       "fp32" | "fp16" | "int8"
    num_classes     K
    test_scale      [long, short] of the keep-ratio test rescale (INPUT.TEST.SCALE), or [] (none)
    mode            "whole" | "slide"                           (TEST.MODE)
    window          {"size": [h, w], "stride": [h, w], "batched": bool, "merge": "logits" | "probabilities"}
    tiles           {"size": [h, w], "stride": [h, w], "output_stride": s} | null   (the HR tiles of HRDA)
    graphs          {name: {"file", "inputs": [names], "shape": [h, w] traced, "dynamic": bool}}
    check           what the exporter measured against eager PyTorch

Graphs take RGB images ``N x 3 x h x w`` float32 in 0..255 (normalisation is inside the graph):

* ``whole``: image -> logits ``N x K x h x w`` (a whole window / image; one-scale models, HRDA without HR tiles);
* ``tiles``: HR tiles -> their HR logits ``N x K x h/s x w/s`` (backbone and single-scale head of HRDA);
* ``window``: (window image, its merged HR logits) -> the fused logits ``N x K x h x w`` (context branch, scale
  attention, fusion).

A graph whose export does not hold for other sizes (``dynamic`` false, e.g. a ViT whose position grid was traced
as constants) runs only at its traced ``shape``; another size is refused with the fix.

Only the standard library and NumPy are imported here; ``onnxruntime`` or ``torch`` when a graph is loaded.
"""
import importlib
import json
import os
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

__all__ = [
    "DEFAULT_BATCH_PIXELS",
    "ExportedModelError",
    "FORMATS",
    "GRAPH_SUFFIX",
    "MANIFEST",
    "OPT_LEVELS",
    "PRECISIONS",
    "RuntimeOptions",
    "load_graph",
    "read_manifest",
]

MANIFEST = "model.json"
MANIFEST_VERSION = 1
FORMATS = ("onnx", "torchscript")
GRAPH_SUFFIX = {"onnx": ".onnx", "torchscript": ".ts"}
PRECISIONS = ("fp32", "fp16", "int8")
# onnxruntime's GraphOptimizationLevel members by the names of its documentation
OPT_LEVELS = ("disable", "basic", "extended", "all")
_ORT_LEVEL = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}
# RuntimeOptions.batch_pixels: 128 x 128 x 8 = 64 x 64 x 32, the fastest chunks of the tiny demo HRDA on a CPU
DEFAULT_BATCH_PIXELS = 1 << 17
_REEXPORT = "export the model again with tools/deploy/export_model.py"


class ExportedModelError(ValueError):
    """An exported model folder that cannot be used: missing or damaged files, a size its fixed-shape graph does
    not take. The message names the file (or folder) and the fix."""


class RuntimeOptions:
    """How the graphs run.

    Args:
        threads: intra-op threads (onnxruntime ``intra_op_num_threads`` / ``torch.set_num_threads``); None: the
            runtime's default (all cores).
        opt_level: onnxruntime graph optimisation, one of :data:`OPT_LEVELS` (ignored by TorchScript).
        providers: onnxruntime execution providers in order of preference; None: CUDA when the installed
            onnxruntime has it, then CPU.
        device: TorchScript device ("cpu", "cuda"); ignored by onnxruntime.
        batch_pixels: the most input pixels (images x height x width) one graph call gets: a larger batch of
            windows or tiles runs in chunks of ``max(1, batch_pixels // (h * w))`` images (the same results up to
            float rounding; on a CPU a chunk's activations stay in the cache, README "Deployment speed"); 0: the
            whole batch in one call.
    """

    def __init__(self, threads: Optional[int] = None, opt_level: str = "all",
                 providers: Optional[Sequence[str]] = None, device: str = "cpu",
                 batch_pixels: int = DEFAULT_BATCH_PIXELS):
        if threads is not None and int(threads) < 1:
            raise ValueError(f"threads must be a positive number, got {threads}")
        if int(batch_pixels) < 0:
            raise ValueError(f"batch_pixels must be 0 (no chunks) or a positive number, got {batch_pixels}")
        if opt_level not in OPT_LEVELS:
            raise ValueError(f"opt_level {opt_level!r} is not one of {OPT_LEVELS}")
        self.threads = None if threads is None else int(threads)
        self.opt_level = opt_level
        self.providers = None if providers is None else list(providers)
        self.device = device
        self.batch_pixels = int(batch_pixels)


def read_manifest(folder: str) -> Dict[str, Any]:
    """The checked manifest of an exported model folder."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isdir(folder):
        raise ExportedModelError(f"{folder}: no such folder; give the --output folder of "
                                 f"tools/deploy/export_model.py")
    if not os.path.isfile(path):
        raise ExportedModelError(f"{path}: missing, so {folder} is not an exported model folder; {_REEXPORT}")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportedModelError(f"{path}: not a readable manifest ({e}); {_REEXPORT}") from None
    missing = [k for k in ("version", "format", "precision", "num_classes", "mode", "window", "tiles", "graphs",
                           "test_scale") if k not in manifest]
    if missing:
        raise ExportedModelError(f"{path}: the manifest lacks {missing}; {_REEXPORT}")
    if manifest["version"] != MANIFEST_VERSION:
        raise ExportedModelError(f"{path}: manifest version {manifest['version']}, this runtime reads "
                                 f"{MANIFEST_VERSION}; {_REEXPORT}")
    if manifest["format"] not in FORMATS:
        raise ExportedModelError(f"{path}: unknown format {manifest['format']!r} (known: {', '.join(FORMATS)}); "
                                 f"{_REEXPORT}")
    for name, graph in manifest["graphs"].items():
        file = os.path.join(folder, graph["file"])
        if not os.path.isfile(file):
            raise ExportedModelError(f"{file}: missing (graph {name!r} of {path}); {_REEXPORT}")
    return manifest


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _import_runtime(name: str, path: str, install: str):
    """The graphs' runtime module, or the error naming the file that needs it and what to install."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ExportedModelError(f"{path} needs {name}, which is not installed here: pip install {install}") from None


def _onnx_session(path: str, options: RuntimeOptions):
    ort = _import_runtime("onnxruntime", path, "onnxruntime (or onnxruntime-gpu for the CUDA provider)")

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _ORT_LEVEL[options.opt_level])
    if options.threads is not None:
        so.intra_op_num_threads = options.threads
        so.inter_op_num_threads = 1
    available = ort.get_available_providers()
    if options.providers is None:
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    else:
        unknown = [p for p in options.providers if p not in available]
        if unknown:
            raise ExportedModelError(f"onnxruntime providers {unknown} are not available here (available: "
                                     f"{available}); install the onnxruntime build that has them, or leave them out")
        providers = list(options.providers)
    try:
        return ort.InferenceSession(path, sess_options=so, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for unreadable models
        raise ExportedModelError(f"{path}: onnxruntime cannot load it ({_first_line(e)}); the file is damaged or "
                                 f"incomplete: {_REEXPORT}") from None


def _torchscript_module(path: str, options: RuntimeOptions):
    torch = _import_runtime("torch", path, "torch")

    if options.threads is not None:
        torch.set_num_threads(options.threads)
    try:
        with warnings.catch_warnings():  # torch >= 2.9 marks torch.jit deprecated on every load
            warnings.filterwarnings("ignore", category=FutureWarning)
            module = torch.jit.load(path, map_location=options.device)
    except Exception as e:  # torch.jit.load raises RuntimeError / zipfile errors for damaged archives
        raise ExportedModelError(f"{path}: torch.jit cannot load it ({_first_line(e)}); the file is damaged or "
                                 f"incomplete: {_REEXPORT}") from None
    return module.eval()


def load_graph(folder: str, manifest: Dict[str, Any], name: str,
               options: RuntimeOptions) -> Callable[..., np.ndarray]:
    """Graph ``name`` of the exported folder as a function of NumPy float32 arrays (in the manifest's input order)
    returning a NumPy float32 array."""
    spec = manifest["graphs"][name]
    path = os.path.join(folder, spec["file"])
    inputs: List[str] = list(spec["inputs"])
    if manifest["format"] == "onnx":
        session = _onnx_session(path, options)

        def run_onnx(*arrays: np.ndarray) -> np.ndarray:
            feed = {n: np.ascontiguousarray(a, dtype=np.float32) for n, a in zip(inputs, arrays)}
            return session.run(None, feed)[0]

        return run_onnx

    torch = _import_runtime("torch", path, "torch")
    module = _torchscript_module(path, options)

    def run_torchscript(*arrays: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            tensors = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(options.device) for a in arrays]
            return module(*tensors).float().cpu().numpy()

    return run_torchscript
