"""Atomic file writing: the project's one temporary-file + rename helper.

A file is written under a temporary name next to its destination (``<name>.tmp-<pid>[suffix]``, or hidden
``.<name>.tmp-<pid>[suffix]`` where folder listings must not see it), flushed to disk
and renamed over the destination with ``os.replace`` (atomic on POSIX). A process killed at any moment, even by
SIGKILL, leaves either the previous file or the new one, never a truncated one; the temporary files such a kill
leaves are never read and :func:`remove_stale_partial_files` deletes them.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import re
from typing import Any, Iterator, List

__all__ = ["DiskFullError", "atomic_path", "atomic_torch_save", "atomic_write_text", "process_is_running",
           "remove_stale_partial_files"]

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


class DiskFullError(OSError):
    """Writing a file failed for lack of space (``ENOSPC``, ``EDQUOT``); ``path`` was left as it was."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.errno = errno.ENOSPC
        self.path = path


# torch's zip writer reports a short write of its own C++ stream as "unexpected pos <written> vs <expected>"
_TORCH_SHORT_WRITE = "unexpected pos"


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)``, atomically. Raises :class:`DiskFullError` naming ``path`` when the disk (or
    quota) is full; the temporary file is removed and ``path`` keeps its previous content."""
    import torch

    try:
        with atomic_path(path) as tmp:
            # through a Python file object, so that a full disk surfaces as OSError(ENOSPC), not as a bare
            # RuntimeError of torch's own stream
            with open(tmp, "wb") as f:
                torch.save(obj, f)
    except (OSError, RuntimeError) as e:
        full = e.errno in (errno.ENOSPC, errno.EDQUOT) if isinstance(e, OSError) else _TORCH_SHORT_WRITE in str(e)
        if not full:
            raise
        raise DiskFullError(f"no space left on device writing {path} ({e})", path) from e


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path``, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def process_is_running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (also one of another user)."""
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
        if match is None or int(match.group(1)) == os.getpid() or process_is_running(int(match.group(1))):
            continue
        os.remove(path)
        removed.append(path)
        logger.warning(f"Removed {path}: a partial file written by an interrupted run")
    return removed
