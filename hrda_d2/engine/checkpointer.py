"""A ``DetectionCheckpointer`` whose files are never left half-written.

Every checkpoint is written to ``<name>.pth.tmp-<pid>`` and renamed over ``<name>.pth`` with ``os.replace``
(atomic on POSIX) after an ``fsync``; the ``last_checkpoint`` tag is written the same way and only after the
checkpoint itself is complete. A process killed at any moment (even SIGKILL) therefore leaves either the
previous checkpoint or the new one, never a truncated file, and ``--resume`` picks up the last complete one.
The partial ``*.tmp-<pid>`` files such a kill leaves are never read; :func:`remove_stale_partial_files` (called by
``HRDATrainer.resume_or_load``) deletes those of processes that no longer run.
"""
from __future__ import annotations

import glob
import logging
import os
import re
from typing import Any, List

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["AtomicDetectionCheckpointer", "atomic_torch_save", "remove_stale_partial_files"]

logger = logging.getLogger(__name__)

_PARTIAL_SUFFIX = re.compile(r"\.tmp-(\d+)$")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_partial_files(folder: str) -> List[str]:
    """Delete the ``*.tmp-<pid>`` files in ``folder`` left by processes that no longer run (a run killed while
    writing a checkpoint); they are never read, only disk space. Returns the deleted paths."""
    removed = []
    for path in sorted(glob.glob(os.path.join(glob.escape(folder), "*.tmp-*"))):
        match = _PARTIAL_SUFFIX.search(path)
        if match is None or int(match.group(1)) == os.getpid() or _process_alive(int(match.group(1))):
            continue
        os.remove(path)
        removed.append(path)
        logger.warning(f"Removed {path}: a partial checkpoint written by an interrupted run")
    return removed


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` through a temporary file in the same folder and an atomic rename."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
        _atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)
