"""Capture and restore every RNG stream a DACS step draws from (docs/method.md §7.2, "RNG streams").

The step uses Python's ``random`` (jitter/blur decisions), NumPy's global RNG (detail crop boxes, ClassMix
choices, blur sigmas) and torch (dropout, drop-path, colour jitter; CUDA too on GPU). Saving these three
states in the checkpoint and restoring them on ``--resume`` makes the resumed run draw exactly what the
uninterrupted run draws. Data-loading randomness is a pure function of (seed, sample position) and does not
depend on these states (see ``hrda_d2/data/build.py``).

Under DDP every rank has its own streams (``default_setup`` seeds rank r with ``SEED + r``): a checkpoint holds
the list of all ranks' states (:func:`gather_rng_states`, a collective) and each rank restores its own entry
(:func:`rank_rng_states`).
"""
from __future__ import annotations

import contextlib
import logging
import random
from typing import Any, Dict, Iterator, List, Optional, Union

import numpy as np
import torch
from detectron2.utils import comm

__all__ = ["get_rng_states", "set_rng_states", "preserve_rng_states", "gather_rng_states", "rank_rng_states"]

logger = logging.getLogger(__name__)


def get_rng_states() -> Dict[str, Any]:
    """The current Python, NumPy, torch CPU (and CUDA, if initialised) RNG states.

    Only tensors, numbers, strings and tuples, so that checkpoints holding them load with
    ``torch.load(weights_only=True)`` (the default of torch >= 2.6, used by Detectron2's checkpointer).
    """
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    states: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached_gaussian)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch_cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Dict[str, Any]) -> None:
    """Restore states captured by :func:`get_rng_states`."""
    random.setstate(states["python"])
    name, keys, pos, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(states["torch"])
    if "torch_cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch_cuda"])


@contextlib.contextmanager
def preserve_rng_states() -> Iterator[None]:
    """Run a block (evaluation, visualisation) without disturbing the training RNG streams."""
    states = get_rng_states()
    try:
        yield
    finally:
        set_rng_states(states)


def gather_rng_states() -> List[Dict[str, Any]]:
    """The RNG states of every rank, indexed by rank (``[get_rng_states()]`` without DDP).

    A collective under DDP: every rank must call it (the checkpointer does, see ``checkpointer.py``)."""
    if comm.get_world_size() == 1:
        return [get_rng_states()]
    return comm.all_gather(get_rng_states())


def rank_rng_states(saved: Union[Dict[str, Any], List[Dict[str, Any]]]) -> Optional[Dict[str, Any]]:
    """This rank's entry of states saved by :func:`gather_rng_states` (a single dict: older checkpoints).

    Returns None (keep the freshly seeded streams, with a warning) when the checkpoint was written with another
    number of ranks: the run then continues correctly but does not repeat the interrupted run's draws."""
    if isinstance(saved, dict):
        saved = [saved]
    world_size = comm.get_world_size()
    if len(saved) != world_size:
        logger.warning(
            "The checkpoint holds the RNG states of %d rank(s) but this run has %d: the training RNG streams "
            "are not restored (the resumed run is correct but not identical to an uninterrupted one).",
            len(saved), world_size)
        return None
    return saved[comm.get_rank()]
