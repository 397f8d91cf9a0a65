"""The original generators' run names (docs/experiments.md §2.1), so that every run keeps the name it had there.

``{source}2{target}{crop tag}_{uda}_{architecture}[_sl]_{backbone}_poly10warm[_{opt}][_{lr}][_pmF]_s{seed}``, then
dots removed and ``True``/``False``/dataset names abbreviated (MIC also: ``None`` -> ``N``, no brackets or spaces,
``,`` -> ``j``). The timestamp and uuid that ``run_experiments.py`` prepends and appends are not part of the name.
"""
from .rows import OriginalRow

__all__ = ["MIC_MODE_CODES", "original_stem", "run_name"]

# MIC's mask_mode -> the code in run names
MIC_MODE_CODES = {"separate": "sep", "separateaug": "spa", "separatesrc": "sps", "separatesrcaug": "spsa",
                  "separatetrg": "spt", "separatetrgaug": "spta"}

_DEFAULT_LR = 6e-5


def _uda_part(row: OriginalRow) -> str:
    part = row.uda
    if row.is_dacs and row.rcs_temperature is not None:
        part += f"_rcs{row.rcs_temperature}"
        if row.rcs_min_crop != 0.5:
            part += f"-{row.rcs_min_crop}"
    if row.is_dacs and row.sync_crop is not None:
        part += f"_sf{row.sync_crop}x{row.sync_crop}"
    if row.is_dacs or row.mask is not None:
        if row.plcrop is True or row.plcrop == "v1":
            part += "_cpl"
        elif row.plcrop == "v2":
            part += "_cpl2"
    if row.mask is not None:  # mask_alpha / mask_pseudo_threshold are 'same' in every paper run: no a<..>/p<..>
        part += f"_m{row.mask.block_size}-{row.mask.ratio}-{MIC_MODE_CODES[row.mask.mode]}"
        if row.mask.lam != 1:
            part += f"-w{row.mask.lam}"
    return part


def original_stem(row: OriginalRow) -> str:
    """The run name of ``row`` without its ``_s<seed>`` suffix."""
    crop_tag = "" if row.crop == 512 else f"_{row.crop}x{row.crop}"
    architecture = row.architecture + ("_sl" if row.inference == "slide" else "")
    name = f"{row.source}2{row.target}{crop_tag}_{_uda_part(row)}_{architecture}_{row.backbone}_poly10warm"
    if row.opt != "adamw":
        name += f"_{row.opt}"
    if row.lr != _DEFAULT_LR:
        name += f"_{row.lr}"
    if not row.pmult:
        name += f"_pm{row.pmult}"
    name = name.replace(".", "").replace("True", "T").replace("False", "F")
    if row.repo == "mic":
        name = name.replace("None", "N").replace("[", "").replace("]", "").replace(",", "j").replace(" ", "")
    return name.replace("cityscapes", "cs").replace("synthia", "syn").replace("darkzurich", "dzur")


def run_name(stem: str, seed: int) -> str:
    """``<stem>_s<seed>``: the seed is the last part of every name."""
    return f"{stem}_s{seed}"
