"""This project's checkpoint files: atomic writing and loading a model's weights for evaluation / inference.

* :class:`AtomicDetectionCheckpointer`: Detectron2's ``DetectionCheckpointer`` (same file format, same
  ``resume_or_load``) whose files are never left half-written (:mod:`hrda_d2.utils.file_io`). The trainer saves
  ``model`` (the student), ``teacher``, ``imnet_model`` and ``trainer`` (iteration, optimizer, scheduler, RNG
  streams, AMP scaler) in one file. :meth:`~AtomicDetectionCheckpointer.resume_file` picks the file ``--resume``
  continues from (skipping a truncated one).
* :func:`load_model_weights`: the student (``"model"`` entry) or the EMA teacher (``"teacher"`` entry) of such a
  file, or a converted original checkpoint, into a model (``--eval-only``, ``demo/demo.py``, the predictor),
  strictly: every key of the model must be in the file with its shape and the file must hold nothing else.

Every checkpointer here names the file when it is not a PyTorch checkpoint, and says to convert an original
(mmseg / SegFormer) file first. Training from ``MODEL.WEIGHTS`` (ImageNet backbone weights) stays tolerant:
Detectron2 logs the keys it could not load (the new head) once.
"""
from __future__ import annotations

import logging
import os
import zipfile
from typing import Any, Dict, List, Optional, Sequence

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..config import check_choice
from ..utils.file_io import DiskFullError, atomic_torch_save, atomic_write_text
from .conversion import original_layout
from .legacy_layout import upgrade_head_keys

__all__ = [
    "AtomicDetectionCheckpointer",
    "CheckpointLoadError",
    "IncompatibleCheckpointError",
    "NonFiniteWeightsError",
    "TeacherWeightsCheckpointer",
    "checkpoint_file_is_intact",
    "load_model_weights",
]

logger = logging.getLogger(__name__)

_CONVERTER = "tools/convert_mmseg_checkpoint.py"
_MODEL_ENTRIES = ("model", "teacher", "imnet_model")  # the models a training checkpoint of this project holds


class CheckpointLoadError(ValueError):
    """A file given as weights is not a checkpoint of this project (the message names it and what it is)."""


class NonFiniteWeightsError(FloatingPointError):
    """A checkpoint was about to be written with NaN / inf weights; nothing was written."""


def first_nonfinite_weight(data: Dict[str, Any]) -> Optional[str]:
    """``"<entry> <key>"`` of the first floating tensor that is not finite in the model entries of a checkpoint
    (``model``, ``teacher``, ``imnet_model``, ``discriminator``), or None. One reduction per tensor."""
    for entry in _MODEL_ENTRIES + ("discriminator",):
        state = data.get(entry)
        if not isinstance(state, dict):
            continue
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
                return f"'{entry}' tensor {key}"
    return None


class IncompatibleCheckpointError(CheckpointLoadError):
    """Strict loading: the checkpoint's weights do not fit the model (missing / unexpected / other shapes)."""


def checkpoint_file_is_intact(path: str) -> bool:
    """Whether ``path`` is a complete ``torch.save`` zip file (its central directory, written last, is there);
    a truncated copy is not. Reads only the end of the file."""
    return os.path.isfile(path) and zipfile.is_zipfile(path)


def _first(keys: Sequence[str], n: int = 10) -> str:
    more = f", ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


class _NamedFileLoading:
    """Mixin for Detectron2 checkpointers: a file that torch cannot read, or an original mmseg / SegFormer file,
    is a :class:`CheckpointLoadError` naming it; with ``strict`` any incompatible key is an
    :class:`IncompatibleCheckpointError`; ``log_incompatible=False`` silences Detectron2's key report."""

    strict = False
    log_incompatible = True
    allowed_unexpected: Sequence[str] = ()  # key prefixes that may be in the file without being in the model

    def load(self, path: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        if path and "://" not in path and not os.path.isfile(path):
            what = "is a directory, not a checkpoint file" if os.path.isdir(path) else "does not exist"
            raise CheckpointLoadError(f"checkpoint {path} {what}")
        self._loading = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading = None

    def _torch_load(self, f: str) -> Dict[str, Any]:
        try:
            return super()._torch_load(f)
        except Exception as e:  # torch raises UnpicklingError / RuntimeError / EOFError / ... for bad files
            reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            size = os.path.getsize(f) if os.path.isfile(f) else 0
            raise CheckpointLoadError(
                f"{f} is not a PyTorch checkpoint ({size} bytes; torch.load: {type(e).__name__}: {reason}). "
                f"Give a checkpoint of this project (model_*.pth of a training run) or a file converted with "
                f"{_CONVERTER}.") from e

    def _load_file(self, filename: str) -> Dict[str, Any]:
        data = super()._load_file(filename)
        layout = original_layout(data.get("model"))
        if layout is not None:
            raise CheckpointLoadError(
                f"{filename} is {layout}, which this project cannot load directly: convert it first with "
                f"`python {_CONVERTER} {filename} converted.pth` (add --teacher for the EMA teacher of a training "
                f"checkpoint) and give converted.pth as MODEL.WEIGHTS.")
        model_keys = list(self.model.state_dict())
        for entry in _MODEL_ENTRIES:  # student, EMA teacher and ImageNet model share the architecture
            if isinstance(data.get(entry), dict):
                upgrade_head_keys(data[entry], model_keys, f"{filename} [{entry}]")
        return data

    def _load_model(self, checkpoint: Any):
        incompatible = super()._load_model(checkpoint)
        if self.strict:
            _raise_if_incompatible(self._loading, incompatible, self.allowed_unexpected)
        return incompatible

    def _log_incompatible_keys(self, incompatible) -> None:
        if self.log_incompatible:
            super()._log_incompatible_keys(incompatible)


def _raise_if_incompatible(path: str, incompatible, allowed_unexpected: Sequence[str]) -> None:
    """Raise :class:`IncompatibleCheckpointError` naming ``path`` and the keys (with counts) of fvcore's
    ``_IncompatibleKeys`` report. Keys with other shapes are not loaded by fvcore, so they also show as missing;
    they are listed once, with both shapes."""
    shapes = incompatible.incorrect_shapes
    reshaped = {k for k, _, _ in shapes}
    missing = [k for k in incompatible.missing_keys if k not in reshaped]
    unexpected = [k for k in incompatible.unexpected_keys if not k.startswith(tuple(allowed_unexpected))]
    if not (shapes or missing or unexpected):
        return
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} key(s) with other shapes (checkpoint vs. model): " + _first(
            [f"{k} {tuple(c)} vs. {tuple(m)}" for k, c, m in shapes]))
    if missing:
        parts.append(f"{len(missing)} model key(s) missing from the checkpoint: {_first(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} checkpoint key(s) the model does not have: {_first(unexpected)}")
    raise IncompatibleCheckpointError(
        f"{path} does not fit the model; evaluation and inference need every weight:\n  " + ";\n  ".join(parts)
        + "\nUse the config the checkpoint was trained with (MODEL.MIT.VARIANT, MODEL.SEM_SEG_HEAD.NUM_CLASSES / "
          "EMBED_DIM, MODEL.HRDA.SCALES, ...), or convert an original checkpoint with " + _CONVERTER + ".")


class AtomicDetectionCheckpointer(_NamedFileLoading, DetectionCheckpointer):
    """Same behaviour and file format as Detectron2's checkpointer; only the writing is atomic.

    ``save`` collects the state dicts on EVERY rank (the trainer's state gathers the per-rank RNG streams,
    a collective) and only the main process writes; call it on all ranks, as Detectron2's
    ``PeriodicCheckpointer`` does. A full disk raises :class:`~hrda_d2.utils.file_io.DiskFullError` naming the
    file and the previous checkpoint, which is left intact.
    """

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        if not self.save_to_disk:
            return
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        bad = first_nonfinite_weight(data)
        if bad is not None:
            previous = self.get_checkpoint_file() if self.has_checkpoint() else ""
            raise NonFiniteWeightsError(
                f"not writing {save_file}: {bad} is not finite (NaN/inf weights); "
                + (f"the last checkpoint {previous} stays last_checkpoint" if previous else "no earlier checkpoint")
                + ". Find the iteration in the log (the losses / gradients are checked every SOLVER.METRICS_PERIOD "
                  "iterations) and resume from the last checkpoint with --resume.")
        self.logger.info(f"Saving checkpoint to {save_file}")
        try:
            atomic_torch_save(data, save_file)
        except DiskFullError as e:
            previous = self.get_checkpoint_file() if self.has_checkpoint() else ""
            state = f"previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
            raise DiskFullError(f"no space left on device writing {save_file}; {state}. Free space in "
                                f"{self.save_dir} (or bound it with SOLVER.CHECKPOINT_MAX_KEEP) and continue "
                                f"with --resume", save_file) from e
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

    def resume_file(self) -> str:
        """The checkpoint ``--resume`` continues from: the one ``last_checkpoint`` names; if that file is missing
        or truncated, the newest intact ``*.pth`` of ``save_dir`` (``model_final.pth`` last, else by name) with a
        warning naming both. ``""`` when ``save_dir`` holds no ``last_checkpoint``. Raises ``RuntimeError``
        when it names a damaged file and no intact one is left."""
        if not self.has_checkpoint():
            return ""
        named = self.get_checkpoint_file()
        if checkpoint_file_is_intact(named):
            return named
        intact: List[str] = sorted(
            (p for p in self.get_all_checkpoint_files() if p != named and checkpoint_file_is_intact(p)),
            key=lambda p: (os.path.basename(p) == "model_final.pth", os.path.basename(p)))
        tag = os.path.join(self.save_dir, "last_checkpoint")
        problem = "missing" if not os.path.exists(named) else "truncated or damaged (not a complete torch zip file)"
        if not intact:
            raise RuntimeError(
                f"--resume: {tag} names {named}, which is {problem}, and {self.save_dir} holds no other complete "
                f"checkpoint. Restore the file from a backup, or delete {tag} to start again from iteration 0.")
        logger.warning(f"--resume: {tag} names {named}, which is {problem}; resuming from the newest intact "
                       f"checkpoint {intact[-1]} instead (delete or repair {named} to silence this warning)")
        return intact[-1]


class TeacherWeightsCheckpointer(_NamedFileLoading, DetectionCheckpointer):
    """Loads the EMA teacher (``"teacher"`` entry) of a training checkpoint of this project as the model's
    weights; everything else is Detectron2's loading (``_load_file`` is fvcore's documented extension point)."""

    def _load_file(self, filename: str) -> Dict[str, Any]:
        data = super()._load_file(filename)
        if "teacher" not in data:
            raise CheckpointLoadError(
                f"'{filename}' holds no 'teacher' entry (keys: {sorted(data)}). Use a training checkpoint of this "
                f"project, or convert an original checkpoint with `{_CONVERTER} IN OUT --teacher` "
                f"and evaluate it as the student.")
        return {"model": data["teacher"], "__author__": data.get("__author__", "hrda_d2")}


class _StudentWeightsCheckpointer(_NamedFileLoading, DetectionCheckpointer):
    """Detectron2's loading of the ``"model"`` entry, with the file checks of :class:`_NamedFileLoading`."""


def load_model_weights(model: torch.nn.Module, path: str, source: str = "student", strict: bool = True,
                       allowed_unexpected: Sequence[str] = (), log_incompatible: bool = True) -> None:
    """Load ``path`` into ``model``: the student (``"model"`` entry, also of converted original checkpoints) or,
    with ``source="teacher"`` (``TEST.WEIGHTS_SOURCE``), the EMA teacher of a training checkpoint of this project.

    Args:
        strict: any model key missing from the file, any file key the model lacks (except those starting with
            ``allowed_unexpected``) and any shape mismatch raise :class:`IncompatibleCheckpointError` naming the
            file and the keys; for evaluation and inference. ``False``: Detectron2's tolerance (logged).
        log_incompatible: ``False`` skips Detectron2's report of the keys that were not loaded (when the same
            file was already reported for another model).
    Raises:
        CheckpointLoadError: ``path`` is not a PyTorch checkpoint, or an original file to convert first.
    """
    check_choice("TEST.WEIGHTS_SOURCE", source)
    checkpointer = (TeacherWeightsCheckpointer if source == "teacher" else _StudentWeightsCheckpointer)(model)
    checkpointer.strict = strict
    checkpointer.allowed_unexpected = tuple(allowed_unexpected)
    checkpointer.log_incompatible = log_incompatible
    checkpointer.load(path)
