"""Reproducible, resumable training streams: sample number p is a pure function of (seed, stream, p).

A training stream (source or target) is an infinite sequence of samples. Sample number ``p`` (its
global position in the stream: ``iteration * global_batch + index``) is produced by
:class:`PositionSeededDataset` ``[p]``, which

1. seeds NumPy's global RNG, Python's ``random`` and torch's CPU RNG with a hash of
   ``(seed, stream_id, p)`` (:func:`sample_seed`),
2. picks the dataset index: ``permutation_e[p mod N]`` with ``e = p // N`` and a permutation of the N
   dataset items seeded by ``(seed, stream_id, e)`` (one shuffled pass per "epoch"), or, for wrapped
   datasets that draw their own item (rare class sampling), passes ``p`` on and lets them draw it from
   the seeded RNG,
3. runs the wrapped dataset (mapper: crop boxes, flips, RCS draws all use the seeded RNG),
4. restores the RNG states it found, so with ``num_workers=0`` the trainer's own RNG streams in the
   main process are untouched.

:class:`hrda_d2.data.samplers.InfinitePositionSampler` yields the positions one rank consumes, interleaved like Detectron2's
``TrainingSampler``: ``start, start + world_size, ...`` with ``start = start_iter * global_batch +
rank``. With Detectron2's ``build_batch_data_loader`` (which shards these positions over the data
loader workers in whole batches and collects the batches round-robin, in order) iteration ``i`` of
rank ``r`` gets positions ``i * global_batch + r + j * world_size`` for ``j < global_batch / world_size``.

Consequences: a stream started at ``start_iter = k`` yields exactly the batches the stream started at
0 yields from iteration k on (exact resume), whatever the number of workers; different ranks and
workers draw different samples; the result depends on the world size only through the assignment
of positions to ranks (the union of the samples of one iteration does not).
"""
import contextlib
import random
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["sample_seed", "epoch_permutation", "seeded_global_rngs", "PositionSeededDataset"]

# domain separation of the two things derived from (seed, stream id, number)
_SAMPLE_KEY, _PERMUTATION_KEY = 0, 1


def sample_seed(seed: int, stream_id: int, position: int) -> int:
    """32-bit seed of sample ``position`` of stream ``stream_id`` (a hash; pure function)."""
    seq = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(stream_id), _SAMPLE_KEY, int(position)))
    return int(seq.generate_state(1, dtype=np.uint32)[0])


def epoch_permutation(seed: int, stream_id: int, epoch: int, size: int) -> np.ndarray:
    """Shuffled order of the ``size`` dataset items for pass ``epoch`` of a stream (pure function)."""
    seq = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(stream_id), _PERMUTATION_KEY, int(epoch)))
    return np.random.default_rng(seq).permutation(size)


@contextlib.contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed NumPy's global RNG, Python's ``random`` and torch's CPU RNG with ``seed`` inside the
    block and restore the previous states afterwards (also on error)."""
    np_state, py_state, torch_state = np.random.get_state(), random.getstate(), torch.get_rng_state()
    np.random.seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
        torch.set_rng_state(torch_state)


class PositionSeededDataset(Dataset):
    """Map-style dataset whose item ``p`` is sample number ``p`` of a reproducible stream.

    Args:
        dataset: map-style dataset (e.g. ``MapDataset(DatasetFromList(dicts), mapper)``) whose random
            choices use the global RNGs.
        seed: the run's seed (``cfg.SEED``), >= 0.
        stream_id: distinguishes the streams of one run (source 0, target 1).
        shuffle: True: item ``p`` reads ``dataset[permutation_e[p mod N]]`` (epoch ``e = p // N``);
            False: ``dataset[p]`` is called with the position itself, for datasets that ignore the
            index and draw their item from the seeded RNG (rare class sampling).
    """

    def __init__(self, dataset: Dataset, seed: int, stream_id: int, shuffle: bool = True):
        if seed < 0:
            raise ValueError(f"seed must be >= 0 for a reproducible stream, got {seed}")
        self.dataset = dataset
        self.seed = int(seed)
        self.stream_id = int(stream_id)
        self.shuffle = bool(shuffle)
        self._size = len(dataset)
        if self._size == 0:
            raise ValueError("cannot build a training stream over an empty dataset")
        self._cached_epoch: Optional[int] = None  # per-process cache of the last epoch's permutation
        self._cached_permutation: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return self._size

    def dataset_index(self, position: int) -> int:
        """Index into the wrapped dataset used for ``position`` (``position`` itself if not shuffled)."""
        if not self.shuffle:
            return position
        epoch, offset = divmod(position, self._size)
        if epoch != self._cached_epoch:
            self._cached_permutation = epoch_permutation(self.seed, self.stream_id, epoch, self._size)
            self._cached_epoch = epoch
        return int(self._cached_permutation[offset])

    def __getitem__(self, position: int):
        position = int(position)
        with seeded_global_rngs(sample_seed(self.seed, self.stream_id, position)):
            return self.dataset[self.dataset_index(position)]
