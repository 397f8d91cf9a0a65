"""Samplers: reproducible position-seeded training streams and rare class sampling."""
from .position_sampling import InfinitePositionSampler, PositionSeededDataset
from .rare_class_sampling import RareClassSamplingDataset

__all__ = ["InfinitePositionSampler", "PositionSeededDataset", "RareClassSamplingDataset"]
