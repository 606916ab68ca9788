"""Speed of the algorithm core on CIFAR ResNet-56 (option A): channel selection and one search candidate.

Targets (issue: core engine): choosing the channels for one budget < 10 ms; one search candidate,
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

from lightning_legr import LeGRPruner, Transform, count_flops
from lightning_legr.models import cifar_resnet

WEIGHTS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "weights", "resnet56-cifar10-jpg.pt")


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="few repetitions, for the tests")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 5 if args.smoke else 200

    model = cifar_resnet(56, shortcut="A")
    source = "random init"
    if os.path.exists(WEIGHTS):
        model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True)["state_dict"])
        source = "pretrained ../shared weights"
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

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__},"
          f" {torch.get_num_threads()} threads; ResNet-56 ({source}), {pruner.num_groups} groups,"
          f" {pruner.structure.num_channels} channels, {pruner.total_flops / 1e6:.2f} MFLOPs")
    print(f"build LeGRPruner once (trace, scores, FLOP model): {build * 1000:.0f} ms")
    print(f"select channels for one budget: median {select_ms:.2f} ms (max {select_max:.2f}), target < 10 ms")
    print(f"one candidate, transform -> pruned model: median {candidate_ms:.1f} ms (max {candidate_max:.1f}),"
          " target < 100 ms")
    print(f"ptflops vs budget, worst relative error at 0.3/0.5/0.7: {worst:.3%}")
    ok = select_ms < 10 and candidate_ms < 100 and worst < 0.01
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok or args.smoke else 1


if __name__ == "__main__":
    sys.exit(main())
