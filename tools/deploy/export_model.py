#!/usr/bin/env python
"""Export a trained model to ONNX or TorchScript for the runtime without Detectron2 (``hrda_d2_deploy``).

    python tools/deploy/export_model.py --config-file configs/demo_hrda.yaml --format onnx \\
        --output exported/demo_hrda_onnx MODEL.WEIGHTS output/demo_hrda/model_final.pth

The shape of Detectron2's ``tools/deploy/export_model.py``: ``--config-file``, ``--format``, ``--output``, config
overrides after the flags (``--export-method`` is always ``tracing``). The folder holds ``model.json``, one graph
file per exported network and ``config.yaml``; run it with ``hrda_d2_deploy.DeployPredictor`` or
``demo/demo.py --exported``. The exporter compares the written graphs with eager PyTorch on a sample image and
refuses to write a model that disagrees (docs/method.md §23; README "Deployment").

A user's error (config, weights of another model, an existing --output, a refused check) ends the command with one
line naming the file or value and the fix (exit status 1); ``--debug`` shows the traceback.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import hrda_d2  # noqa: E402,F401  (first: registers the components)
import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from hrda_d2 import load_config  # noqa: E402
from hrda_d2.checkpoint import CheckpointLoadError, load_model_weights  # noqa: E402
from hrda_d2.config import ConfigError  # noqa: E402
from hrda_d2.export import DEFAULT_MIN_AGREEMENT, DEFAULT_TOLERANCE, ExportError, export_model, sample_image  # noqa: E402
from hrda_d2_deploy.runtime import FORMATS, PRECISIONS  # noqa: E402

logger = logging.getLogger("hrda_d2.export")

INPUT_ERRORS = (ConfigError, CheckpointLoadError, ExportError)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the model's config")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx (onnxruntime) or torchscript")
    parser.add_argument("--export-method", default="tracing", choices=["tracing"],
                        help="as Detectron2's exporter; tracing is the one method (the loops stay in the runtime)")
    parser.add_argument("--output", required=True, metavar="DIR", help="the folder to write (must not exist)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")
    parser.add_argument("--sample-image", metavar="FILE",
                        help="an image of your camera to trace and check on (default: a generated image of "
                             "--image-size)")
    parser.add_argument("--image-size", nargs=2, type=int, metavar=("H", "W"),
                        help="the size after the test rescale of the generated sample image (default: INPUT.TEST."
                             "SCALE's short x long side); graphs that trace with fixed shapes run at this size only")
    parser.add_argument("--test-scale", nargs=2, type=int, metavar=("LONG", "SHORT"),
                        help="the keep-ratio test rescale of your camera's images (INPUT.TEST.SCALE), e.g. 1280 720")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="fp16 (GPUs) or dynamically quantised int8 weights: ONNX only, checked by argmax "
                             "agreement")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="fp32: largest allowed |exported - eager| logit difference, times max(1, max |logit|)")
    parser.add_argument("--min-agreement", type=float, default=None,
                        help=f"least argmax agreement with eager PyTorch in %% (default {DEFAULT_MIN_AGREEMENT})")
    parser.add_argument("--debug", action="store_true", help="the traceback instead of one message on an error")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def run(args: argparse.Namespace) -> dict:
    opts = list(args.opts)
    if args.test_scale:
        opts += ["INPUT.TEST.SCALE", str(list(args.test_scale))]
    cfg = load_config(args.config_file, opts + ["MODEL.DEVICE", "cpu"])
    if os.path.exists(args.output) and not args.overwrite:  # before building the model: the common mistake first
        raise ExportError(f"--output {args.output} exists; pass --overwrite to replace it, or choose another folder")
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        load_model_weights(model, cfg.MODEL.WEIGHTS, cfg.TEST.WEIGHTS_SOURCE)
    else:
        logger.warning("MODEL.WEIGHTS is empty: exporting randomly initialised weights")
    image = sample_image(cfg, args.sample_image, args.image_size)
    manifest = export_model(model, cfg, args.output, args.format, image=image, precision=args.precision,
                            tolerance=args.tolerance, min_agreement=args.min_agreement, overwrite=args.overwrite)
    check = manifest["check"]["inference"]
    logger.info("wrote %s (%s, %s, graphs %s): on the %d x %d sample, largest logit difference %.3g, argmax "
                "agreement %.4f %%", args.output, args.format, args.precision,
                {n: ("any size" if g["dynamic"] else g["shape"]) for n, g in manifest["graphs"].items()},
                *check["image_size"], check["max_abs_diff"], check["argmax_agreement"])
    return manifest


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="hrda_d2")
    if not args.debug:  # the probe's and the tracer's details are debug output
        logging.getLogger("hrda_d2").setLevel(logging.INFO)
    try:
        with torch.no_grad():  # not set_grad_enabled(False): main(argv) runs inside other processes too (tests)
            run(args)
    except INPUT_ERRORS as e:
        if args.debug:
            raise
        print(f"export_model: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
