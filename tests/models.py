"""Small test networks: one per kind of channel coupling LeGR has to get right.

Widths are tiny and inputs 32x32 so that tracing, selection, surgery and FLOP counting take
milliseconds on a CPU. Some widths are deliberately not multiples of 4 (``round_to`` tests).
"""

from typing import List, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from torch_pruning.pruner.function import BasePruningFunc

from lightning_legr.core.shortcuts import ZeroPadShortcut

INPUT_SHAPE = (1, 3, 32, 32)


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act=nn.ReLU) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), act()
    )


# ---------------------------------------------------------------------------------------------- VGG
class VGGSmall(nn.Module):
    """conv-BN-ReLU stack with max-pools; the classifier flattens a C x 2 x 2 map into Linear layers,
    so each channel of the last conv feeds 4 input features of the first Linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(3, 30),
            conv_bn_relu(30, 48),
            nn.MaxPool2d(2),  # 16
            conv_bn_relu(48, 62),
            conv_bn_relu(62, 64),
            nn.MaxPool2d(2),  # 8
            conv_bn_relu(64, 90),
            nn.MaxPool2d(2),  # 4
            conv_bn_relu(90, 128),
            nn.MaxPool2d(2),  # 2
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * 2 * 2, 32), nn.ReLU(), nn.Linear(32, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def vgg_small() -> VGGSmall:
    return VGGSmall()


# ---------------------------------------------------------------------------------------- MobileNetV2
class InvertedResidual(nn.Module):
    """1x1 expand (skipped when expand_ratio is 1), 3x3 depthwise, 1x1 linear project; add when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = cin * expand_ratio
        self.use_residual = stride == 1 and cin == cout
        layers: List[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_relu(cin, hidden, 1, act=nn.ReLU6))
        layers += [
            conv_bn_relu(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2Small(nn.Module):
    # (expand ratio, channels, blocks, first stride)
    SETTINGS: List[Tuple[int, int, int, int]] = [(1, 8, 1, 1), (4, 12, 2, 2), (4, 16, 2, 2)]

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: List[nn.Module] = [conv_bn_relu(3, 8, 3, 1, act=nn.ReLU6)]
        cin = 8
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn_relu(cin, 40, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(40, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def mobilenet_v2_small() -> MobileNetV2Small:
    return MobileNetV2Small()


# ------------------------------------------------------------------------------- bottleneck ResNet
class Bottleneck(nn.Module):
    """torchvision's ResNet-50 block: 1x1 -> 3x3 (stride) -> 1x1 (x4), 1x1 conv + BN downsample."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        width = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != width:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, width, 1, stride, bias=False), nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class BottleneckResNet(nn.Module):
    def __init__(self, layers=(2, 2, 1), planes=(4, 8, 12), num_classes: int = 10) -> None:
        super().__init__()
        self.inplanes = 8
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)  # 16
        self.layer1 = self._make_layer(planes[0], layers[0], 1)
        self.layer2 = self._make_layer(planes[1], layers[1], 2)  # 8
        self.layer3 = self._make_layer(planes[2], layers[2], 2)  # 4
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.inplanes, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(Bottleneck(self.inplanes, planes, s))
            self.inplanes = planes * Bottleneck.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def bottleneck_resnet() -> BottleneckResNet:
    return BottleneckResNet()


# ---------------------------------------------------------------------------------------- DenseNet
class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (bottleneck) - BN-ReLU-3x3 conv (growth), on the concatenation of all
    previous feature maps; returns the concatenation with the new features."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(2 * growth)
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv1(F.relu(self.norm1(x)))
        new = self.conv2(F.relu(self.norm2(new)))
        return torch.cat([x, new], 1)


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2))


class DenseNetSmall(nn.Module):
    def __init__(self, growth: int = 6, blocks=(3, 3), num_classes: int = 10) -> None:
        super().__init__()
        layers: List[nn.Module] = [nn.Conv2d(3, 10, 3, 1, 1, bias=True)]  # a bias: FLOPs have a b * out term
        channels = 10
        for b, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(channels, growth))
                channels += growth
            if b != len(blocks) - 1:
                layers.append(Transition(channels, channels // 2))
                channels //= 2
        layers += [nn.BatchNorm2d(channels), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def densenet_small() -> DenseNetSmall:
    return DenseNetSmall()


# ------------------------------------------------------------------------- custom per-channel layer
class CustomScale(nn.Module):
    """A layer torch-pruning does not know: a learned per-channel scale."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class CustomScaleNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(3, 30)
        self.scale = CustomScale(30)
        self.conv2 = conv_bn_relu(30, 48, stride=2)
        self.conv3 = conv_bn_relu(48, 64)
        self.conv4 = conv_bn_relu(64, 80, stride=2)
        self.fc = nn.Linear(80, num_classes)
        with torch.no_grad():  # not all ones, so that pruning the wrong entries would show
            self.scale.scale.copy_(torch.linspace(0.5, 1.5, 30).view(1, 30, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv4(self.conv3(self.conv2(self.scale(self.conv1(x)))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class CustomScalePruner(BasePruningFunc):
    """A torch-pruning handler for :class:`CustomScale`: its channels go in and out together."""

    TARGET_MODULES = CustomScale

    def prune_out_channels(self, layer: CustomScale, idxs) -> CustomScale:
        keep = [i for i in range(layer.scale.shape[1]) if i not in set(idxs)]
        layer.scale = nn.Parameter(layer.scale.data[:, keep].clone())
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: CustomScale) -> int:
        return layer.scale.shape[1]

    get_in_channels = get_out_channels


def custom_scale_net() -> CustomScaleNet:
    return CustomScaleNet()


# ---------------------------------------------------- akamaster/pytorch_resnet_cifar10, verbatim layout
class LambdaLayer(nn.Module):
    def __init__(self, lambd) -> None:
        super().__init__()
        self.lambd = lambd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lambd(x)


class AkamasterBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, use_fpad: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            if use_fpad:
                self.shortcut = LambdaLayer(
                    lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4), "constant", 0)
                )
            else:
                self.shortcut = ZeroPadShortcut(in_planes, planes, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        out = F.relu(out)
        return out


class AkamasterResNet(nn.Module):
    def __init__(self, num_blocks: List[int], num_classes: int = 10, use_fpad: bool = True) -> None:
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks[0], 1, use_fpad)
        self.layer2 = self._make_layer(32, num_blocks[1], 2, use_fpad)
        self.layer3 = self._make_layer(64, num_blocks[2], 2, use_fpad)
        self.linear = nn.Linear(64, num_classes)

    def _make_layer(self, planes: int, num_blocks: int, stride: int, use_fpad: bool) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(AkamasterBasicBlock(self.in_planes, planes, s, use_fpad))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        out = out.view(out.size(0), -1)
        return self.linear(out)


def akamaster_resnet(depth: int = 56, use_fpad: bool = True) -> AkamasterResNet:
    n = (depth - 2) // 6
    return AkamasterResNet([n, n, n], use_fpad=use_fpad)


# --------------------------------------------------------------------------------------- helpers
def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN affine parameters and running statistics, so that eval-mode outputs depend on them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model


# ------------------------------------------------------------------------------ shared test cases
def example_input(seed: int = 0) -> torch.Tensor:
    return torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(seed))


def _cifar(depth: int, shortcut: str):
    from lightning_legr.models import cifar_resnet

    return lambda: cifar_resnet(depth, shortcut=shortcut)


# name -> (builder, customized_pruners)
ARCHITECTURES = {
    "vgg_small": (vgg_small, None),
    "mobilenet_v2_small": (mobilenet_v2_small, None),
    "bottleneck_resnet": (bottleneck_resnet, None),
    "densenet_small": (densenet_small, None),
    "custom_scale": (custom_scale_net, None),
    "custom_scale_pruner": (custom_scale_net, {CustomScale: CustomScalePruner()}),
    "akamaster_resnet20_zeropad": (lambda: akamaster_resnet(20, use_fpad=False), None),
    "resnet56_A": (_cifar(56, "A"), None),
    "resnet56_B": (_cifar(56, "B"), None),
}


def build(name: str, seed: int = 0) -> nn.Module:
    """A deterministic instance of a test architecture, in eval mode with random BN statistics."""
    torch.manual_seed(seed)
    return randomize_bn(ARCHITECTURES[name][0](), seed).eval()


_PRUNERS = {}


def shared_pruner(name: str):
    """One LeGRPruner per architecture for the whole session (the model is never modified)."""
    from lightning_legr import LeGRPruner

    if name not in _PRUNERS:
        _PRUNERS[name] = LeGRPruner(build(name), example_input(), customized_pruners=ARCHITECTURES[name][1])
    return _PRUNERS[name]
