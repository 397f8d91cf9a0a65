"""Meta-architectures (HRDA; plain DAFormer with one scale) and the decode heads beside them."""
from .hrda import HRDA, HRDATrainOutputs
from .hrda_head import HRDAHead, ScaleOutputs, SingleScaleHead, TiledFeatures

__all__ = ["HRDA", "HRDAHead", "HRDATrainOutputs", "ScaleOutputs", "SingleScaleHead", "TiledFeatures"]
