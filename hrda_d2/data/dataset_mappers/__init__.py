"""Dataset mappers: source / target training pipelines and the test pipeline."""
from .test_mapper import TestMapper
from .train_mappers import SemSegTrainMapper, SourceTrainMapper, TargetTrainMapper

__all__ = ["SemSegTrainMapper", "SourceTrainMapper", "TargetTrainMapper", "TestMapper"]
