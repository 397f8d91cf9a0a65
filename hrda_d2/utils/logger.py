"""Console and ``log.txt`` logging of the command-line tools, without ANSI colour codes where they do not belong.

Detectron2's ``default_setup`` logs the config files highlighted with pygments (terminal colour codes inside
the message) and colours its console prefix; in ``log.txt``, and on a console that is not a terminal (a SLURM
output file, a pipe), those codes are noise. :func:`setup_run_logging` sets up the loggers exactly as
``default_setup`` will (Detectron2 caches ``setup_logger`` by its arguments, so ``default_setup`` reuses them)
and gives every handler that does not write to a terminal a formatter that removes the codes.
"""
from __future__ import annotations

import logging
import re
import sys
from typing import Optional

from detectron2.utils.logger import setup_logger

__all__ = ["PlainFormatter", "setup_run_logging"]

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


class PlainFormatter(logging.Formatter):
    """Detectron2's plain log format, with ANSI escape sequences removed from the formatted record."""

    def __init__(self):
        super().__init__("[%(asctime)s] %(name)s %(levelname)s: %(message)s", datefmt="%m/%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return _ANSI_ESCAPE.sub("", super().format(record))


def _is_terminal(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return stream in (sys.stdout, sys.stderr) and bool(getattr(stream, "isatty", lambda: False)())


def setup_run_logging(output_dir: Optional[str], rank: int) -> None:
    """The ``fvcore``, ``detectron2`` and ``hrda_d2`` loggers of a run (console on rank 0, ``log.txt`` in
    ``output_dir``); call before ``default_setup``. Colours stay only on a console that is a terminal."""
    loggers = [
        setup_logger(output_dir, distributed_rank=rank, name="fvcore"),  # the calls of default_setup
        setup_logger(output_dir, distributed_rank=rank),
        setup_logger(output=output_dir, distributed_rank=rank, name="hrda_d2"),
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if not _is_terminal(handler) and not isinstance(handler.formatter, PlainFormatter):
                handler.setFormatter(PlainFormatter())
