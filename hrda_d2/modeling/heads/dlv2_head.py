"""DeepLabV2 decode head (docs/method.md §18.2), registered in ``SEM_SEG_HEADS_REGISTRY`` as ``DLV2Head``.

The original's ``DLV2Head``: on ONE backbone map (``res5``, 2048 channels, stride 8) a parallel set of 3x3 convs
with the ``MODEL.SEM_SEG_HEAD.ASPP_DILATIONS`` dilations (padding = dilation; a dilation of 1 is a 1x1 conv),
each mapping straight to the classes, with a bias and without norm, activation or dropout; their outputs are
summed. The "reduced" DeepLabV2 of previous UDA work (``dlv2red``, the paper's Table 2) uses the dilations
(6, 12); the full one (6, 12, 18, 24). Initialisation as the original: weights N(0, 0.01), biases 0.

Under HRDA the scale attention is a second ``DLV2Head`` with the same dilations and ``num_classes`` outputs
(the classes, or 1), as the original's ``HRDAHead`` builds it for ``single_scale_head='DLV2Head'``
(:meth:`DLV2Head.scale_attention_config`).

``forward(features) -> N x num_classes x h x w`` logits at the stride of the input map.
"""
from typing import Dict, Sequence

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import Tensor, nn

__all__ = ["DLV2Head"]


@SEM_SEG_HEADS_REGISTRY.register()
class DLV2Head(nn.Module):
    """Summed dilated 3x3 conv branches on one map (module docstring).

    Attributes: ``in_features`` (one name), ``aspp_modules`` (one ``nn.Conv2d`` per dilation), ``num_classes``.
    """

    @configurable
    def __init__(self, input_shape: Dict[str, ShapeSpec], *, in_features: Sequence[str], num_classes: int,
                 dilations: Sequence[int] = (6, 12)):
        """
        Args:
            input_shape: shapes of the backbone outputs.
            in_features: the ONE map the head reads (e.g. ``["res5"]``).
            num_classes: output channels.
            dilations: one branch per dilation.
        """
        super().__init__()
        if len(in_features) != 1 or in_features[0] not in input_shape:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.IN_FEATURES={list(in_features)}: DLV2Head reads one backbone map "
                             f"(the backbone outputs {sorted(input_shape)}); use ['res5']")
        if not dilations or any(int(d) < 1 for d in dilations):
            raise ValueError(f"MODEL.SEM_SEG_HEAD.ASPP_DILATIONS={list(dilations)}: DLV2Head needs dilations >= 1, "
                             f"e.g. [6, 12] (the reduced DeepLabV2 of the paper's Table 2)")
        self.in_features = list(in_features)
        self.num_classes = num_classes
        channels = input_shape[in_features[0]].channels
        self.aspp_modules = nn.ModuleList(
            nn.Conv2d(channels, num_classes, kernel_size=1 if d == 1 else 3, padding=0 if d == 1 else d,
                      dilation=d)
            for d in (int(d) for d in dilations))
        for conv in self.aspp_modules:
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {"input_shape": input_shape, "in_features": list(head.IN_FEATURES), "num_classes": head.NUM_CLASSES,
                "dilations": list(head.ASPP_DILATIONS)}

    @classmethod
    def scale_attention_config(cls, cfg, input_shape: Dict[str, ShapeSpec], num_classes: int):
        """Constructor kwargs of the HRDA scale attention of this type: the same head with ``num_classes``
        outputs (docs/method.md §18.3)."""
        return dict(cls.from_config(cfg, input_shape), num_classes=num_classes)

    def forward(self, features: Dict[str, Tensor]) -> Tensor:
        x = features[self.in_features[0]]
        out = self.aspp_modules[0](x)
        for branch in self.aspp_modules[1:]:
            out = out + branch(x)
        return out
