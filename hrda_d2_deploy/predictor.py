"""Prediction with an exported model: the window loop, HR-tile reuse and merging of ``HRDA.inference`` around the
exported graphs, and the predictor with the call of ``hrda_d2.engine.predictor.SemSegPredictor``.

``ExportedModel(folder).inference(images)`` equals the eager ``HRDA.inference`` of the same weights (up to float
rounding): TEST.MODE "whole" runs the image as one window, "slide" the TEST.SLIDE windows of
:func:`~.geometry.sliding_window_boxes` (shrunk to images smaller than a window, as the eager model: no padding);
a two-scale HRDA model decodes each distinct HR tile of the windows once (:func:`~.geometry.shared_tile_plan`),
merges every window's tiles and runs its context branch and fusion; the windows are averaged with a count matrix
(their softmax with TEST.SLIDE.MERGE "probabilities").

``DeployPredictor(folder)(image)`` adds the test pipeline of the eager predictor: the keep-ratio rescale to the
manifest's ``test_scale`` (OpenCV bilinear, as the ``TestMapper``; OpenCV is imported only when the rescale changes
the size) and the bilinear resize of the logits back to the image's size.

Images: ``H x W x 3`` uint8 (predictor), ``N x 3 x H x W`` float32 RGB 0..255 (``inference``); logits float32
``N x K x H x W``. Only the standard library and NumPy are imported here; the graphs' runtime when loaded.
"""
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .geometry import CropBox, imrescale_size, shared_tile_plan, sliding_window_boxes
from .numerics import merge_tiles, merge_windows, resize_bilinear
from .runtime import ExportedModelError, RuntimeOptions, load_graph, read_manifest

__all__ = ["DeployPredictor", "ExportedModel", "network_input", "rgb_image"]

_INPUT_FORMATS = ("BGR", "RGB")


def rgb_image(image: np.ndarray, input_format: str) -> np.ndarray:
    """The RGB view of an ``H x W x 3`` uint8 image in ``input_format`` ("BGR" as OpenCV reads, or "RGB"); anything
    else is refused (ValueError). Shared by this predictor and the eager ``SemSegPredictor``."""
    if input_format not in _INPUT_FORMATS:
        raise ValueError(f"input_format={input_format!r} is not one of {_INPUT_FORMATS}")
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected an H x W x 3 uint8 image, got {desc}")
    return image[:, :, ::-1] if input_format == "BGR" else image


def network_input(rgb: np.ndarray, test_scale: Sequence[int]) -> np.ndarray:
    """``H x W x 3`` uint8 RGB -> ``1 x 3 x h x w`` float32 0..255 after the test pipeline's keep-ratio rescale to
    ``test_scale`` (``TestMapper``: :func:`~.geometry.imrescale_size`, OpenCV ``INTER_LINEAR``; none for an empty
    scale). OpenCV is imported only when the size changes."""
    if test_scale:
        height, width = rgb.shape[:2]
        new_h, new_w = imrescale_size(height, width, test_scale)
        if (new_h, new_w) != (height, width):
            import cv2

            rgb = cv2.resize(np.ascontiguousarray(rgb), (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)[None]


def _stack(images: np.ndarray, boxes: Sequence[CropBox]) -> np.ndarray:
    """The boxes cut out of ``N x C x H x W`` images, box-major along the batch axis."""
    return np.concatenate([images[..., y1:y2, x1:x2] for y1, y2, x1, x2 in boxes], axis=0)


class ExportedModel:
    """The exported graphs of one folder and the inference around them (module docstring).

    Attributes: ``folder``, ``manifest`` (:func:`~.runtime.read_manifest`), ``num_classes``.
    """

    def __init__(self, folder: str, options: Optional[RuntimeOptions] = None):
        self.folder = folder
        self.manifest = read_manifest(folder)
        self.num_classes = int(self.manifest["num_classes"])
        options = options or RuntimeOptions()
        self.batch_pixels = options.batch_pixels
        self._graphs: Dict[str, Callable[..., np.ndarray]] = {
            name: load_graph(folder, self.manifest, name, options) for name in self.manifest["graphs"]}
        window = self.manifest["window"]
        self.mode = self.manifest["mode"]
        self.window_size: Tuple[int, int] = tuple(window["size"])  # type: ignore[assignment]
        self.window_stride: Tuple[int, int] = tuple(window["stride"])  # type: ignore[assignment]
        self.batched = bool(window["batched"])
        self.merge_probabilities = window["merge"] == "probabilities"
        self.tiles = self.manifest["tiles"]

    # ------------------------------------------------------------------------------------------------------
    def _run(self, name: str, *arrays: np.ndarray) -> np.ndarray:
        """Graph ``name`` on ``arrays`` (in chunks of at most ``batch_pixels`` input pixels along the batch axis,
        :class:`~.runtime.RuntimeOptions`); a fixed-shape graph refuses other sizes with the fix."""
        spec = self.manifest["graphs"][name]
        size = list(arrays[0].shape[-2:])
        if not spec["dynamic"] and size != list(spec["shape"]):
            raise ExportedModelError(
                f"{self.folder}: graph {name!r} was exported for {spec['shape'][0]} x {spec['shape'][1]} inputs only "
                f"(its network traces with fixed shapes), this image needs {size[0]} x {size[1]}; export again with "
                f"tools/deploy/export_model.py --image-size H W of the images you will run (after the test rescale)")
        batch = arrays[0].shape[0]
        chunk = max(1, self.batch_pixels // (size[0] * size[1])) if self.batch_pixels else batch
        if chunk >= batch:
            return self._graphs[name](*arrays)
        return np.concatenate([self._graphs[name](*(a[i:i + chunk] for a in arrays)) for i in range(0, batch, chunk)])

    def _window_boxes(self, image_hw: Sequence[int]) -> List[CropBox]:
        if self.mode == "whole":
            return [(0, int(image_hw[0]), 0, int(image_hw[1]))]
        return sliding_window_boxes(image_hw, self.window_size, self.window_stride)

    def _whole_windows(self, images: np.ndarray, boxes: Sequence[CropBox]) -> Iterator[np.ndarray]:
        n = images.shape[0]
        if self.batched:
            out = self._run("whole", _stack(images, boxes))
            yield from (out[i * n:(i + 1) * n] for i in range(len(boxes)))
            return
        for y1, y2, x1, x2 in boxes:
            yield self._run("whole", images[..., y1:y2, x1:x2])

    def _tiled_windows(self, images: np.ndarray, boxes: Sequence[CropBox]) -> Iterator[np.ndarray]:
        """Windows of a two-scale model: distinct HR tiles once (all at once when batched, else window by window,
        dropped after their last window), merged per window, then the window graph."""
        n = images.shape[0]
        plan = shared_tile_plan(boxes, self.tiles["size"], self.tiles["stride"])
        stride = int(self.tiles["output_stride"])

        def decode(indices: Sequence[int]) -> Dict[int, np.ndarray]:
            out = self._run("tiles", _stack(images, [plan.tiles[i] for i in indices]))
            return {i: out[k * n:(k + 1) * n] for k, i in enumerate(indices)}

        def window_hr(cache: Dict[int, np.ndarray], entries) -> np.ndarray:
            return merge_tiles([cache[i] for i, _ in entries], [rel for _, rel in entries], stride)

        if self.batched:
            cache = decode(range(len(plan.tiles)))
            hr = np.concatenate([window_hr(cache, entries) for entries in plan.window_tiles], axis=0)
            out = self._run("window", _stack(images, boxes), hr)
            yield from (out[i * n:(i + 1) * n] for i in range(len(boxes)))
            return
        last_use = {i: w for w, entries in enumerate(plan.window_tiles) for i, _ in entries}
        cache = {}
        for w, ((y1, y2, x1, x2), entries) in enumerate(zip(boxes, plan.window_tiles)):
            missing = list(dict.fromkeys(i for i, _ in entries if i not in cache))
            if missing:
                cache.update(decode(missing))
            hr = window_hr(cache, entries)
            for i in {i for i, _ in entries if last_use[i] == w}:
                del cache[i]
            yield self._run("window", images[..., y1:y2, x1:x2], hr)

    def inference(self, images: np.ndarray) -> np.ndarray:
        """``N x 3 x H x W`` float32 RGB 0..255 -> ``N x K x H x W`` float32 logits (slide mode with TEST.SLIDE.MERGE
        "probabilities": averaged window probabilities), as ``HRDA.inference``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected N x 3 x H x W images, got shape {images.shape}")
        images = np.ascontiguousarray(images, dtype=np.float32)
        boxes = self._window_boxes(images.shape[-2:])
        windows = self._tiled_windows(images, boxes) if self.tiles else self._whole_windows(images, boxes)
        if self.mode == "whole":
            return next(windows)
        return merge_windows(windows, boxes, images.shape[-2:], use_softmax=self.merge_probabilities)


class DeployPredictor:
    """``SemSegPredictor``'s call with an exported model: ``predictor(image)`` -> ``{"sem_seg": K x H x W}``.

    Args:
        folder: the ``--output`` folder of ``tools/deploy/export_model.py``.
        options: threads, onnxruntime optimisation level and providers (:class:`~.runtime.RuntimeOptions`).
    """

    def __init__(self, folder: str, options: Optional[RuntimeOptions] = None):
        self.model = ExportedModel(folder, options)
        self.test_scale = list(self.model.manifest["test_scale"])

    def __call__(self, image: np.ndarray, input_format: str = "BGR") -> Dict[str, np.ndarray]:
        """Predict one ``H x W x 3`` uint8 image in ``input_format`` ("BGR" as OpenCV reads, or "RGB").

        Returns ``{"sem_seg": K x H x W}`` float32 logits at the image's own size (averaged probabilities with
        TEST.SLIDE.MERGE "probabilities"); the argmax over K is the prediction.
        """
        rgb = rgb_image(image, input_format)
        height, width = image.shape[:2]
        logits = self.model.inference(network_input(rgb, self.test_scale))
        return {"sem_seg": resize_bilinear(logits, (height, width))[0]}
