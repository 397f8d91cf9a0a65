"""hrda_d2: HRDA (context-aware high-resolution domain-adaptive semantic segmentation) in Detectron2.

Importing this package registers every component with Detectron2:

* ``BACKBONE_REGISTRY``:      ``build_mit_backbone`` (MiT-b0 ... MiT-b5)
* ``SEM_SEG_HEADS_REGISTRY``: ``DAFormerHead`` (single scale), ``HRDAHead`` (multi-resolution, wraps one)
* ``META_ARCH_REGISTRY``:     ``HRDA``
* ``DatasetCatalog``:         GTA, Synthia, ACDC, Dark Zurich splits (Cityscapes uses Detectron2's own)
"""
import warnings

# fvcore.nn (focal losses) and detectron2.modeling (box regression) call torch.jit.script at import, which
# torch >= 2.9 deprecates with a FutureWarning on every command; silence these imports only (done here, before
# anything else imports them; other torch.jit.script calls still warn). The tools import hrda_d2 first.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    import fvcore.nn  # noqa: F401
    import detectron2.modeling  # noqa: F401

from .config import add_hrda_config, load_config  # noqa: E402
from . import modeling  # noqa: F401,E402  (registers backbone, head, meta-architecture)
from . import data  # noqa: F401,E402  (registers datasets)

__all__ = ["add_hrda_config", "load_config"]
__version__ = "0.1.0"
