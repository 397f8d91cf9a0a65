"""Meta-architectures (HRDA; plain DAFormer with one scale) and the HRDA decode head beside them."""
from .hrda import HRDA, HRDATrainOutputs
from .hrda_head import HRDAHead, ScaleOutputs, TiledFeatures

__all__ = ["HRDA", "HRDAHead", "HRDATrainOutputs", "ScaleOutputs", "TiledFeatures"]
