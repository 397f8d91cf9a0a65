"""``generate_synthetic_datasets``: all replicas below one root, at sizes that keep the real size ratios."""
import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from .writers import write_adverse, write_cityscapes, write_gta, write_synthia, write_wilddash2

__all__ = ["SyntheticDatasets", "generate_synthetic_datasets"]

# (height, width) of the real images; "adverse" = ACDC and Dark Zurich
_FULL_SIZES = {"cityscapes": (1024, 2048), "gta": (1052, 1914), "synthia": (760, 1280), "adverse": (1080, 1920)}


@dataclass(frozen=True)
class SyntheticDatasets:
    """Folders written by :func:`generate_synthetic_datasets` (None where not requested)."""

    root: str
    gta: str
    synthia: str
    cityscapes: str
    acdc: Optional[str]
    dark_zurich: Optional[str]
    sizes: Dict[str, Tuple[int, int]]  # domain -> (height, width)
    wilddash2: Optional[str] = None


def _scaled(domain: str, height: int, width: int) -> Tuple[int, int]:
    """The size of ``domain`` when the Cityscapes-like target is ``height x width`` (real ratios kept)."""
    full_height, full_width = _FULL_SIZES[domain]
    return int(full_height * height / 1024 + 0.5), int(full_width * width / 2048 + 0.5)


def generate_synthetic_datasets(
    root: str,
    num_train: int = 8,
    num_val: int = 4,
    height: int = 128,
    width: int = 256,
    seed: int = 0,
    acdc: bool = False,
    dark_zurich: bool = False,
    full_size: bool = False,
    wilddash2: bool = False,
) -> SyntheticDatasets:
    """Write the generated replicas below ``root`` (see the package docstring for layouts and the domain shift).

    Args:
        root: output folder (use it as ``$DETECTRON2_DATASETS``). Existing files are overwritten.
        num_train: images of every training split (GTA, Synthia, Cityscapes/ACDC/Dark Zurich train).
        num_val: images of every validation split.
        height, width: Cityscapes-like image size; the others keep their real size ratios to Cityscapes
            (GTA 1052x1914, Synthia 760x1280, ACDC/Dark Zurich 1080x1920 at 1024x2048), e.g. 128x256 gives
            GTA 132x239, Synthia 95x160, ACDC 135x240.
        seed: everything is a function of the seed.
        acdc, dark_zurich: also write the ACDC-like / Dark Zurich-like targets.
        wilddash2: also write a WildDash 2-like evaluation set (1080x1920 ratio), as ``wd_public_02.zip``
            unpacks: ``num_train`` + ``num_val`` frames that ``prepare_wilddash2`` splits into train / val.
        full_size: real sizes (Cityscapes 1024x2048, GTA 1052x1914, ...), ignoring height/width.
    """
    if full_size:
        height, width = _FULL_SIZES["cityscapes"]
    if min(height, width) < 32 or num_train < 0 or num_val < 0:
        raise ValueError(f"need height, width >= 32 and non-negative counts, got {height}x{width}, "
                         f"{num_train} train / {num_val} val")
    sizes = {domain: _scaled(key, height, width) for domain, key in (
        ("gta", "gta"), ("synthia", "synthia"), ("cityscapes", "cityscapes"), ("acdc", "adverse"),
        ("dark_zurich", "adverse"))}
    counts = {"train": num_train, "val": num_val}
    folders = {name: os.path.join(root, name) for name in ("gta", "synthia", "cityscapes", "acdc", "dark_zurich")}
    write_gta(folders["gta"], num_train, sizes["gta"], seed)
    write_synthia(folders["synthia"], num_train, sizes["synthia"], seed)
    write_cityscapes(folders["cityscapes"], counts, sizes["cityscapes"], seed)
    if acdc:
        write_adverse(folders["acdc"], "acdc", counts, sizes["acdc"], seed)
    if dark_zurich:
        write_adverse(folders["dark_zurich"], "dark_zurich", counts, sizes["dark_zurich"], seed)
    wilddash2_folder = os.path.join(root, "wilddash2") if wilddash2 else None
    if wilddash2_folder:
        sizes["wilddash2"] = _scaled("adverse", height, width)
        write_wilddash2(wilddash2_folder, counts, sizes["wilddash2"], seed)
    return SyntheticDatasets(
        root=root, gta=folders["gta"], synthia=folders["synthia"], cityscapes=folders["cityscapes"],
        acdc=folders["acdc"] if acdc else None, dark_zurich=folders["dark_zurich"] if dark_zurich else None,
        sizes=sizes, wilddash2=wilddash2_folder,
    )
