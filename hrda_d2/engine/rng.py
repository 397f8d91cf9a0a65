"""Capture and restore every RNG stream a DACS step draws from (reference §7.2 "RNG streams").

The step uses Python's ``random`` (jitter/blur decisions), NumPy's global RNG (detail crop boxes, ClassMix
choices, blur sigmas) and torch (dropout, drop-path, colour jitter; CUDA too on GPU). Saving these three
states in the checkpoint and restoring them on ``--resume`` makes the resumed run draw exactly what the
uninterrupted run draws. Data-loading randomness is a pure function of (seed, sample position) and does not
depend on these states (see ``hrda_d2/data/build.py``).
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Dict, Iterator

import numpy as np
import torch

__all__ = ["get_rng_states", "set_rng_states", "preserve_rng_states"]


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
