#!/usr/bin/env python
"""Convert an original SegFormer / DAFormer / HRDA checkpoint to a Detectron2 checkpoint of this project.

    python tools/convert_mmseg_checkpoint.py IN OUT [--teacher] [--config-out CFG.yaml] [--vit-img-size H W]
                                          [--allow-pickle] [--force]

IN may be an official SegFormer ImageNet file (``mit_b5.pth``: written as ``backbone.*``, the classifier is
dropped), an official DINOv2 backbone (``dinov2_vitb14_pretrain.pth``, ``..._reg4_pretrain.pth``: written as
``backbone.net.vit.*`` of ``build_timm_backbone``, the position embedding resized for --vit-img-size), an
HRDA/DAFormer DACS training checkpoint (student ``model.*`` by default, the EMA teacher
``ema_model.*`` with --teacher), a VFM-UDA Lightning training checkpoint (``network.*``, ``network_ema.*`` with
--teacher: written as ``VFMViT`` + ``VFMLightweightHead``) or a bare HRDAEncoderDecoder/EncoderDecoder state dict. OUT is
``{"model": state_dict, "__author__": ..., "conversion": {...}}`` and loads with ``MODEL.WEIGHTS OUT``.
--config-out translates the original config stored in the checkpoint (``meta["config"]``) into a YAML config
of this project with ``MODEL.WEIGHTS OUT``.

Files are written atomically (temporary file + rename) with the usual permissions (0666 minus the umask). OUT
(and CFG.yaml) must not be IN, and an existing one is replaced only with --force. On any error the message goes
to stderr, the exit status is 1 and no output file is written.
"""
import argparse
import contextlib
import logging
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from hrda_d2.checkpoint import CheckpointConversionError, ConvertedCheckpoint, convert_checkpoint, \
    load_checkpoint_file
from hrda_d2.checkpoint.dinov2_conversion import Dinov2ConvertedCheckpoint, dinov2_usage
from hrda_d2.checkpoint.mmseg_config import MmsegConfigError, cfg_values_to_yaml, mmseg_config_to_cfg_values, \
    parse_mmseg_config_text
from hrda_d2.checkpoint.vfm_conversion import VFMConvertedCheckpoint, vfm_usage
from hrda_d2.utils.file_io import atomic_path

AUTHOR = "hrda_d2 tools/convert_mmseg_checkpoint.py"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path, help="original checkpoint (.pth)")
    parser.add_argument("output", type=Path, help="Detectron2 checkpoint to write (.pth)")
    parser.add_argument("--teacher", action="store_true",
                        help="take the EMA teacher (ema_model.*; VFM-UDA: network_ema.*) of a training checkpoint")
    parser.add_argument("--config-out", type=Path, default=None, metavar="CFG.yaml",
                        help="also write this project's YAML config translated from the checkpoint's meta['config']")
    parser.add_argument("--vit-img-size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"),
                        help="DINOv2: MODEL.TIMM.IMG_SIZE of the training config (position grid H/16 x W/16)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load IN with torch.load(weights_only=False); only for files you trust")
    parser.add_argument("--force", action="store_true", help="replace OUT / CFG.yaml if they exist")
    return parser.parse_args(argv)


def check_paths(source: Path, outputs: List[Path], force: bool) -> None:
    """Refuse an input that is a folder, an output that is the input (also through links or another spelling of
    the path) and, without ``force``, an existing output."""
    if source.is_dir():
        raise CheckpointConversionError(f"{source} is a directory; give the checkpoint file inside it")
    for out in outputs:
        if out.is_dir():
            raise CheckpointConversionError(f"output {out} is a directory; give a file name")
        same = out.resolve() == source.resolve() or (out.exists() and source.exists() and out.samefile(source))
        if same:
            raise CheckpointConversionError(f"output {out} is the input {source}; converting in place would destroy "
                                            f"the original: give another output file")
        if out.exists() and not force:
            raise CheckpointConversionError(f"output {out} exists; add --force to replace it")


def translate_config(result: ConvertedCheckpoint, weights: Path, source: Path) -> Tuple[str, List[str]]:
    """YAML text for the checkpoint's stored original config, checked against the converted weights."""
    text = (result.meta or {}).get("config")
    if not isinstance(text, str):
        raise MmsegConfigError(f"{source}: --config-out needs the original config text in meta['config'], "
                               f"but the file has {'no meta' if result.meta is None else 'no meta[config]'}")
    values, notes = mmseg_config_to_cfg_values(parse_mmseg_config_text(text), weights=str(weights))
    if values["MODEL.MIT.VARIANT"] != result.backbone:
        raise MmsegConfigError(f"{source}: meta['config'] says {values['MODEL.MIT.VARIANT']}, "
                               f"the weights are {result.backbone}")
    head_classes = result.sem_seg_head.num_classes if result.sem_seg_head else None
    if head_classes is not None and values.get("MODEL.SEM_SEG_HEAD.NUM_CLASSES") != head_classes:
        raise MmsegConfigError(f"{source}: meta['config'] has num_classes={values.get('MODEL.SEM_SEG_HEAD.NUM_CLASSES')}, "
                               f"the weights have {head_classes}")
    header = f"Translated from meta['config'] of {source.name} ({result.layout}) by {AUTHOR}."
    return cfg_values_to_yaml(values, header=header), notes


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_paths(args.input, [args.output] + ([args.config_out] if args.config_out else []), args.force)
        obj = load_checkpoint_file(args.input, allow_pickle=args.allow_pickle)
        result = convert_checkpoint(obj, teacher=args.teacher, source=str(args.input),
                                    vit_img_size=tuple(args.vit_img_size))
        yaml_text, notes = translate_config(result, args.output, args.input) if args.config_out else (None, [])
        checkpoint = {
            "model": result.state_dict,
            "__author__": AUTHOR,
            "conversion": {"source": str(args.input), "layout": result.layout, "backbone": result.backbone,
                           "weights": result.source_prefix or "(no prefix)"},
        }
        # both files are renamed into place only once both are written
        with contextlib.ExitStack() as stack:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            torch.save(checkpoint, stack.enter_context(atomic_path(args.output)))
            if yaml_text is not None:
                args.config_out.parent.mkdir(parents=True, exist_ok=True)
                Path(stack.enter_context(atomic_path(args.config_out))).write_text(yaml_text)
    except (CheckpointConversionError, MmsegConfigError, OSError) as e:
        print(f"convert_mmseg_checkpoint: error: {e}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"convert_mmseg_checkpoint: note: {note}", file=sys.stderr)
    print(result.summary())
    if isinstance(result, Dinov2ConvertedCheckpoint):
        print(dinov2_usage(result))
    if isinstance(result, VFMConvertedCheckpoint):
        print(vfm_usage(result))
    print(f"wrote {args.output}" + (f" and {args.config_out}" if args.config_out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
