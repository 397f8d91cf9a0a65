"""Export a built model to ONNX or TorchScript for :mod:`hrda_d2_deploy`, checked against eager PyTorch.

The graphs, the size probe and the checks are docs/method.md §23.1-23.3.

What is exported is every tensor operation of one window: normalisation, backbone, heads, and for a two-scale HRDA
model with HR tiles the context branch, scale attention and fusion. The loops stay in the runtime
(:mod:`hrda_d2_deploy.predictor`): the test windows, the HR tiles and their reuse, the merging. So a model exports as

* ``whole`` (one graph: image -> logits): one-scale models (DAFormer, DeepLabV2, the VFM recipes), and HRDA without
  HR tiles or with BLUR_HR_CROP (its tiles are then cut inside the graph);
* ``tiles`` + ``window``: HRDA with HR slide inference. ``tiles``: HR tiles -> HR logits (backbone + single-scale
  head); ``window``: (window, its merged HR logits) -> fused logits (``HRDA.whole_inference`` with ``hr_logits``).

Each graph is traced (``torch.jit.trace``; ONNX through ``torch.onnx.export`` of the trace, opset 17, with dynamic
batch, height and width) at the shapes the sample image needs. It is then run at a second, odd size with a batch
of two: when it still equals eager PyTorch there it is marked ``dynamic``, otherwise (a ViT's position grid traced
as constants) it is kept for its traced shape only and the runtime refuses other sizes with the fix.

The checks (:class:`ExportCheck`) compare the written graphs with eager PyTorch, graph by graph on the sample's
windows and then the whole ``inference`` of the sample image: float32 exports must agree within
``tolerance x max(1, max |eager logit|)`` on every logit and in at least ``min_agreement`` % of the argmax pixels;
fp16 and int8 (ONNX only) are checked by their argmax agreement alone, the logit difference is reported. A model that
disagrees is not written: :class:`ExportCheckError` names the graph and the output that differ.

Images are RGB ``N x 3 x H x W`` float32 in 0..255 (the graphs normalise); sizes ``(height, width)`` after the
test rescale; boxes ``(y1, y2, x1, x2)`` half-open.
"""
import json
import logging
import os
import shutil
import tempfile
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from torch import Tensor, nn

from hrda_d2_deploy.geometry import CropBox, sliding_window_boxes
from hrda_d2_deploy.predictor import ExportedModel, network_input
from hrda_d2_deploy.runtime import (FORMATS, GRAPH_SUFFIX, MANIFEST, MANIFEST_VERSION, PRECISIONS, RuntimeOptions,
                                    load_graph)

from ..modeling.meta_arch.crop_utils import stack_windows

__all__ = ["DEFAULT_MIN_AGREEMENT", "DEFAULT_TOLERANCE", "ExportCheck", "ExportCheckError", "ExportError",
           "export_model", "graph_modules", "sample_image"]

logger = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 1e-4  # float32 exports: |exported - eager| <= tolerance x max(1, max |eager|) on every logit
DEFAULT_MIN_AGREEMENT = {"fp32": 99.99, "fp16": 99.0, "int8": 95.0}  # argmax agreement in %, per precision
ONNX_OPSET = 17
INT8_OP_TYPES = ["MatMul"]  # what --precision int8 quantises (_convert_precision)
_PROBE_BATCH = 2


class ExportError(ValueError):
    """An export that cannot be made (format, precision, output folder, a model the exporter does not take); the
    message names the value and the fix."""


class ExportCheckError(ExportError):
    """The exported model disagrees with eager PyTorch beyond the tolerance; nothing was written."""


# ---------------------------------------------------------------------------------------------------- the graphs
class WholeGraph(nn.Module):
    """image ``N x 3 x h x w`` (RGB 0..255) -> logits ``N x K x h x w``: ``HRDA.whole_inference``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Tensor:
        return self.model.whole_inference(self.model.normalize(image))


class TilesGraph(nn.Module):
    """HR tiles ``N x 3 x h x w`` (RGB 0..255) -> HR logits ``N x K x h/s x w/s`` (backbone + single-scale head)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Tensor:
        return self.model.single_scale_head(self.model.backbone(self.model.normalize(image)))


class WindowGraph(nn.Module):
    """(window ``N x 3 x h x w`` RGB 0..255, its merged HR logits ``N x K x h/s x w/s``) -> fused logits
    ``N x K x h x w``: ``HRDA.whole_inference`` with ``hr_logits``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor, hr_logits: Tensor) -> Tensor:
        return self.model.whole_inference(self.model.normalize(image), hr_logits)


_INPUTS = {"whole": ["image"], "tiles": ["image"], "window": ["image", "hr_logits"]}


def exports_tiles(model: nn.Module) -> bool:
    """Whether ``model`` exports as ``tiles`` + ``window``: two scales with HR slide inference and no HR blur (the
    tiles of a window are then crops of the image); else as ``whole``."""
    return model.is_multi_scale and model.hr_slide_inference and not model.blur_hr_crop


def graph_modules(model: nn.Module) -> Dict[str, nn.Module]:
    """The graphs ``model`` (an ``HRDA`` in eval mode) exports as: ``tiles`` and ``window`` for two scales with HR
    slide inference and no HR blur (the tiles of a window are then crops of the image), else ``whole``."""
    if exports_tiles(model):
        graphs = {"tiles": TilesGraph(model), "window": WindowGraph(model)}
    else:
        graphs = {"whole": WholeGraph(model)}
    # in eval mode: the ONNX exporter restores the wrapper's mode on everything below it after tracing
    return {name: graph.eval() for name, graph in graphs.items()}


# ---------------------------------------------------------------------------------------------------- the sample
def sample_image(cfg: CfgNode, path: Optional[str] = None, image_size: Optional[Sequence[int]] = None) -> np.ndarray:
    """The image the export is traced and checked on: ``1 x 3 x H x W`` float32 RGB 0..255 after the test rescale.

    ``path``: an image file (read with OpenCV, rescaled to INPUT.TEST.SCALE as the test pipeline does); else a
    generated smooth image of ``image_size`` (default: the test rescale's (short, long) side, e.g. 1024 x 2048)."""
    import cv2

    scale = list(cfg.INPUT.TEST.SCALE)
    if path is not None:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise ExportError(f"--sample-image {path}: not a readable image file; give a .png / .jpg of your camera")
        return network_input(bgr[:, :, ::-1], scale)
    if image_size is None:
        image_size = (min(scale), max(scale)) if scale else tuple(cfg.TEST.SLIDE.CROP_SIZE)
    height, width = (int(s) for s in image_size)
    if min(height, width) <= 0:
        raise ExportError(f"--image-size {height} {width}: give a positive height and width")
    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 255, size=(max(2, height // 32), max(2, width // 32), 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    noisy = np.clip(smooth + rng.normal(0, 8, size=smooth.shape), 0, 255).round()
    return np.ascontiguousarray(noisy.transpose(2, 0, 1), dtype=np.float32)[None]


def _window_boxes(model: nn.Module, image_hw: Sequence[int]) -> List[CropBox]:
    if model.test_mode == "whole":
        return [(0, int(image_hw[0]), 0, int(image_hw[1]))]
    return sliding_window_boxes(image_hw, model.test_crop_size, model.test_stride)


def _graph_inputs(model: nn.Module, name: str, window: Tensor) -> Tuple[Tensor, ...]:
    """The inputs of graph ``name`` for one window ``N x 3 x h x w`` (RGB 0..255): the window itself, or its
    first HR tile (``tiles``), or the window and its merged HR logits computed eagerly (``window``)."""
    if name == "whole":
        return (window,)
    boxes = sliding_window_boxes(window.shape[-2:], model.hr_crop_size, model.hr_tile_stride)
    if name == "tiles":
        y1, y2, x1, x2 = boxes[0]
        return (window[..., y1:y2, x1:x2].contiguous(),)
    with torch.no_grad():
        tiles = model.single_scale_head(model.backbone(model.normalize(stack_windows(window, boxes))))
        hr = model.sem_seg_head.merge_tiles(tiles.split(window.shape[0]), boxes)
    return (window, hr)


def _probe_sizes(size: Sequence[int]) -> List[Tuple[int, int]]:
    """Second, odd sizes for the generality probe: about 3/4 of the traced size, then about 5/4 (for models that
    do not take the smaller one), each 3 modulo 8 (at least 35) so that halving, quartering and eighthing it round
    differently down and up. Sizes 1 modulo 8 do not (floor(97 / 2) / 4 = 12 = floor(97 / 4) / 2; 3/4 and 5/4 of a
    128 window | 1 are 97 and 161, both 1 modulo 8), so a branch on such rounding would go unnoticed."""
    return [tuple(max(35, (int(s) * k // 4) // 8 * 8 + 3) for s in size) for k in (3, 5)]  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------------- the checks
class ExportCheck:
    """One comparison of exported and eager outputs (``N x K x H x W``): the largest absolute difference, the
    largest eager magnitude and the argmax agreement in percent."""

    def __init__(self, what: str, exported: np.ndarray, eager: np.ndarray):
        self.what = what
        self.shape = list(eager.shape)
        diff = np.abs(exported.astype(np.float64) - eager.astype(np.float64))
        self.max_abs_diff = float(diff.max()) if diff.size else 0.0
        self.where = [int(i) for i in np.unravel_index(int(diff.argmax()), diff.shape)] if diff.size else []
        self.max_abs_logit = float(np.abs(eager).max()) if eager.size else 0.0
        self.argmax_agreement = float((exported.argmax(axis=1) == eager.argmax(axis=1)).mean() * 100.0)

    def failure(self, precision: str, tolerance: float, min_agreement: float) -> Optional[str]:
        """Why this comparison fails its precision's rule, or None."""
        bound = tolerance * max(1.0, self.max_abs_logit)
        if precision == "fp32" and not self.max_abs_diff <= bound:
            return (f"{self.what} differs from eager PyTorch by {self.max_abs_diff:.3g} at (n, class, y, x) = "
                    f"{tuple(self.where)} (tolerance {tolerance:g} x max(1, {self.max_abs_logit:.3g}) = {bound:.3g})")
        if self.argmax_agreement < min_agreement:
            return (f"{self.what} agrees with eager PyTorch on {self.argmax_agreement:.4f} % of the argmax pixels "
                    f"(at least {min_agreement:g} % required; largest logit difference {self.max_abs_diff:.3g})")
        return None

    def as_dict(self) -> Dict[str, Any]:
        return {"shape": self.shape, "max_abs_diff": self.max_abs_diff, "max_abs_logit": self.max_abs_logit,
                "argmax_agreement": self.argmax_agreement}


def _eager(module: nn.Module, inputs: Sequence[Tensor]) -> np.ndarray:
    with torch.no_grad():
        return module(*inputs).float().numpy()


# ---------------------------------------------------------------------------------------------------- writing
def _write_graph(module: nn.Module, inputs: Tuple[Tensor, ...], name: str, path: str, fmt: str) -> None:
    """Trace ``module`` at ``inputs`` and write it (TorchScript archive, or ONNX with dynamic N / H / W)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python values: the probe decides what holds
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(module, inputs, check_trace=False), path)
            return
        axes = {n: {0: "batch", 2: f"{n}_height", 3: f"{n}_width"} for n in _INPUTS[name]}
        axes["logits"] = {0: "batch", 2: "logits_height", 3: "logits_width"}
        torch.onnx.export(module, inputs, path, input_names=_INPUTS[name], output_names=["logits"],
                          dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False)


def _convert_precision(path: str, precision: str) -> None:
    """Rewrite an fp32 ONNX graph in place as fp16 (float inputs and outputs kept float32) or with dynamically
    quantised int8 weights (onnxruntime's ``quantize_dynamic``) of the matrix products (:data:`INT8_OP_TYPES`: the
    linear layers of the transformers); convolutions stay float32: onnxruntime's CPU ``ConvInteger`` made the tiny
    demo HRDA 4x slower than fp32 and agreed less with eager (README "Deployment speed"). A model without matrix
    products (DeepLabV2) keeps float32 weights (logged)."""
    import onnx

    if precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(onnx.load(path), keep_io_types=True), path)
    elif precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        if not any(node.op_type in INT8_OP_TYPES for node in onnx.load(path).graph.node):
            logger.warning("%s: no %s node to quantise (a convolutional model): its int8 export keeps float32 "
                           "weights", path, "/".join(INT8_OP_TYPES))
        quantized = path + ".int8"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(path, quantized, weight_type=QuantType.QInt8, op_types_to_quantize=INT8_OP_TYPES)
        os.replace(quantized, path)


def _manifest(model: nn.Module, cfg: CfgNode, fmt: str, precision: str) -> Dict[str, Any]:
    tiles = None
    if exports_tiles(model):
        tiles = {"size": list(model.hr_crop_size), "stride": list(model.hr_tile_stride),
                 "output_stride": int(model.output_stride)}
    return {
        "version": MANIFEST_VERSION,
        "format": fmt,
        "precision": precision,
        "num_classes": int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES),
        "test_scale": [int(s) for s in cfg.INPUT.TEST.SCALE],
        "mode": model.test_mode,
        "window": {"size": list(model.test_crop_size), "stride": list(model.test_stride),
                   "batched": bool(model.test_batched), "merge": model.slide_merge},
        "tiles": tiles,
        "graphs": {},
        "check": {},
    }


def export_model(model: nn.Module, cfg: CfgNode, output: str, fmt: str, *, image: np.ndarray,
                 precision: str = "fp32", tolerance: float = DEFAULT_TOLERANCE,
                 min_agreement: Optional[float] = None, overwrite: bool = False) -> Dict[str, Any]:
    """Export ``model`` (the ``HRDA`` of ``cfg``, weights loaded, on the CPU) to the folder ``output``.

    Args:
        image: the sample ``1 x 3 x H x W`` float32 RGB 0..255 after the test rescale (:func:`sample_image`); its
            windows and tiles give the traced shapes.
        fmt: ``"onnx"`` or ``"torchscript"``; precision: ``"fp32"``, or ``"fp16"`` / ``"int8"`` (ONNX only).
        tolerance, min_agreement: the checks (module docstring); ``min_agreement`` defaults per precision
            (:data:`DEFAULT_MIN_AGREEMENT`).
        overwrite: replace an existing ``output`` folder (else refused).

    Returns the manifest written (``model.json``), with the measured checks under ``"check"``.
    Raises :class:`ExportError` / :class:`ExportCheckError`; on any failure nothing is left at ``output``.
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if precision not in PRECISIONS:
        raise ExportError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision != "fp32" and fmt != "onnx":
        raise ExportError(f"--precision {precision} is an ONNX option (onnxruntime's fp16 conversion / dynamic int8 "
                          f"quantisation); use --format onnx, or --precision fp32 for TorchScript")
    if os.path.exists(output) and not overwrite:
        raise ExportError(f"--output {output} exists; pass --overwrite to replace it, or choose another folder")
    if os.path.exists(output) and not os.path.isdir(output):
        raise ExportError(f"--output {output} is a file, not a folder; --overwrite replaces folders only: choose "
                          f"another path")
    min_agreement = DEFAULT_MIN_AGREEMENT[precision] if min_agreement is None else float(min_agreement)
    model = model.eval()
    if model.device.type != "cpu":
        raise ExportError(f"the model is on {model.device}; export on the CPU (MODEL.DEVICE cpu): the graphs are "
                          f"traced there and run on any onnxruntime provider")
    manifest = _manifest(model, cfg, fmt, precision)
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        _export_into(staging, model, cfg, manifest, fmt, precision, torch.from_numpy(image), tolerance, min_agreement)
        if os.path.exists(output):
            shutil.rmtree(output)
        os.replace(staging, output)
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging)
    return manifest


def _export_into(folder: str, model: nn.Module, cfg: CfgNode, manifest: Dict[str, Any], fmt: str, precision: str,
                 image: Tensor, tolerance: float, min_agreement: float) -> None:
    """Write, probe and check every graph, then check the whole inference, into ``folder``."""
    modules = graph_modules(model)
    box = _window_boxes(model, image.shape[-2:])[0]
    window = image[..., box[0]:box[1], box[2]:box[3]].contiguous()
    options = RuntimeOptions(opt_level="all")
    failures: List[str] = []
    for name, module in modules.items():
        inputs = _graph_inputs(model, name, window)
        path = os.path.join(folder, name + GRAPH_SUFFIX[fmt])
        logger.info("exporting graph %r (%s, inputs %s)", name, fmt, [list(t.shape) for t in inputs])
        _write_graph(module, inputs, name, path, fmt)
        spec = {"file": os.path.basename(path), "inputs": _INPUTS[name], "shape": list(inputs[0].shape[-2:]),
                "dynamic": False}
        manifest["graphs"][name] = spec
        spec["dynamic"] = _probe(model, module, name, folder, manifest, inputs[0], tolerance, options)
        if precision != "fp32":
            _convert_precision(path, precision)
        check = ExportCheck(f"graph {name!r} output 'logits'", load_graph(folder, manifest, name, options)(
            *[t.numpy() for t in inputs]), _eager(module, inputs))
        manifest["check"][name] = check.as_dict()
        failure = check.failure(precision, tolerance, min_agreement)
        if failure:
            failures.append(failure)
        logger.info("graph %r: largest logit difference %.3g, argmax agreement %.4f %%, %s", name,
                    check.max_abs_diff, check.argmax_agreement,
                    "any size" if spec["dynamic"] else f"fixed size {spec['shape']}")
    if failures:
        raise ExportCheckError("; ".join(failures) + _check_fix(precision))
    _write_manifest(folder, manifest)
    with torch.no_grad():
        eager = model.inference(model.normalize(image)).float().numpy()
    whole = ExportCheck("the whole inference", ExportedModel(folder, options).inference(image.numpy()), eager)
    manifest["check"]["inference"] = {"image_size": list(image.shape[-2:]), **whole.as_dict(),
                                      "tolerance": tolerance, "min_agreement": min_agreement}
    failure = whole.failure(precision, tolerance, min_agreement)
    if failure:
        raise ExportCheckError(failure + _check_fix(precision))
    logger.info("whole inference of the %d x %d sample: largest logit difference %.3g, argmax agreement %.4f %%",
                image.shape[-2], image.shape[-1], whole.max_abs_diff, whole.argmax_agreement)
    _write_manifest(folder, manifest)
    with open(os.path.join(folder, "config.yaml"), "w", encoding="utf-8") as f:
        f.write(cfg.dump())


def _write_manifest(folder: str, manifest: Dict[str, Any]) -> None:
    with open(os.path.join(folder, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)


def _check_fix(precision: str) -> str:
    if precision == "fp32":
        return ("; nothing was written. The tracer recorded an operation that does not hold for these inputs: run with "
                "--debug for the tracer's warnings, or export with --format torchscript / onnx to compare")
    return f"; nothing was written. Lower --min-agreement to accept the {precision} model, or export fp32"


def _probe(model: nn.Module, module: nn.Module, name: str, folder: str, manifest: Dict[str, Any], traced: Tensor,
           tolerance: float, options: RuntimeOptions) -> bool:
    """Whether graph ``name`` (written, fp32) equals eager PyTorch at a second, odd size with a batch of two
    (``traced``: its traced image input, a window or a tile; the first of :func:`_probe_sizes` that eager PyTorch
    takes). A batch of two at the traced size must hold in any case (windows and tiles run batched)."""
    graph = load_graph(folder, manifest, name, options)

    def holds(batch: Tensor) -> Optional[bool]:
        """None: eager PyTorch does not take this size; else whether the graph equals it."""
        try:
            inputs = (batch,) if name == "tiles" else _graph_inputs(model, name, batch)
            eager = _eager(module, inputs)
        except Exception as e:  # the model itself refuses the size (e.g. MiT below 32 px): not a probe
            logger.debug("graph %r: eager PyTorch refuses %s: %s", name, list(batch.shape), e)
            return None
        try:
            check = ExportCheck(name, graph(*[t.numpy() for t in inputs]), eager)
        except Exception as e:  # the runtime refusing a size the model takes: the graph is not size-generic
            logger.debug("graph %r at %s: %s", name, list(batch.shape), e)
            return False
        return check.failure("fp32", tolerance, DEFAULT_MIN_AGREEMENT["fp32"]) is None

    pair = torch.cat([traced, traced.flip(-1)])
    for h, w in _probe_sizes(traced.shape[-2:]):
        if (h, w) == tuple(traced.shape[-2:]):
            continue
        probe = pair[..., :h, :w] if h <= traced.shape[-2] and w <= traced.shape[-1] else \
            torch.nn.functional.pad(pair, (0, max(0, w - pair.shape[-1]), 0, max(0, h - pair.shape[-2])),
                                    mode="reflect")[..., :h, :w]
        result = holds(probe.contiguous())
        if result is not None:
            if result:
                return True
            break
    if not holds(pair):
        if not holds(traced):  # wrong at its own traced input already: the check names the output that differs
            return False
        raise ExportError(f"graph {name!r} does not take a batch of two at its traced size "
                          f"{list(traced.shape[-2:])}; set TEST.SLIDE.BATCHED False to run windows one by one")
    return False
