"""The command line of ``datasets/prepare_{gta,synthia,cityscapes}.py``."""
import argparse
import logging
import os
import sys
from typing import Any, Callable, Dict, Optional, Sequence

from .prepare import PreparationResult

__all__ = ["run_prepare_cli"]

logger = logging.getLogger(__name__)


def run_prepare_cli(
    prepare: Callable[..., PreparationResult], description: str, argv: Optional[Sequence[str]] = None,
    unknown_id_option: bool = True,
) -> int:
    """Command line of ``datasets/prepare_*.py``: ``ROOT [--nproc N] [--verify-images]
    [--map-unknown-to-ignore]``. Returns the exit status (0 ok, 1 bad input, with the message on stderr). The
    scripts configure the logging (the summary is an INFO line)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="the dataset folder (e.g. datasets/gta)")
    parser.add_argument("--nproc", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--verify-images", action="store_true",
                        help="decode every image completely to find truncated files (slower)")
    if unknown_id_option:
        parser.add_argument("--map-unknown-to-ignore", action="store_true",
                            help="map label ids outside the dataset's mapping to 255 (warning) instead of failing")
    args = parser.parse_args(argv)
    kwargs: Dict[str, Any] = {"nproc": args.nproc, "verify_images": args.verify_images}
    if unknown_id_option:
        kwargs["map_unknown_to_ignore"] = args.map_unknown_to_ignore
    try:
        result = prepare(args.root, **kwargs)
    except (OSError, ValueError) as e:
        sys.stderr.write(f"ERROR: {e}\n")
        return 1
    logger.info(
        f"{args.root}: {result.num_converted} labels converted, {result.num_skipped} already converted; "
        f"statistics of {result.num_with_stats} files in {os.path.join(args.root, 'sample_class_stats.json')}"
    )
    return 0
