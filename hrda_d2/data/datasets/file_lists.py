"""Deterministic file listing shared by the split loaders and the preparation scripts."""
import os
from typing import Iterable, List, Sequence

__all__ = ["list_files", "replace_suffix"]


def list_files(folder: str, suffix: str, exclude_suffixes: Iterable[str] = ()) -> List[str]:
    """Paths (relative to ``folder``, with ``/`` separators) of all files below ``folder`` ending with ``suffix``.

    Recursive; hidden files and folders (name starting with ".", e.g. partially written outputs) are skipped;
    files ending with any of ``exclude_suffixes`` are left out. The list is sorted, so it does not depend on
    the file system's order.
    """
    excluded: Sequence[str] = tuple(exclude_suffixes)
    found: List[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = os.path.relpath(dirpath, folder)
        for filename in filenames:
            if filename.startswith(".") or not filename.endswith(suffix):
                continue
            if excluded and filename.endswith(excluded):
                continue
            rel = filename if rel_dir == os.curdir else os.path.join(rel_dir, filename)
            found.append(rel.replace(os.sep, "/"))
    return sorted(found)


def replace_suffix(path: str, old_suffix: str, new_suffix: str) -> str:
    """``path`` with its trailing ``old_suffix`` replaced by ``new_suffix`` (ValueError if it does not end so)."""
    if not path.endswith(old_suffix):
        raise ValueError(f"'{path}' does not end with '{old_suffix}'")
    return path[: len(path) - len(old_suffix)] + new_suffix
