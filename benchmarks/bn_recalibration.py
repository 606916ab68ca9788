"""Why LeGR's candidates need their BatchNorm statistics recomputed: pretrained ResNet-56, CIFAR-10.

Prunes the pretrained network to each budget with three rankings (plain L2, uniform, random) and
prints the held-out accuracy and loss right after pruning, with the BatchNorm statistics as they
were and after re-estimating them on 512 training images (forward passes only, weights unchanged).

    python benchmarks/bn_recalibration.py            # about 2 minutes on 2 CPU cores
    python benchmarks/bn_recalibration.py --smoke    # generated data without ../shared
"""

import argparse
import copy
import sys

import torch

import legr_cifar10 as bench
from lightning_legr import LeGRPruner


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=bench.DATA)
    parser.add_argument("--weights", default=bench.WEIGHTS)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.7, 0.47, 0.3])
    parser.add_argument("--images", type=int, default=2000, help="held-out images evaluated")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    train, val, _, source = bench.load_data(args.smoke, args.data)
    model = bench.cifar_resnet(8 if args.smoke else 56, shortcut="A")
    if not args.smoke:
        model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True)["state_dict"])
    model.eval()
    held_out = val.head(args.images)
    x = torch.zeros(1, 3, 32, 32)
    print(f"data: {source}; {len(held_out)} held-out images")
    loss, acc = bench.evaluate(model, held_out)
    print(f"unpruned: loss {loss:.3f}, accuracy {acc:.1f}%")
    print("| ranking | budget | loss, stale BN | acc, stale BN | loss, recomputed BN | acc, recomputed BN |")
    print("|---|---:|---:|---:|---:|---:|")
    for criterion in ("l2", "uniform", "random"):
        pruner = LeGRPruner(model, x, criterion=criterion)
        for budget in args.budgets:
            pruned = pruner.prune(budget)
            stale = bench.evaluate(pruned, held_out)
            fresh = bench.evaluate(bench.recalibrate(copy.deepcopy(pruned), train), held_out)
            print(f"| {criterion} | {budget:.2f} | {stale[0]:.2f} | {stale[1]:.1f} | {fresh[0]:.2f} | {fresh[1]:.1f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
