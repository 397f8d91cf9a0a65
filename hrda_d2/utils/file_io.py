"""Atomic file writing: the project's one temporary-file + rename helper.

A file is written under a temporary name next to its destination (``<name>.tmp-<pid>[suffix]``, or hidden
``.<name>.tmp-<pid>[suffix]`` where folder listings must not see it), flushed to disk
and renamed over the destination with ``os.replace`` (atomic on POSIX). A process killed at any moment, even by
SIGKILL, leaves either the previous file or the new one, never a truncated one; the temporary files such a kill
leaves are never read and :func:`remove_stale_partial_files` deletes them.
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
from typing import Any, Iterator, List

__all__ = ["atomic_path", "atomic_torch_save", "atomic_write_text", "remove_stale_partial_files"]

logger = logging.getLogger(__name__)

_PARTIAL_NAME = re.compile(r"\.tmp-(\d+)(\.\w+)?$")


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "", hidden: bool = False) -> Iterator[str]:
    """Yield a temporary file name next to ``path`` for the caller to write.

    On a normal exit the file is synced and renamed over ``path``; on an exception it is removed and ``path`` is
    left as it was. ``suffix`` is appended to the temporary name for writers that choose the format by extension
    (e.g. ``".png"``); ``hidden`` starts its name with a dot (dataset folders, which are listed by suffix).
    """
    folder, name = os.path.split(os.fspath(path))
    tmp = os.path.join(folder, f"{'.' if hidden else ''}{name}.tmp-{os.getpid()}{suffix}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)``, atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path``, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_partial_files(folder: str) -> List[str]:
    """Delete the temporary files of :func:`atomic_path` in ``folder`` whose writing process no longer runs (a run
    killed while writing); they are never read, only disk space. Returns the deleted paths."""
    removed = []
    for path in sorted(glob.glob(os.path.join(glob.escape(folder), "*.tmp-*"))):
        match = _PARTIAL_NAME.search(path)
        if match is None or int(match.group(1)) == os.getpid() or _process_alive(int(match.group(1))):
            continue
        os.remove(path)
        removed.append(path)
        logger.warning(f"Removed {path}: a partial file written by an interrupted run")
    return removed
