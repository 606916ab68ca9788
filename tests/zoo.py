"""Networks as their authors write them, small: the coverage matrix of "any CNN as users write it".

Each is a faithful, narrowed copy of a public reference (named in its docstring): same layer
types, same forward code (shortcuts, SE, layer scale, permutes, concatenations), tiny widths, and
32x32 inputs, so that tracing, pruning and FLOP counting take milliseconds.
"""

from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from tests.models import akamaster_resnet, bottleneck_resnet, randomize_bn


def _conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act=nn.ReLU) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act is not None else nn.Sequential(*layers)


# -------------------------------------------------------- cmu-enyac/LeGR model/resnet_cifar10.py (option A)
class DownsampleA(nn.Module):
    """The LeGR reference code's shortcut: subsample, then append zero channels with torch.cat
    (``device='cuda'`` there; the input's device here). ``zeros="mul"`` is the D-X-Y
    ResNeXt-DenseNet variant, ``torch.cat((x, x.mul(0)), 1)``."""

    def __init__(self, n_in: int, n_out: int, stride: int, zeros: str = "zeros") -> None:
        super().__init__()
        assert stride == 2
        self.out_channels = n_out
        self.zeros = zeros
        self.avg = nn.AvgPool2d(kernel_size=1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avg(x)
        if self.zeros == "mul":
            return torch.cat((x, x.mul(0)), 1)
        if self.out_channels - x.size(1) > 0:
            zeros = torch.zeros(x.size(0), self.out_channels - x.size(1), x.size(2), x.size(3), device=x.device)
            return torch.cat((x, zeros), 1)
        return x


class LeGRBasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1, zeros: str = "zeros") -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(planes),
        )
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = DownsampleA(in_planes, planes, stride, zeros)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.shortcut(x) + self.conv(x))


class LeGRResNet(nn.Module):
    def __init__(self, num_blocks: Sequence[int] = (3, 3, 3), num_classes: int = 10, zeros: str = "zeros") -> None:
        super().__init__()
        self.in_planes = 16
        features: List[nn.Module] = [_conv_bn(3, 16)]
        for planes, blocks, stride in zip((16, 32, 64), num_blocks, (1, 2, 2)):
            layers = []
            for s in [stride] + [1] * (blocks - 1):
                layers.append(LeGRBasicBlock(self.in_planes, planes, s, zeros))
                self.in_planes = planes
            features.append(nn.Sequential(*layers))
        features.append(nn.AvgPool2d(8))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x.view(-1, self.classifier[0].in_features)
        return self.classifier(x)


class InlineShortcutBlock(nn.Module):
    """akamaster's basic block with the shortcut inline in ``forward``: ``F.pad`` when
    ``style="pad"``, ``torch.cat`` with ``torch.zeros_like`` when ``style="zeros_like"``."""

    def __init__(self, in_planes: int, planes: int, stride: int, style: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or in_planes != planes) else 0
        self.style = style

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.pad and self.style == "pad":
            x = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0)
        elif self.pad:
            x = x[:, :, ::2, ::2]
            x = torch.cat([torch.zeros_like(x)[:, : self.pad], x, torch.zeros_like(x)[:, : self.pad]], dim=1)
        return F.relu(out + x)


class InlineShortcutResNet(nn.Module):
    """Stage 2 pads inline with F.pad, stage 3 concatenates zeros_like."""

    def __init__(self, n: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for planes, stride, style in ((16, 1, "pad"), (32, 2, "pad"), (64, 2, "zeros_like")):
            for s in [stride] + [1] * (n - 1):
                blocks.append(InlineShortcutBlock(cin, planes, s, style))
                cin = planes
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


# ------------------------------------------- torchvision models/resnet.py Bottleneck with groups (ResNeXt)
class ResNeXtBottleneck(nn.Module):
    """torchvision's Bottleneck: ``width = int(planes * base_width / 64) * groups``, the grouped
    3x3 in the middle; ``se`` adds SENet's squeeze-excitation (written with nn.Linear) before the
    residual add, as in SE-ResNeXt."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, groups: int, base_width: int, se: bool = False) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.se = SELayer(planes * self.expansion) if se else None
        self.downsample = None
        if stride != 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * self.expansion, 1, stride, bias=False), nn.BatchNorm2d(planes * self.expansion)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        return self.relu(out + identity)


class SELayer(nn.Module):
    """moskomule/senet.pytorch's SELayer: global pool, Linear-ReLU-Linear-Sigmoid, rescale."""

    def __init__(self, channel: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channel // reduction, channel, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.size()
        y = self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)
        return x * y.expand_as(x)


class ResNeXt(nn.Module):
    def __init__(self, groups: int, base_width: int, planes: Sequence[int], blocks: Sequence[int] = (1, 1),
                 se: bool = False, stem: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)  # 16
        layers, inplanes = [], stem
        for i, (p, n) in enumerate(zip(planes, blocks)):
            stage = []
            for s in [1 if i == 0 else 2] + [1] * (n - 1):
                stage.append(ResNeXtBottleneck(inplanes, p, s, groups, base_width, se))
                inplanes = p * ResNeXtBottleneck.expansion
            layers.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---------------------------------------------------------- torchvision ops/misc.py SqueezeExcitation
class SqueezeExcitation(nn.Module):
    def __init__(self, input_channels: int, squeeze_channels: int, activation=nn.ReLU, scale_activation=nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.scale_activation(scale) * x


# --------------------------------------------------------------------- torchvision models/regnet.py
class ResBottleneckBlock(nn.Module):
    """RegNet's block: 1x1 -> grouped 3x3 (``group_width`` channels per group) -> SE -> 1x1, plus
    a 1x1 projection when the shape changes."""

    def __init__(self, width_in: int, width_out: int, stride: int, group_width: int, se_ratio: float = 0.25) -> None:
        super().__init__()
        self.proj = None
        if width_in != width_out or stride != 1:
            self.proj = _conv_bn(width_in, width_out, 1, stride, act=None)
        w_b = width_out
        groups = w_b // group_width
        self.f = nn.Sequential()
        self.f.add_module("a", _conv_bn(width_in, w_b, 1))
        self.f.add_module("b", _conv_bn(w_b, w_b, 3, stride, groups=groups))
        self.f.add_module("se", SqueezeExcitation(w_b, int(round(se_ratio * width_in))))
        self.f.add_module("c", _conv_bn(w_b, width_out, 1, act=None))
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x) + self.f(x) if self.proj is not None else x + self.f(x)
        return self.activation(x)


class RegNet(nn.Module):
    def __init__(self, widths: Sequence[int] = (16, 32), depths: Sequence[int] = (1, 2), group_width: int = 8,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 16, 3, 2)  # 16x16
        blocks, cin = [], 16
        for i, (w, d) in enumerate(zip(widths, depths)):
            for j in range(d):
                blocks.append(ResBottleneckBlock(cin, w, 2 if j == 0 else 1, group_width))
                cin = w
        self.trunk_output = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.trunk_output(self.stem(x)))
        return self.fc(x.flatten(start_dim=1))


# --------------------------------------------------------------- torchvision models/mobilenetv3.py
def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class MobileNetV3Block(nn.Module):
    """InvertedResidual of MobileNetV3: 1x1 expand, kxk depthwise, SE with hard-sigmoid, 1x1 project."""

    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, use_se: bool, act, stride: int) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        layers: List[nn.Module] = []
        if expanded != cin:
            layers.append(_conv_bn(cin, expanded, 1, act=act))
        layers.append(_conv_bn(expanded, expanded, kernel, stride, groups=expanded, act=act))
        if use_se:
            layers.append(SqueezeExcitation(expanded, _make_divisible(expanded // 4, 8), scale_activation=nn.Hardsigmoid))
        layers.append(_conv_bn(expanded, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        return result + x if self.use_res_connect else result


class MobileNetV3(nn.Module):
    SETTING = [  # input, kernel, expanded, out, SE, activation, stride
        (16, 3, 16, 16, True, nn.ReLU, 2),
        (16, 3, 48, 24, False, nn.ReLU, 2),
        (24, 5, 64, 24, True, nn.Hardswish, 1),
        (24, 5, 96, 32, True, nn.Hardswish, 2),
    ]

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: List[nn.Module] = [_conv_bn(3, 16, 3, 2, act=nn.Hardswish)]
        layers += [MobileNetV3Block(*s) for s in self.SETTING]
        layers.append(_conv_bn(32, 96, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(96, 64), nn.Hardswish(inplace=True), nn.Dropout(p=0.2, inplace=True), nn.Linear(64, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# -------------------------------------------- torchvision models/efficientnet.py MBConv, ops/stochastic_depth.py
class StochasticDepth(nn.Module):
    """torchvision's stochastic depth, ``mode="row"``: drop whole samples of the residual branch."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        noise = torch.empty([x.shape[0]] + [1] * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(survival)
        return x * noise.div_(survival)


class MBConv(nn.Module):
    def __init__(self, expand_ratio: int, kernel: int, stride: int, cin: int, cout: int, sd_prob: float) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        expanded = _make_divisible(cin * expand_ratio, 8)
        layers: List[nn.Module] = []
        if expanded != cin:
            layers.append(_conv_bn(cin, expanded, 1, act=nn.SiLU))
        layers.append(_conv_bn(expanded, expanded, kernel, stride, groups=expanded, act=nn.SiLU))
        layers.append(SqueezeExcitation(expanded, max(1, cin // 4), activation=nn.SiLU))
        layers.append(_conv_bn(expanded, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(sd_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result = self.stochastic_depth(result) + x
        return result


class EfficientNet(nn.Module):
    SETTING = [(1, 3, 1, 16, 8), (6, 3, 2, 8, 16), (6, 3, 1, 16, 16), (6, 5, 2, 16, 24)]

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: List[nn.Module] = [_conv_bn(3, 16, 3, 2, act=nn.SiLU)]
        layers += [MBConv(*s, sd_prob=0.2 * i / len(self.SETTING)) for i, s in enumerate(self.SETTING)]
        layers.append(_conv_bn(24, 64, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=0.2, inplace=True), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# ------------------------------------------ facebookresearch/ConvNeXt models/convnext.py (+ torchvision's stem norm)
class LayerNorm(nn.Module):
    """ConvNeXt's LayerNorm: over the last dim (channels_last) or, written out, over dim 1."""

    def __init__(self, normalized_shape: int, eps: float = 1e-6, data_format: str = "channels_last") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.data_format = data_format
        self.normalized_shape = (normalized_shape,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.data_format == "channels_last":
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class LayerNorm2d(nn.LayerNorm):
    """torchvision's: permute to channels-last, layer norm, permute back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """dwconv 7x7 -> permute -> LayerNorm -> Linear(4x) -> GELU -> Linear -> layer scale -> permute -> residual."""

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init_value: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        self.drop_path = StochasticDepth(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.dwconv(x).permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        x = (self.gamma * x).permute(0, 3, 1, 2)
        return shortcut + self.drop_path(x)


class ConvNeXt(nn.Module):
    def __init__(self, dims: Sequence[int] = (16, 32), depths: Sequence[int] = (2, 2), num_classes: int = 10) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList([nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6))])
        for i in range(1, len(dims)):
            self.downsample_layers.append(
                nn.Sequential(LayerNorm(dims[i - 1], data_format="channels_first"), nn.Conv2d(dims[i - 1], dims[i], 2, 2))
            )
        self.stages = nn.ModuleList(
            nn.Sequential(*[ConvNeXtBlock(d, drop_path=0.1) for _ in range(n)]) for d, n in zip(dims, depths)
        )
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)
        with torch.no_grad():  # a trained model's layer scale, not 1e-6: pruning the wrong entries would show
            for block in self.modules():
                if isinstance(block, ConvNeXtBlock):
                    block.gamma.copy_(torch.linspace(0.5, 1.5, block.gamma.numel()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.head(self.norm(x.mean([-2, -1])))


# ------------------------------------------------------------------------------------------- U-Net
class UNet(nn.Module):
    """milesial/Pytorch-UNet's layout, two levels: double convs, max-pool down, transposed-conv up,
    concatenation with the skip, and a 1x1 per-pixel head."""

    def __init__(self, n_classes: int = 3) -> None:
        super().__init__()

        def double(cin, cout):
            return nn.Sequential(_conv_bn(cin, cout), _conv_bn(cout, cout))

        self.inc, self.down1, self.down2 = double(3, 8), double(8, 16), double(16, 32)
        self.up1, self.conv1 = nn.ConvTranspose2d(32, 16, 2, 2), double(32, 16)
        self.up2, self.conv2 = nn.ConvTranspose2d(16, 8, 2, 2), double(16, 8)
        self.outc = nn.Conv2d(8, n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(x)
        x2 = self.down1(F.max_pool2d(x1, 2))
        x3 = self.down2(F.max_pool2d(x2, 2))
        x = self.conv1(torch.cat([x2, self.up1(x3)], dim=1))
        x = self.conv2(torch.cat([x1, self.up2(x)], dim=1))
        return self.outc(x)


# ------------------------------------------------------------------- feature pyramid (several outputs)
class FPNBackbone(nn.Module):
    """A backbone that returns three feature maps, torchvision's FeaturePyramidNetwork style:
    lateral 1x1 convs, nearest top-down upsampling added in, a 3x3 output conv per level."""

    def __init__(self, widths: Sequence[int] = (16, 32, 48), out_channels: int = 24) -> None:
        super().__init__()
        self.stem = _conv_bn(3, widths[0])
        self.stages = nn.ModuleList()
        cin = widths[0]
        for w in widths:
            self.stages.append(nn.Sequential(_conv_bn(cin, w, stride=2), _conv_bn(w, w)))
            cin = w
        self.inner = nn.ModuleList(nn.Conv2d(w, out_channels, 1) for w in widths)
        self.layer = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in widths)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        feats, x = [], self.stem(x)
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        last = self.inner[-1](feats[-1])
        results = [self.layer[-1](last)]
        for i in range(len(feats) - 2, -1, -1):
            last = self.inner[i](feats[i]) + F.interpolate(last, size=feats[i].shape[-2:], mode="nearest")
            results.insert(0, self.layer[i](last))
        return tuple(results)


# --------------------------------------------------------------------------------- the matrix
ZOO: Dict[str, Callable[[], nn.Module]] = {
    "resnext_c4": lambda: ResNeXt(groups=4, base_width=16, planes=(16, 32)),
    "resnext_c32": lambda: ResNeXt(groups=32, base_width=4, planes=(32, 64), stem=32),
    "se_resnext": lambda: ResNeXt(groups=8, base_width=16, planes=(16, 32), blocks=(2, 1), se=True),
    "regnet": RegNet,
    "mobilenet_v3": MobileNetV3,
    "efficientnet": EfficientNet,
    "convnext": ConvNeXt,
    "unet": UNet,
    "fpn": FPNBackbone,
    "resnet50_bottleneck": bottleneck_resnet,
    "option_a_fpad": lambda: akamaster_resnet(14),
    "option_a_zeropad": lambda: akamaster_resnet(14, use_fpad=False),
    "option_a_legr_cat_zeros": lambda: LeGRResNet((2, 2, 2)),
    "option_a_cat_mul0": lambda: LeGRResNet((2, 2, 2), zeros="mul"),
    "option_a_inline": lambda: InlineShortcutResNet(2),
}


def build_zoo(name: str, seed: int = 0) -> nn.Module:
    """A deterministic instance, in eval mode, with random BatchNorm statistics."""
    torch.manual_seed(seed)
    return randomize_bn(ZOO[name](), seed).eval()


def outputs(result) -> List[torch.Tensor]:
    """The tensors of a model's output (a tensor or a tuple of them)."""
    return [result] if isinstance(result, torch.Tensor) else list(result)
