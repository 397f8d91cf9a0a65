"""This project's checkpoint files: atomic writing and loading a model's weights for evaluation / inference.

* :class:`AtomicDetectionCheckpointer`: Detectron2's ``DetectionCheckpointer`` (same file format, same
  ``resume_or_load``) whose files are never left half-written (:mod:`hrda_d2.utils.file_io`). The trainer saves
  ``model`` (the student), ``teacher``, ``imnet_model`` and ``trainer`` (iteration, optimizer, scheduler, RNG
  streams, AMP scaler) in one file.
* :func:`load_model_weights`: the student (``"model"`` entry) or the EMA teacher (``"teacher"`` entry) of such a
  file, or a converted original checkpoint, into a model (``--eval-only``, ``demo/demo.py``, the predictor).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..utils.file_io import atomic_torch_save, atomic_write_text

__all__ = ["AtomicDetectionCheckpointer", "TeacherWeightsCheckpointer", "load_model_weights", "WEIGHTS_SOURCES"]

logger = logging.getLogger(__name__)

WEIGHTS_SOURCES = ("student", "teacher")


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """Same behaviour and file format as Detectron2's checkpointer; only the writing is atomic.

    ``save`` collects the state dicts on EVERY rank (the trainer's state gathers the per-rank RNG streams,
    a collective) and only the main process writes; call it on all ranks, as Detectron2's
    ``PeriodicCheckpointer`` does.
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
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)


class TeacherWeightsCheckpointer(DetectionCheckpointer):
    """Loads the EMA teacher (``"teacher"`` entry) of a training checkpoint of this project as the model's
    weights; everything else is Detectron2's loading (``_load_file`` is fvcore's documented extension point)."""

    def _load_file(self, filename: str) -> Dict[str, Any]:
        data = super()._load_file(filename)
        if "teacher" not in data:
            raise KeyError(
                f"'{filename}' holds no 'teacher' entry (keys: {sorted(data)}). Use a training checkpoint of this "
                f"project, or convert an original checkpoint with `tools/convert_mmseg_checkpoint.py IN OUT --teacher` "
                f"and evaluate it as the student.")
        return {"model": data["teacher"], "__author__": data.get("__author__", "hrda_d2")}


def load_model_weights(model: torch.nn.Module, path: str, source: str = "student") -> None:
    """Load ``path`` into ``model``: the student (``"model"`` entry, also of converted original checkpoints) or,
    with ``source="teacher"`` (``TEST.WEIGHTS_SOURCE``), the EMA teacher of a training checkpoint of this project.
    Missing/unexpected keys are reported by Detectron2."""
    if source not in WEIGHTS_SOURCES:
        raise ValueError(f"TEST.WEIGHTS_SOURCE must be one of {WEIGHTS_SOURCES}, got '{source}'")
    checkpointer_class = TeacherWeightsCheckpointer if source == "teacher" else DetectionCheckpointer
    checkpointer_class(model).load(path)
