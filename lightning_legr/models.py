"""Reference networks: the CIFAR ResNets of the paper (option A and B shortcuts)."""

from typing import List

import torch
from torch import nn
from torch.nn import functional as F

from lightning_legr.core.shortcuts import ZeroPadShortcut

__all__ = ["BasicBlock", "CifarResNet", "cifar_resnet"]


class BasicBlock(nn.Module):
    """3x3 -> 3x3 residual block with an option-A (zero pad) or option-B (1x1 conv) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = ZeroPadShortcut(in_planes, planes, stride=stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images, in the layout of akamaster/pytorch_resnet_cifar10.

    The state-dict keys match ``../shared/weights/resnet56-cifar10-*.``: ``conv1``, ``bn1``,
    ``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}``, ``linear``.
    """

    def __init__(self, num_blocks: List[int], num_classes: int = 10, shortcut: str = "A") -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"`shortcut` can be 'A' (zero pad) or 'B' (1x1 conv), got {shortcut!r}")
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks[0], 1, shortcut)
        self.layer2 = self._make_layer(32, num_blocks[1], 2, shortcut)
        self.layer3 = self._make_layer(64, num_blocks[2], 2, shortcut)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int, shortcut: str) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s, shortcut))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size(3)).flatten(1)  # as the reference code: bitwise the same outputs
        return self.linear(out)


def cifar_resnet(depth: int = 56, num_classes: int = 10, shortcut: str = "A") -> CifarResNet:
    """CIFAR ResNet of the given depth (20, 32, 44, 56, 110, ...: 6n+2).

    Example::

        >>> model = cifar_resnet(56)
        >>> sum(p.numel() for p in model.parameters())
        853018
    """
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"`depth` must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
    n = (depth - 2) // 6
    return CifarResNet([n, n, n], num_classes=num_classes, shortcut=shortcut)
