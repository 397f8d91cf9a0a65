"""Meta-architectures (HRDA; plain DAFormer with one scale)."""
from .hrda import HRDA, HRDATrainOutputs, TiledFeatures

__all__ = ["HRDA", "HRDATrainOutputs", "TiledFeatures"]
