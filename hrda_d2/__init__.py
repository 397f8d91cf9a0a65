"""hrda_d2: HRDA (context-aware high-resolution domain-adaptive semantic segmentation) in Detectron2.

Importing this package registers every component with Detectron2:

* ``BACKBONE_REGISTRY``:      ``build_mit_backbone`` (MiT-b0 ... MiT-b5)
* ``SEM_SEG_HEADS_REGISTRY``: ``DAFormerHead``
* ``META_ARCH_REGISTRY``:     ``HRDA``
* ``DatasetCatalog``:         GTA, Synthia, ACDC, Dark Zurich splits (Cityscapes uses Detectron2's own)
"""
from .config import add_hrda_config, load_config
from . import modeling  # noqa: F401  (registers backbone, head, meta-architecture)
from . import data  # noqa: F401  (registers datasets)

__all__ = ["add_hrda_config", "load_config"]
__version__ = "0.1.0"
