"""Unsupervised domain adaptation on top of the DACS step.

* ``masking``: MIC's random block masking of normalised images (``docs/method.md §17.3``);
* ``masked_consistency``: MIC, the masked image consistency loss of the DACS step (``docs/method.md §17``).
"""
from .masked_consistency import MIC_MODES, MaskedBatch, MaskedImageConsistency, build_masked_batch
from .masking import block_mask, block_mask_grid_shape, mask_images

__all__ = [
    "MIC_MODES",
    "MaskedBatch",
    "MaskedImageConsistency",
    "block_mask",
    "block_mask_grid_shape",
    "build_masked_batch",
    "mask_images",
]
