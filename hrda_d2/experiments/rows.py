"""One configuration of the original experiment generators, in their own vocabulary (docs/experiments.md §2).

The HRDA / MIC ``experiments.py`` describe a run by a handful of variables (datasets, crop, UDA method string,
architecture string such as ``hrda1-512-0.1-fixedatt_daformer_sepaspp``, rare class sampling, synchronized crop,
pseudo-label crop, inference, optimizer, MIC mask). :class:`OriginalRow` holds exactly these (the seed aside);
:mod:`.naming` turns a row into the original's run name and :mod:`.translate` into this project's config keys.
"""
from dataclasses import dataclass
from typing import Optional, Tuple, Union

__all__ = ["HRDAToken", "MaskSpec", "OriginalRow", "HRDA_OPTIONS"]

# options of the architecture token after the loss weight (docs/experiments.md §2.2); "sc<x>" is parsed apart
HRDA_OPTIONS = ("fixedatt", "nooverlap", "singleatt", "blurhr", "samescale")


@dataclass(frozen=True)
class HRDAToken:
    """The ``hrda1-<hr crop>-<hr loss weight>[-<option>...]`` part of an architecture string."""

    hr_crop: int
    hr_loss_weight: float
    options: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for option in self.options:
            if option not in HRDA_OPTIONS and not (option.startswith("sc") and _is_number(option[2:])):
                raise ValueError(f"unknown HRDA architecture option {option!r}; known: {HRDA_OPTIONS} and sc<scale>")

    def __str__(self) -> str:
        return "-".join(["hrda1", str(self.hr_crop), f"{self.hr_loss_weight:g}", *self.options])

    def has(self, option: str) -> bool:
        return option in self.options

    @property
    def context_scale(self) -> float:
        """The context (LR) scale: 1.0 with ``samescale``, x with ``sc<x>``, else 0.5."""
        scale = 1.0 if self.has("samescale") else 0.5
        for option in self.options:
            if option.startswith("sc") and _is_number(option[2:]):
                scale = float(option[2:])
        return scale


@dataclass(frozen=True)
class MaskSpec:
    """MIC's masking of a run: ``mask_mode``, ``mask_block_size``, ``mask_ratio``, ``mask_lambda`` (teacher and
    pseudo-label threshold 'same' in every paper run)."""

    mode: str
    block_size: int
    ratio: float = 0.7
    lam: float = 1.0


@dataclass(frozen=True)
class OriginalRow:
    """A configuration of the original generator (one run per seed).

    Attributes (the generator's variables):
        source, target: dataset names (``gtaHR``, ``gta``, ``gtaCAug``, ``synthiaHR``, ``cityscapesHR``, ``acdcHR``,
            ``darkzurichHR``, ``cityscapes``; ``source=""`` for target-only runs).
        crop: side of the square training crop (512 is the "no crop tag" size of the names).
        uda: ``dacs_a999_fdthings`` (DAFormer's self-training), ``dacs``, ``advseg``, ``minent``, ``target-only``.
        decoder, backbone: ``daformer_sepaspp`` / ``mitb5`` or ``dlv2red`` / ``r101v1c``.
        hrda: the HRDA token, or None for a single-scale model.
        rcs_temperature, rcs_min_crop: rare class sampling (None = off) and its min crop ratio.
        sync_crop: side of the synchronized crop (None = off).
        plcrop: pseudo-label crop: False, True (v1: ignore top 15 / bottom 120 rows) or ``"v2"`` (margin mask).
        inference: ``slide`` or ``whole``; batched_slide: the test windows in one batch.
        opt, lr, pmult: optimizer (``adamw`` / ``sgd``), learning rate, head lr multiplier x10.
        mask: MIC's masking, or None.
        repo: ``hrda`` or ``mic``: the generator whose name replacements apply.
    """

    source: str
    target: str
    crop: int
    uda: str
    decoder: str = "daformer_sepaspp"
    backbone: str = "mitb5"
    hrda: Optional[HRDAToken] = None
    rcs_temperature: Optional[float] = None
    rcs_min_crop: float = 0.5
    sync_crop: Optional[int] = None
    plcrop: Union[bool, str] = False
    inference: str = "whole"
    batched_slide: bool = True
    opt: str = "adamw"
    lr: float = 6e-5
    pmult: bool = True
    mask: Optional[MaskSpec] = None
    repo: str = "hrda"

    @property
    def is_dacs(self) -> bool:
        """DACS-based self-training (``dacs`` in the method string): RCS, sync crop and plcrop apply."""
        return "dacs" in self.uda

    @property
    def outer_crop(self) -> int:
        """The crop the model is trained on: the synchronized crop if set, else the crop."""
        return self.sync_crop or self.crop

    @property
    def architecture(self) -> str:
        """The original's architecture string, e.g. ``hrda1-512-0.1_daformer_sepaspp``."""
        return f"{self.hrda}_{self.decoder}" if self.hrda else self.decoder


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
