"""Is the latency in the results table believable? One model timed five times in one process, and the pruned
ResNet-56 networks against the unpruned one, side by side.

Targets (issue: trustworthy runs): the five measurements of one model spread by at most 10% of their median;
no pruned network is reported slower than the unpruned one at batch 64 by more than the measurement's spread.
Measured as the callback measures (``lightning_legr.report.measure_latencies``: torch.utils.benchmark, one
thread, five interleaved rounds, median and IQR). Run it on an otherwise idle machine.

    python benchmarks/latency_spread.py            # CIFAR ResNet-56 (pretrained ../shared weights if present)
    python benchmarks/latency_spread.py --smoke    # a ResNet-8, a few seconds (used by the tests)
"""

import argparse
import os
import platform
import statistics
import sys

import torch

from lightning_legr import LeGRPruner
from lightning_legr.core._io import load_torch
from lightning_legr.models import cifar_resnet
from lightning_legr.report import measure_latencies, measure_latency

WEIGHTS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "weights", "resnet56-cifar10-jpg.pt")
BUDGETS = (0.7, 0.5, 0.3)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a ResNet-8 and short timings, for the tests")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="measurements of the same model")
    args = parser.parse_args(argv)

    depth = 8 if args.smoke else 56
    torch.manual_seed(0)
    model = cifar_resnet(depth).eval()
    source = "random init"
    if not args.smoke and os.path.exists(WEIGHTS):
        model.load_state_dict(load_torch(WEIGHTS)["state_dict"])
        source = "pretrained ../shared weights"
    x = torch.randn(1, 3, 32, 32)
    rounds = 2 if args.smoke else 5
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__};"
          f" ResNet-{depth} ({source}); {args.threads} thread(s), {rounds} rounds per measurement")

    ok = True
    print(f"\nthe unpruned model measured {args.repeats} times in this process:")
    for batch in (1, 64):
        medians = [measure_latency(model, x, batch, args.threads, rounds).median_ms for _ in range(args.repeats)]
        median = statistics.median(medians)
        spread = (max(medians) - min(medians)) / median
        ok &= spread <= 0.10
        print(f"  batch {batch:>2}: " + ", ".join(f"{m:.2f}" for m in medians)
              + f" ms; median {median:.2f} ms, spread (max - min) {spread:.1%} of the median (target <= 10%)")

    pruner = LeGRPruner(model, x)
    networks = {"unpruned": model, **{f"{b:.0%} FLOPs": pruner.prune(b) for b in BUDGETS}}
    times = measure_latencies(networks, x, (1, 64), threads=args.threads, rounds=rounds)
    print("\nside by side (median ± IQR over the rounds, ms):")
    print("  network        batch 1            batch 64")
    base = times["unpruned"][64]
    for name, latency in times.items():
        print(f"  {name:<12} {latency[1].median_ms:8.2f} ± {latency[1].iqr_ms:<7.2f} {latency[64].median_ms:9.2f} ± {latency[64].iqr_ms:.2f}")
        slower = latency[64].median_ms - base.median_ms
        if name != "unpruned" and slower > max(latency[64].iqr_ms, base.iqr_ms):
            ok = False
            print(f"    slower than the unpruned network at batch 64 by {slower:.2f} ms, more than the spread")
    print("\ntargets met" if ok else "\nTARGETS MISSED")
    return 0 if ok or args.smoke else 1


if __name__ == "__main__":
    sys.exit(main())
