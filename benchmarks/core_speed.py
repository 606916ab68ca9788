"""Speed of the algorithm core: channel selection and one search candidate, on CIFAR ResNet-56 (option A),
on a ResNeXt-29-style network of similar FLOPs (grouped 3x3 convolutions, cardinality 8), and on the
ResNet-56 inside the example's LightningModule (what LeGRCallback copies and prunes for every candidate).

Targets (issues: core engine, 10): choosing the channels for one budget < 10 ms; one search candidate,
from transform to a pruned model ready to evaluate, < 100 ms. Also checks the pruned FLOPs with ptflops.

    python benchmarks/core_speed.py            # full measurement
    python benchmarks/core_speed.py --smoke    # a few repetitions (used by the tests)
"""

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lightning_legr import LeGRPruner, Transform, count_flops
from lightning_legr.models import cifar_resnet

WEIGHTS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "weights", "resnet56-cifar10-jpg.pt")


class Bottleneck(nn.Module):
    """torchvision's ResNeXt block: 1x1 -> grouped 3x3 -> 1x1 (x4), 1x1 conv + BN downsample."""

    def __init__(self, inplanes: int, planes: int, stride: int, cardinality: int, base_width: int) -> None:
        super().__init__()
        width = int(planes * base_width / 64) * cardinality
        self.conv1, self.bn1 = nn.Conv2d(inplanes, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, 4 * planes, 1, bias=False), nn.BatchNorm2d(4 * planes)
        self.downsample = None
        if stride != 1 or inplanes != 4 * planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, 4 * planes, 1, stride, bias=False), nn.BatchNorm2d(4 * planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNeXt(nn.Module):
    """ResNeXt-29 layout (3 stages x 3 bottlenecks) at CIFAR ResNet widths: 129 MFLOPs, 0.82M parameters."""

    def __init__(self, cardinality: int = 8, base_width: int = 32, blocks: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        stages, inplanes = [], 16
        for i, planes in enumerate((16, 32, 64)):
            stage = []
            for j in range(blocks):
                stage.append(Bottleneck(inplanes, planes, 2 if i > 0 and j == 0 else 1, cardinality, base_width))
                inplanes = 4 * planes
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), 1000 * max(times)


def random_transform(pruner, rng):
    groups = pruner.structure.signature()
    alpha = np.exp(rng.normal(0, 1, len(groups)))
    kappa = rng.normal(0, 1, len(groups)) * pruner.score_spread()
    return Transform(alpha, kappa, groups, pruner.criterion.name)


def measure(name, model, repeats):
    """Print the figures for one network; returns whether its targets are met."""
    x = torch.randn(1, 3, 32, 32)
    start = time.perf_counter()
    pruner = LeGRPruner(model, x)
    build = time.perf_counter() - start
    rng = np.random.default_rng(0)
    transforms = [random_transform(pruner, rng) for _ in range(repeats)]

    it = iter(transforms * 3)
    select_ms, select_max = timed(lambda: pruner.select(0.5, next(it)), repeats)
    it = iter(transforms * 3)
    candidate_ms, candidate_max = timed(lambda: pruner.prune(0.3, next(it)), max(3, repeats // 4))

    worst = 0.0
    for budget in (0.3, 0.5, 0.7):
        pruned = pruner.prune(budget, transforms[0])
        worst = max(worst, abs(count_flops(pruned, x) / pruner.total_flops - budget) / budget)

    steps = sorted({g.step for g in pruner.structure.groups})
    print(f"{name}: {pruner.num_groups} groups (steps of {', '.join(map(str, steps))} channels),"
          f" {pruner.structure.num_channels} channels, {pruner.total_flops / 1e6:.2f} MFLOPs,"
          f" floor {pruner.min_flops:.3f}")
    print(f"  build LeGRPruner once (trace, scores, FLOP model, check): {build * 1000:.0f} ms")
    print(f"  select channels for one budget: median {select_ms:.2f} ms (max {select_max:.2f}), target < 10 ms")
    print(f"  one candidate, transform -> pruned model: median {candidate_ms:.1f} ms (max {candidate_max:.1f}),"
          " target < 100 ms")
    print(f"  ptflops vs budget, worst relative error at 0.3/0.5/0.7: {worst:.3%}")
    return select_ms < 10 and candidate_ms < 100 and worst < 0.01


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="few repetitions, for the tests")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 5 if args.smoke else 200

    resnet = cifar_resnet(56, shortcut="A")
    source = "random init"
    if os.path.exists(WEIGHTS):
        resnet.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True)["state_dict"])
        source = "pretrained ../shared weights"
    torch.manual_seed(0)
    resnext = CifarResNeXt()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__},"
          f" {torch.get_num_threads()} threads")
    ok = measure(f"ResNet-56 ({source})", resnet, repeats)
    ok = measure("ResNeXt-29-style (8 groups, random init)", resnext, repeats) and ok
    # what LeGRCallback prunes: the user's LightningModule (here the example's), copied whole with its network
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
    from cifar10 import CIFARClassifier

    module = CIFARClassifier(depth=56, weights=WEIGHTS if os.path.exists(WEIGHTS) else None)
    ok = measure(f"ResNet-56 in the example's LightningModule ({source})", module, repeats) and ok
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok or args.smoke else 1


if __name__ == "__main__":
    sys.exit(main())
