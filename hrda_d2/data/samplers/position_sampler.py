"""The training-stream sampler: the positions one rank consumes (the streams: :mod:`hrda_d2.data.common`)."""
from typing import Iterator, Optional

from detectron2.utils import comm
from torch.utils.data import Sampler

__all__ = ["InfinitePositionSampler"]


class InfinitePositionSampler(Sampler):
    """Infinite positions of one rank: ``start_position + rank + k * world_size``, k = 0, 1, ...

    ``start_position`` is the number of samples of the stream consumed before (``start_iter *
    global_batch``). Every ``iter()`` starts again from ``start_position`` (Detectron2's worker
    sharding iterates it once per worker and chunk and keeps a slice).
    """

    def __init__(self, start_position: int = 0, rank: Optional[int] = None, world_size: Optional[int] = None):
        if start_position < 0:
            raise ValueError(f"start_position must be >= 0, got {start_position}")
        self.start_position = int(start_position)
        self.rank = comm.get_rank() if rank is None else int(rank)
        self.world_size = comm.get_world_size() if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, world_size={self.world_size})")

    def __iter__(self) -> Iterator[int]:
        position = self.start_position + self.rank
        while True:
            yield position
            position += self.world_size
