"""ImageNet feature distance of DAFormer/HRDA (DACS step 5): label downscaling and the masked L2 distance.

Source: docs/method.md §7.2 step 5, §15 Q14.
"""
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["downscale_label_ratio", "masked_feature_distance", "imnet_feature_distance_loss"]


def downscale_label_ratio(
    labels: torch.Tensor,
    scale_factor: int,
    min_ratio: float,
    num_classes: int,
    ignore_value: int = 255,
) -> torch.Tensor:
    """Downscale a label map to cells of ``scale_factor`` x ``scale_factor`` pixels by majority class.

    ``ignore_value`` is replaced by an extra class ``num_classes``; the labels are one-hot encoded
    (``num_classes + 1`` channels) and averaged over every cell (``avg_pool2d`` with kernel = stride =
    ``scale_factor``, partial cells at the bottom/right are dropped); a cell gets the class of largest
    fraction, or ``ignore_value`` when that class is the extra class or its fraction is ``< min_ratio``.

    Args:
        labels: N x 1 x H x W (or N x H x W) integer labels in ``[0, num_classes) U {ignore_value}``.
        scale_factor: cell size in pixels (>= 1).
        min_ratio: minimum fraction of the cell the majority class must cover (0.75).
        num_classes: number of real classes (19).

    Returns:
        N x 1 x (H // scale_factor) x (W // scale_factor) int64 labels, no gradient.
    """
    if labels.dim() == 3:
        labels = labels.unsqueeze(1)
    if labels.dim() != 4 or labels.shape[1] != 1:
        raise ValueError(f"downscale_label_ratio: labels must be N x 1 x H x W, got {tuple(labels.shape)}")
    if scale_factor < 1:
        raise ValueError(f"downscale_label_ratio: scale_factor must be >= 1, got {scale_factor}")
    labels = labels.detach().long().clone()
    labels[labels == ignore_value] = num_classes
    if labels.numel() > 0 and (labels.min() < 0 or labels.max() > num_classes):
        raise ValueError(
            f"downscale_label_ratio: labels must lie in [0, {num_classes}) or equal the ignore value "
            f"{ignore_value}; got values in [{int(labels.min())}, {int(labels.max())}] "
            "(check MODEL.SEM_SEG_HEAD.NUM_CLASSES and the dataset's label mapping)"
        )
    one_hot = F.one_hot(labels.squeeze(1), num_classes=num_classes + 1).permute(0, 3, 1, 2)
    fractions = F.avg_pool2d(one_hot.float(), kernel_size=scale_factor, stride=scale_factor)
    max_fraction, cell_labels = torch.max(fractions, dim=1, keepdim=True)
    cell_labels[cell_labels == num_classes] = ignore_value
    cell_labels[max_fraction < min_ratio] = ignore_value
    return cell_labels


def masked_feature_distance(
    features: torch.Tensor, reference_features: torch.Tensor, mask: torch.Tensor
) -> Tuple[torch.Tensor, int]:
    """Mean over the selected cells of the L2 distance between two feature maps.

    Args:
        features: N x C x h x w student features (with gradient).
        reference_features: N x C x h x w features to approach (the frozen ImageNet backbone's).
        mask: N x 1 x h x w or N x h x w bool, the cells to use (over the whole batch).

    Returns:
        ``(distance, num_selected)``: ``distance`` is the scalar ``mean(||f - f_ref||_2 over C)`` over the
        selected cells. When no cell is selected it is an exact 0 that keeps the graph (every gradient is
        0), where the original would produce NaN (docs/method.md §15 Q14); ``num_selected`` (0 then) reports that case.
    """
    if features.shape != reference_features.shape:
        raise ValueError(
            f"masked_feature_distance: feature shapes differ: {tuple(features.shape)} vs "
            f"{tuple(reference_features.shape)}"
        )
    if mask.dim() == 4:
        mask = mask.squeeze(1)
    expected_mask_shape = (features.shape[0],) + tuple(features.shape[-2:])
    if tuple(mask.shape) != expected_mask_shape:
        raise ValueError(
            f"masked_feature_distance: mask has shape {tuple(mask.shape)}, expected N x h x w = "
            f"{expected_mask_shape} (the feature map size)"
        )
    cell_distance = torch.norm(features - reference_features, p=2, dim=1)  # N x h x w
    selected = cell_distance[mask.bool()]
    num_selected = int(selected.numel())
    if num_selected == 0:
        return selected.sum(), 0
    return torch.mean(selected), num_selected


def imnet_feature_distance_loss(
    features: torch.Tensor,
    imnet_features: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[int],
    num_classes: int,
    min_ratio: float,
    loss_weight: float,
    ignore_value: int = 255,
) -> Tuple[torch.Tensor, int]:
    """ImageNet feature-distance loss on the cells dominated by one of ``classes`` (DACS step 5).

    ``scale_factor = W // w`` (label width over feature width: 1024 // 16 = 64 for HRDA, 512 // 16 = 32 for
    DAFormer 512), labels downscaled with :func:`downscale_label_ratio` (``min_ratio`` 0.75), cells whose
    label is in ``classes`` selected, loss = ``loss_weight * masked_feature_distance``.

    Args:
        features: N x C x h x w last-level student features (LR scale for HRDA).
        imnet_features: N x C x h x w last-level features of the frozen ImageNet backbone (detached here).
        labels: N x 1 x H x W or N x H x W source labels.
        classes: train ids whose cells are used (``UDA.FD.CLASSES``).
        num_classes: number of classes (19).
        min_ratio: ``UDA.FD.SCALE_MIN_RATIO``.
        loss_weight: ``UDA.FD.LAMBDA`` (0.005).

    Returns:
        ``(loss, num_selected_cells)``; the loss is a finite zero with zero gradients when no cell is
        selected (``num_selected_cells == 0``).
    """
    if labels.dim() == 3:
        labels = labels.unsqueeze(1)
    feat_h, feat_w = features.shape[-2:]
    scale_factor = labels.shape[-1] // feat_w
    cell_labels = downscale_label_ratio(labels, scale_factor, min_ratio, num_classes, ignore_value)
    if tuple(cell_labels.shape[-2:]) != (feat_h, feat_w):
        raise ValueError(
            f"imnet_feature_distance_loss: labels {tuple(labels.shape[-2:])} downscaled by {scale_factor} give "
            f"{tuple(cell_labels.shape[-2:])} cells but the features are {feat_h} x {feat_w}; the label map "
            "must be the image the features were computed from (times the feature scale)"
        )
    class_ids = torch.as_tensor(list(classes), dtype=cell_labels.dtype, device=cell_labels.device)
    mask = torch.isin(cell_labels, class_ids)
    distance, num_selected = masked_feature_distance(features, imnet_features.detach(), mask)
    return loss_weight * distance, num_selected


# ------------------------------------------------------------------------------------------------------------------
# VFM-UDA++: feature distance to a frozen DINOv2 (docs/method.md §22.4)
class DistillFeatureHead(torch.nn.Module):
    """VFM-UDA++'s projection of the student's features onto the frozen DINOv2's: 1x1 conv ``C -> 4C``, LayerNorm2d,
    GELU, 1x1 conv ``4C -> D``, then a bilinear resize (align_corners False) to the frozen map's ``h x w``.

    Args:
        in_channels: ``C``, the channels of the student map ``UDA.VFM.FD_FEATURE``.
        out_channels: ``D``, the frozen DINOv2's embedding width.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        from timm.layers import LayerNorm2d  # timm's channels-first LayerNorm (eps 1e-6), as the original's

        self.feat_project = torch.nn.ModuleList([
            torch.nn.Conv2d(in_channels, in_channels * 4, kernel_size=1),
            LayerNorm2d(in_channels * 4),
            torch.nn.GELU(),
            torch.nn.Conv2d(in_channels * 4, out_channels, kernel_size=1),
        ])

    def forward(self, features: torch.Tensor, out_size: Tuple[int, int]) -> torch.Tensor:
        """``N x C x h' x w'`` -> ``N x D x h x w`` (``out_size = (h, w)``)."""
        for layer in self.feat_project:
            features = layer(features)
        return F.interpolate(features, size=tuple(out_size), mode="bilinear", align_corners=False)


class FrozenDINOv2Features(torch.nn.Module):
    """The frozen DINOv2 of VFM-UDA++'s feature distance: the normalised ``N x 3 x H x W`` image (square) resized
    bilinearly (align_corners False) to ``size x size`` (406), the encoder's tokens (``prepare_tokens``: patch
    embedding, cls token, interpolated position embedding, register tokens after it), every block, the final norm,
    the patch tokens as an ``N x D x size/p x size/p`` map (``p`` = patch size; 406 / 14 = 29).

    Args:
        encoder: a DINOv2 ViT with ``prepare_tokens(x)``, ``blocks``, ``norm``, ``num_prefix_tokens`` (1 + registers),
            ``patch_size``, ``embed_dim`` (``hrda_d2.modeling.backbone.dinov2_vit.DINOv2ViT``); its parameters are
            frozen here and the module is always evaluated in eval mode.
        size: ``UDA.VFM.FD_SIZE``.
    """

    def __init__(self, encoder: torch.nn.Module, size: int = 406) -> None:
        super().__init__()
        self.encoder = encoder.requires_grad_(False)
        self.size = int(size)

    @property
    def embed_dim(self) -> int:
        return int(self.encoder.embed_dim)

    def train(self, mode: bool = True) -> "FrozenDINOv2Features":
        return super().train(False)  # frozen: dropout / drop-path stay off whatever the caller asks

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        if h != w:
            raise ValueError(f"FrozenDINOv2Features: the original resizes square images only, got {h} x {w}")
        x = F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False)
        patch = int(self.encoder.patch_size)
        tokens = self.encoder.prepare_tokens(x)
        for block in self.encoder.blocks:
            tokens = block(tokens)
        tokens = self.encoder.norm(tokens)[:, int(self.encoder.num_prefix_tokens):]
        grid = self.size // patch
        return tokens.permute(0, 2, 1).reshape(n, self.embed_dim, grid, grid)


def distill_feature_loss(features: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
    """VFM-UDA++'s distance between the projected student map and the frozen DINOv2 map (both ``N x D x h x w``):
    per cell ``0.1 * mean_D smooth_l1(f, g) + 0.9 * (1 - cos(f, g))`` (cosine over D, eps 1e-8), averaged over all
    cells (the caller multiplies ``UDA.VFM.FD_WEIGHT_*``)."""
    diff = F.smooth_l1_loss(features, frozen, reduction="none").mean(1) * 0.1
    diff = diff + (1 - F.cosine_similarity(features, frozen)) * 0.9
    return diff.mean()
