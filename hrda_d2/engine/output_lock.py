"""One training run per ``OUTPUT_DIR``: a lock file naming the run that holds the folder.

Two runs writing into one folder overwrite each other's checkpoints, ``last_checkpoint``, ``config.yaml`` and
``metrics.json``. :class:`OutputDirLock` creates ``OUTPUT_DIR/.train.lock`` (JSON: PID, host, start time,
command line) atomically (a complete file is hard-linked into place, so two runs cannot both succeed) and
removes it when the run ends. A lock whose PID no longer runs on this host (a run killed with SIGKILL, a
crashed machine's reboot) is stale: it is replaced with a warning. A lock of another host cannot be checked;
the error says how to remove it once that run is known to be gone.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import sys
import time
from typing import Any, Dict, Optional

from ..utils.file_io import process_is_running

__all__ = ["LOCK_FILE_NAME", "OutputDirInUseError", "OutputDirLock", "lock_output_dir"]

logger = logging.getLogger(__name__)

LOCK_FILE_NAME = ".train.lock"


class OutputDirInUseError(RuntimeError):
    """Another live run holds the folder (the message names the folder, the run and the lock file)."""


def _describe(owner: Dict[str, Any]) -> str:
    started = owner.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"PID {owner.get('pid')} on host {owner.get('host')}, started {when}: {owner.get('command', '?')}"


class OutputDirLock:
    """The lock of one output folder; :meth:`acquire` / :meth:`release`, or a ``with`` block."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, LOCK_FILE_NAME)
        self._held = False

    def _read_owner(self) -> Optional[Dict[str, Any]]:
        try:
            with open(self.path) as f:
                owner = json.load(f)
            return owner if isinstance(owner, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable: not written by this class (it links complete files only)

    def _is_stale(self, owner: Dict[str, Any]) -> bool:
        pid = owner.get("pid")
        if not isinstance(pid, int) or owner.get("host") != socket.gethostname():
            return False
        return pid != os.getpid() and not process_is_running(pid)

    def acquire(self) -> None:
        """Take the folder, or raise :class:`OutputDirInUseError` naming it and the run that holds it."""
        os.makedirs(self.output_dir, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "command": " ".join(sys.argv)}
        tmp = f"{self.path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(me, f)
        try:
            for _ in range(2):  # a second try after removing a stale lock
                try:
                    os.link(tmp, self.path)  # fails if the lock exists: creation and content in one step
                    self._held = True
                    return
                except FileExistsError:
                    owner = self._read_owner()
                    if owner is None:  # released in between
                        continue
                    if not self._is_stale(owner):
                        raise OutputDirInUseError(
                            f"OUTPUT_DIR {self.output_dir} is in use by another training run ({_describe(owner)}; "
                            f"lock file {self.path}). Wait for it to finish or stop it, or give this run another "
                            f"OUTPUT_DIR. If that run is gone (e.g. its machine died), delete {self.path}.") from None
                    logger.warning(f"Removing the stale lock {self.path} of a run that no longer runs "
                                   f"({_describe(owner)})")
                    os.remove(self.path)
            raise OutputDirInUseError(f"could not take the lock {self.path}: other runs keep replacing it")
        finally:
            os.remove(tmp)

    def release(self) -> None:
        """Remove the lock file if this process holds it (idempotent)."""
        if not self._held:
            return
        self._held = False
        owner = self._read_owner()
        if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            os.remove(self.path)

    def __enter__(self) -> "OutputDirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_output_dir(output_dir: str) -> OutputDirLock:
    """Acquire the lock of ``output_dir`` for the rest of this process (released at exit, also after
    ``SystemExit`` / ``KeyboardInterrupt``; a SIGKILL leaves a stale lock that the next run replaces)."""
    lock = OutputDirLock(output_dir)
    lock.acquire()
    atexit.register(lock.release)
    return lock
