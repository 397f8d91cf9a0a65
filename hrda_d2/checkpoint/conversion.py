"""The checkpoint-conversion dispatcher: read a file, recognise its layout, hand it to the leaf converter that
knows it (docs/method.md §13).

* :func:`load_checkpoint_file` reads a file (``torch.load`` on CPU, ``weights_only`` by default);
* :func:`unwrap_state_dict` finds the state dict in what was read (``{'state_dict': sd, 'meta': ...}``,
  ``{'model': sd}`` or ``sd``; a DataParallel ``module.`` prefix removed);
* :func:`original_layout` says whether a loaded object is an original checkpoint that must be converted;
* :func:`convert_checkpoint` converts it, or refuses with the list of known layouts and what was found.

The layouts, tried in this order, come from the leaves (each a list of
:class:`~.conversion_types.OriginalLayout`): :data:`.mmseg_conversion.LAYOUTS` (HRDA / DAFormer DACS training
checkpoints, bare mmseg segmentors, SegFormer ImageNet MiT files; DeepLabV2 parts through
:mod:`.resnet_conversion`), :data:`.resnet_conversion.LAYOUTS` (mmcv ResNet-V1c ImageNet files) and
:data:`.dinov2_conversion.LAYOUTS` (official DINOv2 backbones) and :data:`.vfm_conversion.LAYOUTS` (VFM-UDA and
VFM-UDA++ Lightning checkpoints). The leaves import only :mod:`.conversion_types`, never this module.
"""
import logging
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple, Union

import torch

from . import dinov2_conversion, mmseg_conversion, resnet_conversion, vfm_conversion
from .conversion_types import (
    CheckpointConversionError,
    ConversionRequest,
    ConvertedCheckpoint,
    OriginalLayout,
    first_items,
    split_prefix,
)

__all__ = [
    "ORIGINAL_LAYOUTS",
    "convert_checkpoint",
    "convert_mmseg_checkpoint",
    "expected_layouts_text",
    "load_checkpoint_file",
    "original_layout",
    "unwrap_state_dict",
]

logger = logging.getLogger(__name__)

ORIGINAL_LAYOUTS: Tuple[OriginalLayout, ...] = (mmseg_conversion.LAYOUTS + resnet_conversion.LAYOUTS
                                                 + dinov2_conversion.LAYOUTS + vfm_conversion.LAYOUTS)


def expected_layouts_text() -> str:
    """The numbered list of known layouts, as every "not a known layout" error shows it."""
    return "\n".join(f"  {i}. {layout.expected};" if i < len(ORIGINAL_LAYOUTS) else f"  {i}. {layout.expected}."
                     for i, layout in enumerate(ORIGINAL_LAYOUTS, start=1))


# ------------------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------------------
def load_checkpoint_file(path: Union[str, Path], allow_pickle: bool = False) -> Any:
    """``torch.load`` on CPU; ``weights_only`` unless ``allow_pickle`` (only for files you trust).

    Raises CheckpointConversionError naming the file when it cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointConversionError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # torch raises RuntimeError / UnpicklingError / EOFError / ... for bad files
        hint = "" if allow_pickle or not isinstance(e, pickle.UnpicklingError) else (
            " It stores Python objects other than tensors and containers; if you trust the file, retry with "
            "allow_pickle=True (CLI: --allow-pickle)."
        )
        raise CheckpointConversionError(
            f"{path}: cannot be read as a torch checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:300]})."
            f"{hint}"
        ) from e


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _describe(obj: Any) -> str:
    if not isinstance(obj, Mapping):
        return f"a {type(obj).__name__}"
    text = f"a dict with top-level keys [{first_items(map(repr, obj))}]"
    for wrapper in ("state_dict", "model"):
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping):
            text += f"; '{wrapper}' holds {len(inner)} entries, first keys [{first_items(inner, 6)}]"
    return text


def _unknown_layout(source: str, obj: Any, reason: str) -> CheckpointConversionError:
    return CheckpointConversionError(
        f"{source}: not a checkpoint layout this converter knows ({reason}).\nExpected one of:\n"
        f"{expected_layouts_text()}\nFound: {_describe(obj)}."
    )


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> Tuple[
        "OrderedDict[str, torch.Tensor]", Optional[Mapping[str, Any]]]:
    """(state dict, meta) of a loaded file: ``{'state_dict': sd, 'meta': ...}``, ``{'model': sd}`` or ``sd``."""
    if _is_state_dict(obj):
        sd, meta = obj, None
    elif isinstance(obj, Mapping) and _is_state_dict(obj.get("state_dict")):
        sd, meta = obj["state_dict"], obj.get("meta")
    elif isinstance(obj, Mapping) and _is_state_dict(obj.get("model")):
        sd, meta = obj["model"], obj.get("meta")
    else:
        raise _unknown_layout(source, obj, "no state dict of tensors at the top level, under 'state_dict' or 'model'")
    sd = OrderedDict(sd)
    if all(k.startswith("module.") for k in sd):  # a DataParallel wrapper saved as is
        sd = split_prefix(sd, "module.")
    return sd, (meta if isinstance(meta, Mapping) else None)


def _find_layout(sd: Mapping[str, torch.Tensor]) -> Optional[OriginalLayout]:
    return next((layout for layout in ORIGINAL_LAYOUTS if layout.detect(sd)), None)


# ------------------------------------------------------------------------------------------------------------
# layout detection and conversion
# ------------------------------------------------------------------------------------------------------------
def original_layout(obj: Any) -> Optional[str]:
    """A short description of ``obj`` (what ``torch.load`` returned) if it is an ORIGINAL checkpoint that
    :func:`convert_checkpoint` converts, else None (this project's layout, or an unknown one). Only key names
    are read."""
    try:
        sd, _ = unwrap_state_dict(obj, "")
    except CheckpointConversionError:
        return None
    layout = _find_layout(sd)
    return None if layout is None else layout.description


def convert_checkpoint(obj: Any, teacher: bool = False, source: str = "checkpoint",
                       vit_img_size: Tuple[int, int] = (512, 512)) -> ConvertedCheckpoint:
    """Convert a loaded original checkpoint (see the module docstring for the layouts) to the Detectron2 layout.

    Args:
        obj: what ``torch.load`` returned for the file.
        teacher: take the EMA teacher (``ema_model.*``; VFM-UDA: ``network_ema.*``) instead of the student
            (``model.*``; ``network.*``) of a training checkpoint; an error for layouts without a teacher.
        source: name of the file, used in error messages.
        vit_img_size: ``MODEL.TIMM.IMG_SIZE`` a DINOv2 position embedding is resized for.
    Raises:
        CheckpointConversionError: unknown layout (the message lists the expected layouts and what was found),
            missing key families, inconsistent shapes, or ``teacher`` without a teacher in the file.
    """
    sd, meta = unwrap_state_dict(obj, source)
    layout = _find_layout(sd)
    if layout is None:
        if any(k.startswith(("backbone.patch_embed1.", "backbone.stem.conv1.", "sem_seg_head.")) for k in sd):
            raise CheckpointConversionError(
                f"{source}: already in this project's Detectron2 layout (backbone.* / sem_seg_head.* keys); "
                f"use it directly as MODEL.WEIGHTS"
            )
        raise _unknown_layout(source, obj, "no MiT, ResNet-V1c, DINOv2 or VFM-UDA network keys found")
    if teacher and not layout.has_teacher:
        raise CheckpointConversionError(
            f"{source}: teacher weights were requested, but the file is {layout.description}, without EMA "
            f"teacher (ema_model.*)"
        )
    result = layout.convert(sd, meta, ConversionRequest(teacher, source, tuple(vit_img_size)))
    logger.info("%s converted:\n%s", source, result.summary())
    return result


# the function's name in the first release (after the CLI tools/convert_mmseg_checkpoint.py)
convert_mmseg_checkpoint = convert_checkpoint
