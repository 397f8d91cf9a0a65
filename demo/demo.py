#!/usr/bin/env python
"""Predict images or a video with an HRDA / DAFormer model and write the pictures (Detectron2 demo style).

    python demo/demo.py --config-file CFG.yaml --input IMG [IMG|GLOB|FOLDER ...] --output OUT_DIR \
        [--hrda-out {fused,lr,hr,attention}] [--opacity 0.5] [--metadata-name DATASET] [--opts KEY VALUE ...]
    python demo/demo.py --config-file CFG.yaml --video-input VIDEO.mp4 --output OUT_DIR_OR_FILE [...]
    python demo/demo.py --exported EXPORTED_DIR --input ... | --video-input ... --output ... \
        [--threads N] [--ort-opt-level {disable,basic,extended,all}] [--providers PROVIDER ...]

--exported runs a model exported by tools/deploy/export_model.py with hrda_d2_deploy.DeployPredictor (onnxruntime
or TorchScript, no model is built) instead of the eager model, for the same inputs and the same pictures. The
class names and colours come from the config's metadata as without it: the folder's config.yaml (written by the
exporter) unless --config-file is given; the weights, test scale and windows are the exported ones. It draws the
fused prediction only (--hrda-out fused). --threads sets the runtime's threads (also the eager model's torch
threads), --ort-opt-level the onnxruntime graph optimisation, --providers the onnxruntime execution providers
(default: CUDA when present, then CPU). A missing or damaged folder is one line naming it and the fix.

--input takes image files, glob patterns (quote them) and folders (every image below them); one picture per
image is written to --output (a folder; a file name is allowed for a single image), always as PNG, named
after the image (relative to its folder for folder inputs). An input that cannot be read is logged with its
name and skipped; the exit status is 1 if any failed. --opacity 1 writes the plain palette image (every pixel
a class colour, as the original's --show-dir --opacity 1); --hrda-out lr/hr/attention render the context
prediction, the detail prediction or the scale attention (grey, white = detail), like the original's
tools/test.py --hrda-out LR/HR/ATT. Videos are read and written frame by frame with OpenCV (.mp4, .mkv, .mov:
mp4v; .avi: MJPG; .webm: VP8); --output is the video file when it has one of these extensions, else a folder.
--opts sets config keys, e.g. MODEL.WEIGHTS model.pth MODEL.DEVICE cpu. A video that cannot be read or written is
one line naming the file and what to do; --debug adds the traceback.

MODEL.WEIGHTS must fit the model exactly (every key, every shape): predicting with partly random weights is an
error. Very large images (the prediction is upsampled to the full image size: about 4 copies of
classes x H x W float32) get one warning with the memory to expect, and images that take longer than
PROGRESS_INTERVAL_S seconds log how long they have been running and over how many slide windows.
"""
import argparse
import contextlib
import glob
import logging
import os
import sys
import threading
import time
from typing import Dict, Iterator, List, Optional, Tuple

import hrda_d2  # noqa: F401  (first: registers the components, quiets fvcore's import warnings)
import cv2
import numpy as np
import torch
import tqdm
from detectron2.utils.logger import setup_logger

from hrda_d2 import load_config
from hrda_d2.config import ConfigError
from hrda_d2.data.datasets.split_files import SplitFileError, register_split_files
from hrda_d2.data.image_io import read_rgb_image
from hrda_d2.modeling.meta_arch.crop_utils import sliding_window_boxes
from hrda_d2.engine.predictor import HRDA_OUTPUTS
from hrda_d2_deploy import DeployPredictor, ExportedModelError, RuntimeOptions
from hrda_d2_deploy.geometry import imrescale_size
from hrda_d2_deploy.runtime import OPT_LEVELS, read_manifest
from predictor import VisualizationDemo  # demo/predictor.py (this script's folder is first on sys.path)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
# what OpenCV's own (FFmpeg) writer can encode everywhere, per output extension
VIDEO_CODECS = {".mp4": "mp4v", ".mkv": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".webm": "VP80"}
EXPORTED_CONFIG = "config.yaml"  # the config the exporter writes beside model.json
# --opts under these prefixes change the eager model; an exported model has them fixed (warned)
_MODEL_KEYS = ("MODEL.", "INPUT.TEST.", "TEST.")

logger = logging.getLogger("demo")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config-file", metavar="FILE",
                        help="path to the config file (required without --exported; with it, default: the "
                             "exported folder's config.yaml)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="image files, glob patterns or folders")
    source.add_argument("--video-input", help="a video file")
    parser.add_argument("--output", required=True,
                        help="output folder (or a file name for a single image / the video)")
    parser.add_argument("--hrda-out", choices=HRDA_OUTPUTS, default="fused",
                        help="what to draw: the fused HRDA prediction, the LR (context) or HR (detail) prediction "
                             "alone, or the scale attention")
    parser.add_argument("--opacity", type=float, default=0.5,
                        help="opacity of the prediction over the image, 0..1 (1 = palette image)")
    parser.add_argument("--metadata-name", default=None,
                        help="dataset whose metadata gives class names and colours (default: DATASETS.TEST[0])")
    parser.add_argument("--exported", metavar="DIR",
                        help="run the model exported to DIR by tools/deploy/export_model.py (hrda_d2_deploy) "
                             "instead of building the eager model")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of the runtime (onnxruntime / TorchScript; torch for the eager model); "
                             "default: all cores")
    parser.add_argument("--ort-opt-level", choices=OPT_LEVELS, default=None,
                        help="onnxruntime graph optimisation level with --exported (default: all)")
    parser.add_argument("--providers", nargs="+", default=None, metavar="PROVIDER",
                        help="onnxruntime execution providers in order of preference with --exported, e.g. "
                             "CUDAExecutionProvider CPUExecutionProvider (default: CUDA when present, then CPU)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth")
    return parser


def config_file(args: argparse.Namespace) -> str:
    """``--config-file``, or with ``--exported`` (and no ``--config-file``) the exported folder's config.yaml."""
    if args.config_file or not args.exported:
        return args.config_file
    path = os.path.join(args.exported, EXPORTED_CONFIG)
    if not os.path.isfile(path):
        raise SystemExit(f"demo: {path}: missing (the exporter writes it for the class names and colours); give "
                         f"the model's --config-file, or export again with tools/deploy/export_model.py")
    return path


def setup_cfg(args: argparse.Namespace):
    """The config of ``args`` (:func:`config_file`), with the splits of its ``DATASETS.SPLIT_FILES`` registered
    (their class names and colours name and paint the predictions)."""
    try:
        cfg = load_config(config_file(args), args.opts)
        register_split_files(cfg.DATASETS.SPLIT_FILES)
    except (ConfigError, SplitFileError) as e:
        raise SystemExit(f"demo: {e}") from None
    return cfg


def expand_inputs(arguments: List[str]) -> Tuple[List[Tuple[str, str]], List[str]]:
    """Image files, globs and folders -> ``([(path, output name relative to --output)], [arguments without
    any image])``. A plain path that does not exist is kept (its reading then fails with a clear error)."""
    found: List[Tuple[str, str]] = []
    empty: List[str] = []
    for arg in arguments:
        if os.path.isdir(arg):
            paths = sorted(p for p in glob.glob(os.path.join(arg, "**", "*"), recursive=True)
                           if p.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(p))
            found += [(p, os.path.relpath(p, arg)) for p in paths]
        elif glob.has_magic(arg):
            paths = sorted(p for p in glob.glob(os.path.expanduser(arg), recursive=True) if os.path.isfile(p))
            found += [(p, os.path.basename(p)) for p in paths]
        else:
            paths = [arg]
            found.append((arg, os.path.basename(arg)))
        if not paths:
            empty.append(arg)
    return found, empty


def image_outputs(inputs: List[Tuple[str, str]], output: str) -> Dict[str, str]:
    """Input path -> PNG file to write. ``output`` is a file name only for a single input with an image
    extension that is not an existing folder."""
    if output.lower().endswith(IMAGE_EXTENSIONS) and not os.path.isdir(output):
        if len(inputs) == 1:
            return {inputs[0][0]: output}
        raise SystemExit(f"demo: --output '{output}' is a file name, but {len(inputs)} images were given; "
                         f"give a folder")
    targets: Dict[str, str] = {}
    written_by: Dict[str, str] = {}
    for path, name in inputs:
        target = os.path.join(output, os.path.splitext(name)[0] + ".png")
        if target in written_by and written_by[target] != path:
            raise SystemExit(f"demo: inputs '{written_by[target]}' and '{path}' would both be written to "
                             f"'{target}'; give their folder instead, or run them separately")
        written_by[target] = path
        targets[path] = target
    return targets


PROGRESS_INTERVAL_S = 5.0  # an image still being predicted after this many seconds logs its progress
LARGE_IMAGE_BYTES = 2 << 30  # expected prediction memory that earns the one warning
_PREDICTION_COPIES = 4  # upsampled logits, softmax / argmax temporaries, overlay: measured 7 GB at 24 MP, 19 classes


def expected_prediction_bytes(height: int, width: int, num_classes: int) -> int:
    """Memory the full-size prediction of an ``height x width`` image needs (besides the model): the
    ``num_classes x H x W`` float32 logits upsampled to the image size and its temporaries."""
    return _PREDICTION_COPIES * num_classes * height * width * 4


def check_exported_args(args: argparse.Namespace) -> None:
    """Refuse the options an exported model cannot honour, and the runtime options without ``--exported``, each
    with one ``demo: ...`` line; warn about ``--opts`` that change only the eager model."""
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"demo: --threads must be a positive number, got {args.threads}")
    if not args.exported:
        for flag, value in (("--ort-opt-level", args.ort_opt_level), ("--providers", args.providers)):
            if value is not None:
                raise SystemExit(f"demo: {flag} sets the runtime of an exported model; add --exported DIR, or "
                                 f"leave {flag} out")
        return
    if args.hrda_out != "fused":
        raise SystemExit(f"demo: --hrda-out {args.hrda_out} needs the eager model (the exported graphs compute the "
                         f"fused prediction only); leave out --exported, or use --hrda-out fused")
    fixed = [key for key in args.opts[::2] if key.startswith(_MODEL_KEYS)]
    if fixed:
        logger.warning("--exported: %s change only the eager model; the exported model's weights, test scale and "
                       "windows were fixed at export (export again to change them)", ", ".join(fixed))


def build_predictor(args: argparse.Namespace) -> DeployPredictor:
    """The ``DeployPredictor`` of ``--exported`` with the runtime options; a missing or damaged folder (or a
    runtime option the installed runtime lacks) is one ``demo: ...`` line."""
    options = RuntimeOptions(threads=args.threads, opt_level=args.ort_opt_level or "all", providers=args.providers)
    try:
        return DeployPredictor(args.exported, options)
    except ExportedModelError as e:  # names the file (or the providers) and the fix
        raise SystemExit(f"demo: {e}") from None


class LargeImageWarning:
    """Logs once per run when an image's prediction will need more than ``LARGE_IMAGE_BYTES``."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.warned = False

    def check(self, path: str, image: np.ndarray) -> None:
        height, width = image.shape[:2]
        needed = expected_prediction_bytes(height, width, self.num_classes)
        if self.warned or needed < LARGE_IMAGE_BYTES:
            return
        self.warned = True
        logger.warning("%s is %dx%d (%.1f megapixels): its full-size prediction needs about %.1f GB of memory and "
                       "may take minutes on a CPU; downscale very large images first if memory is short "
                       "(warned once)", path, width, height, height * width / 1e6, needed / 1e9)


def window_count(demo: VisualizationDemo, image: np.ndarray) -> Tuple[int, Tuple[int, int]]:
    """(number of test windows, rescaled (h, w)) the model (eager or exported) will run on ``image`` (1 in "whole"
    mode)."""
    predictor = demo.predictor
    height, width = image.shape[:2]
    if isinstance(predictor, DeployPredictor):
        exported = predictor.model
        size = imrescale_size(height, width, predictor.test_scale) if predictor.test_scale else (height, width)
        mode, window, stride = exported.mode, exported.window_size, exported.window_stride
    else:
        transform = predictor.mapper.rescale.get_transform(image)  # a NoOpTransform keeps the size
        size = (int(getattr(transform, "new_h", height)), int(getattr(transform, "new_w", width)))
        mode, window, stride = predictor.model.test_mode, predictor.model.test_crop_size, predictor.model.test_stride
    if mode == "whole":
        return 1, size
    return len(sliding_window_boxes(size, window, stride)), size


@contextlib.contextmanager
def progress_log(what: str, interval: Optional[float] = None) -> Iterator[None]:
    """Log ``<what>: still running after N s`` every ``interval`` seconds (default ``PROGRESS_INTERVAL_S``) until
    the block ends (a daemon thread: the prediction is one call that cannot report from inside); one line at the
    end if it took that long."""
    interval = PROGRESS_INTERVAL_S if interval is None else interval
    start = time.monotonic()
    done = threading.Event()

    def report() -> None:
        while not done.wait(interval):
            logger.info("%s: still running after %.0f s", what, time.monotonic() - start)

    thread = threading.Thread(target=report, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        elapsed = time.monotonic() - start
        if elapsed >= interval:
            logger.info("%s: done in %.1f s", what, elapsed)


def run_images(demo: VisualizationDemo, inputs: List[Tuple[str, str]], output: str) -> Tuple[int, List[str]]:
    """Write one picture per input; returns (number written, failed input paths)."""
    targets = image_outputs(inputs, output)
    written, failed = 0, []
    large = LargeImageWarning(demo.num_classes)
    for path, _ in tqdm.tqdm(inputs, desc="demo", unit="image", disable=len(inputs) < 2):
        try:
            image = read_rgb_image(path)
            large.check(path, image)
            windows, size = window_count(demo, image)
            what = (f"predicting {path} ({image.shape[1]}x{image.shape[0]}, {windows} slide window(s) on the "
                    f"{size[1]}x{size[0]} test scale)")
            with progress_log(what):
                _, picture = demo.run_on_image(image)
        except (OSError, ValueError, RuntimeError, cv2.error) as e:
            logger.error("cannot predict input '%s': %s", path, e)
            failed.append(path)
            continue
        target = targets[path]
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        if not cv2.imwrite(target, cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
            logger.error("cannot write '%s' (for input '%s')", target, path)
            failed.append(path)
            continue
        logger.info("%s -> %s", path, target)
        written += 1
    return written, failed


def video_output(video_input: str, output: str) -> str:
    """The video file to write: ``output`` itself if it has an extension (and is no folder), else
    ``output/<name of the input>``. An extension OpenCV cannot write here is an ``OSError`` naming the ones it can."""
    suffix = os.path.splitext(output)[1].lower()
    if suffix and not os.path.isdir(output):
        if suffix not in VIDEO_CODECS:
            raise OSError(f"--output '{output}': cannot write a '{suffix}' video; give a file name ending in "
                          f"{', '.join(VIDEO_CODECS)}, or a folder")
        return output
    stem, ext = os.path.splitext(os.path.basename(video_input))
    return os.path.join(output, stem + (ext.lower() if ext.lower() in VIDEO_CODECS else ".mp4"))


def run_video(demo: VisualizationDemo, video_input: str, output: str) -> Tuple[str, int]:
    """Predict every frame; returns (output file, frames written). Raises ``OSError`` for unreadable or
    unwritable videos."""
    if not os.path.isfile(video_input):
        raise OSError(f"--video-input '{video_input}' does not exist")
    video = cv2.VideoCapture(video_input)
    width, height = int(video.get(cv2.CAP_PROP_FRAME_WIDTH)), int(video.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if not video.isOpened() or width <= 0 or height <= 0:  # OpenCV "opens" any file name as an image sequence
        video.release()
        raise OSError(f"--video-input '{video_input}' is not a readable video (OpenCV decodes no frame from it); "
                      f"give a video file (e.g. .mp4, .avi), or images with --input")
    fps = video.get(cv2.CAP_PROP_FPS) or 25.0
    num_frames = int(video.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    target = video_output(video_input, output)
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    codec = VIDEO_CODECS[os.path.splitext(target)[1].lower()]
    writer = cv2.VideoWriter(target, cv2.VideoWriter_fourcc(*codec), fps, (width, height), True)
    if not writer.isOpened():
        video.release()
        raise OSError(f"cannot write video '{target}' with codec {codec}: check that its folder is writable, or "
                      f"choose another extension ({', '.join(VIDEO_CODECS)})")
    written = 0
    try:
        for frame in tqdm.tqdm(demo.run_on_video(video), total=num_frames, desc="demo", unit="frame"):
            writer.write(frame)
            written += 1
    finally:
        video.release()
        writer.release()
    return target, written


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger()
    setup_logger(name="hrda_d2")
    setup_logger(name="demo")
    logger.info("Arguments: %s", args)
    if not args.config_file and not args.exported:
        get_parser().error("--config-file is required (or --exported DIR of an exported model)")
    check_exported_args(args)
    if args.exported:
        try:  # the folder first: its config.yaml is the default config
            read_manifest(args.exported)
        except ExportedModelError as e:
            raise SystemExit(f"demo: --exported {e}") from None
    cfg = setup_cfg(args)
    if args.threads is not None and not args.exported:
        torch.set_num_threads(args.threads)
    predictor = build_predictor(args) if args.exported else None
    try:
        demo = VisualizationDemo(cfg, args.hrda_out, args.metadata_name, args.opacity, predictor=predictor,
                                 num_classes=predictor.model.num_classes if predictor else None)
    except ValueError as e:
        raise SystemExit(f"demo: {e}") from e

    if args.video_input:
        try:
            target, frames = run_video(demo, args.video_input, args.output)
        except (OSError, RuntimeError, cv2.error, ExportedModelError) as e:
            if args.debug:
                raise
            print(f"demo: {e}", file=sys.stderr)
            return 1
        print(f"demo: wrote {frames} frame(s) ({args.hrda_out}) to {target}")
        return 0

    inputs, empty = expand_inputs(args.input)
    for arg in empty:
        logger.error("input '%s' matches no image file", arg)
    if not inputs:
        print(f"demo: no input image found in {args.input}")
        return 1
    written, failed = run_images(demo, inputs, args.output)
    print(f"demo: wrote {written} of {len(inputs)} picture(s) ({args.hrda_out}) to {args.output}")
    if failed or empty:
        print("demo: failed: " + ", ".join(failed + empty))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
