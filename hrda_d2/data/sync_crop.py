"""Synchronized crop of the crop-size study (``INPUT.SYNC_CROP_SIZE``, docs/method.md §10.4).

The original cuts one random window of ``sync_crop_size`` out of the source and the target sample of a training
pair, after both pipelines (their own crops) and after rare class sampling. Here the two domains are separate
position-seeded streams (:mod:`hrda_d2.data.common`) whose samples of one batch position ``p`` form the pair, so the
window of position ``p`` is a pure function of ``(seed, p)`` and of the sample size (:func:`sync_crop_box`): both
streams cut the same window, in any worker process, and a resumed run cuts the same windows again.

RNG order: the window comes from its own NumPy generator (seed sequence ``(seed, SYNC_CROP_KEY, p)``); it draws the
row offset, then the column offset, each uniform over ``0 .. margin`` as the original's ``get_crop_bbox``. It runs
after the stream's sample is complete and touches neither the global RNGs nor the streams' own draws, so every
other random choice (RCS, crops, flips, the DACS step) is unchanged; with ``INPUT.SYNC_CROP_SIZE []`` the streams
are not wrapped at all.
"""
from typing import Any, Dict, Sequence, Tuple

import numpy as np
from torch.utils.data import Dataset

__all__ = ["SYNC_CROP_KEY", "SYNC_CROP_FIELDS", "SynchronizedCropStream", "crop_sample", "sync_crop_box"]

# spawn-key namespace of the window draws (the streams use (stream id 0 / 1, key 0 / 1, ...))
SYNC_CROP_KEY = 2
# the per-pixel fields of a mapped training sample that the window cuts (the original: img, gt_semantic_seg,
# valid_pseudo_mask)
SYNC_CROP_FIELDS = ("image", "sem_seg", "valid_pseudo_mask")

CropBox = Tuple[int, int, int, int]


def sync_crop_box(seed: int, position: int, image_hw: Sequence[int], crop_hw: Sequence[int]) -> CropBox:
    """The window ``(y1, y2, x1, x2)`` of batch position ``position`` in a sample of size ``image_hw``.

    Offsets are uniform over ``0 .. max(size - crop, 0)`` (row first, then column), as the original's
    ``get_crop_bbox``; a crop larger than the sample is clipped to it.
    """
    sequence = np.random.SeedSequence(entropy=int(seed), spawn_key=(SYNC_CROP_KEY, int(position)))
    rng = np.random.default_rng(sequence)
    h, w = int(image_hw[0]), int(image_hw[1])
    ch, cw = int(crop_hw[0]), int(crop_hw[1])
    y1 = int(rng.integers(0, max(h - ch, 0) + 1))
    x1 = int(rng.integers(0, max(w - cw, 0) + 1))
    return y1, min(y1 + ch, h), x1, min(x1 + cw, w)


def crop_sample(sample: Dict[str, Any], box: CropBox) -> Dict[str, Any]:
    """A copy of the mapped sample with :data:`SYNC_CROP_FIELDS` cut to ``box`` (``image`` is ``3 x H x W``, the
    others ``H x W``); every other entry (file name, original ``height``/``width``) is kept."""
    y1, y2, x1, x2 = box
    out = dict(sample)
    for key in SYNC_CROP_FIELDS:
        if key in out:
            out[key] = out[key][..., y1:y2, x1:x2].contiguous()
    return out


class SynchronizedCropStream(Dataset):
    """A training stream (``stream[p]`` = sample ``p``, :class:`~hrda_d2.data.common.PositionSeededDataset`) whose
    samples are cut to the window :func:`sync_crop_box` ``(seed, p, ...)``.

    Args:
        stream: the position-seeded stream (source or target).
        seed: the run's seed, the same for both streams (so that both cut the same window at each position).
        crop_size: ``(h, w)`` of the window, ``INPUT.SYNC_CROP_SIZE``.
    """

    def __init__(self, stream: Dataset, seed: int, crop_size: Sequence[int]):
        if len(crop_size) != 2 or min(int(s) for s in crop_size) <= 0:
            raise ValueError(f"INPUT.SYNC_CROP_SIZE must be [] or [height, width] > 0, got {list(crop_size)}")
        self.stream = stream
        self.seed = int(seed)
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))

    def __len__(self) -> int:
        return len(self.stream)

    def __getitem__(self, position: int) -> Dict[str, Any]:
        sample = self.stream[position]
        box = sync_crop_box(self.seed, int(position), sample["image"].shape[-2:], self.crop_size)
        return crop_sample(sample, box)
