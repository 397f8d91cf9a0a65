"""AdvSeg's fully convolutional discriminator (docs/method.md §18.4): the original's ``FCDiscriminator``.

``C -> 64 -> 128 -> 256 -> 512 -> 1`` channels (``ndf`` = 64), every conv 4x4 with stride 2, padding 1 and a
bias; LeakyReLU(0.2) after the first four, nothing after the classifier (the GAN loss takes logits). Input: the
softmax of a prediction, ``N x C x H x W``; output: ``N x 1 x H/32 x W/32`` (for sizes divisible by 32). Weights
start from PyTorch's default initialisation, as in the original (it is not an mmcv module).
"""
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["FCDiscriminator"]


class FCDiscriminator(nn.Module):
    """Parameter names as the original's (``conv1`` ... ``conv4``, ``classifier``)."""

    def __init__(self, num_classes: int, ndf: int = 64):
        super().__init__()
        widths = (num_classes, ndf, ndf * 2, ndf * 4, ndf * 8)
        for i in range(4):
            self.add_module(f"conv{i + 1}", nn.Conv2d(widths[i], widths[i + 1], kernel_size=4, stride=2, padding=1))
        self.classifier = nn.Conv2d(ndf * 8, 1, kernel_size=4, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = F.leaky_relu(conv(x), negative_slope=0.2)
        return self.classifier(x)
