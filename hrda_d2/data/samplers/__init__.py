"""Samplers: the position sampler of the reproducible, resumable training streams."""
from .position_sampler import InfinitePositionSampler

__all__ = ["InfinitePositionSampler"]
