"""ClassMix of DACS: class masks drawn from the source labels and the mixing of source and target.

Source: docs/method.md §7.2 steps 7 and 8, §15 Q5.
"""
from typing import Optional, Tuple

import numpy as np
import torch

__all__ = ["class_mix_masks", "mix_with_mask", "class_mix_batch"]


def _as_n1hw(labels: torch.Tensor, name: str) -> torch.Tensor:
    """Return ``labels`` as N x 1 x H x W (accepts N x H x W or N x 1 x H x W)."""
    if labels.dim() == 3:
        return labels.unsqueeze(1)
    if labels.dim() == 4 and labels.shape[1] == 1:
        return labels
    raise ValueError(f"{name} must be N x H x W or N x 1 x H x W, got {tuple(labels.shape)}")


def class_mix_masks(
    source_labels: torch.Tensor, rng: Optional[np.random.RandomState] = None
) -> torch.Tensor:
    """ClassMix masks, one per source sample (DACS step 7).

    The candidate classes are ``torch.unique`` of the WHOLE source label batch (sorted ascending, the
    ignore value 255 included when present; docs/method.md §15 Q5). For every sample i in batch order,
    ``k = ceil(n / 2)`` of the ``n`` candidates are chosen with ``rng.choice(n, k, replace=False)`` and the
    mask is 1 where sample i's label is one of the chosen classes. All samples' choices are drawn here,
    before any mixing.

    Args:
        source_labels: N x H x W or N x 1 x H x W integer labels of the source batch.
        rng: NumPy random state; ``None`` uses NumPy's global RNG (as the original's ``get_class_masks``,
            docs/method.md §7.2 step 7).

    Returns:
        N x 1 x H x W int64 masks (1 = take the source pixel).
    """
    labels = _as_n1hw(source_labels, "class_mix_masks: source_labels")
    rng = np.random if rng is None else rng
    classes = torch.unique(labels)
    num_classes = int(classes.numel())
    num_chosen = (num_classes + num_classes % 2) // 2
    masks = []
    for sample_label in labels:  # 1 x H x W
        choice = rng.choice(num_classes, num_chosen, replace=False)
        chosen = classes[torch.as_tensor(choice, dtype=torch.long, device=classes.device)]
        mask = (sample_label.unsqueeze(0) == chosen.view(-1, 1, 1, 1)).sum(0, keepdim=True)
        masks.append(mask.long())  # 1 x 1 x H x W
    return torch.cat(masks, dim=0)


def mix_with_mask(mask: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mask * source + (1 - mask) * target`` (DACS step 8), batched.

    Args:
        mask: N x 1 x H x W 0/1 masks from :func:`class_mix_masks`.
        source, target: tensors of equal shape, N x C x H x W (images, the mask is broadcast over channels)
            or N x H x W (labels, weights).

    Returns:
        The mixed tensor, of ``source``'s shape; its dtype follows torch's promotion of ``mask`` and
        ``source`` (int64 for int64 labels, float for images and weights).
    """
    if source.shape != target.shape:
        raise ValueError(
            f"mix_with_mask: source {tuple(source.shape)} and target {tuple(target.shape)} differ in shape"
        )
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mix_with_mask: mask must be N x 1 x H x W, got {tuple(mask.shape)}")
    if source.dim() == 3:
        mask = mask.squeeze(1)
    elif source.dim() != 4:
        raise ValueError(f"mix_with_mask: source must be N x C x H x W or N x H x W, got {tuple(source.shape)}")
    if mask.shape[0] != source.shape[0] or mask.shape[-2:] != source.shape[-2:]:
        raise ValueError(
            f"mix_with_mask: mask {tuple(mask.shape)} does not fit the batch and size of {tuple(source.shape)}"
        )
    return mask * source + (1 - mask) * target


def class_mix_batch(
    mask: torch.Tensor,
    source_images: torch.Tensor,
    target_images: torch.Tensor,
    source_labels: torch.Tensor,
    pseudo_labels: torch.Tensor,
    pseudo_weight: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix a source and a target batch with ClassMix masks (DACS step 8, before strong augmentation).

    Args:
        mask: N x 1 x H x W int64 masks from :func:`class_mix_masks`.
        source_images, target_images: N x 3 x H x W normalised images.
        source_labels: N x H x W or N x 1 x H x W int64 ground truth (255 = ignore).
        pseudo_labels: N x H x W int64 teacher pseudo-labels.
        pseudo_weight: N x H x W float pixel weights of the pseudo-labels.

    Returns:
        ``(mixed_images N x 3 x H x W, mixed_labels N x H x W int64, mixed_weight N x H x W float)``; pixels
        under the mask keep the source image, the source label (255 included) and weight 1, the others take
        the target image, the pseudo-label and the pseudo weight.
    """
    source_labels = _as_n1hw(source_labels, "class_mix_batch: source_labels").squeeze(1)
    mixed_images = mix_with_mask(mask, source_images, target_images)
    mixed_labels = mix_with_mask(mask, source_labels.long(), pseudo_labels.long())
    mixed_weight = mix_with_mask(mask, torch.ones_like(pseudo_weight), pseudo_weight)
    return mixed_images, mixed_labels, mixed_weight
