"""The pretrained ResNet-56 written both ways: an F.pad shortcut (akamaster's own code) against ZeroPadShortcut.

Loads ``../shared/weights/resnet56-cifar10-jpg.pt`` into akamaster/pytorch_resnet_cifar10's ResNet-56
(``LambdaLayer(lambda x: F.pad(...))`` shortcuts, unchanged) and into the package's
``cifar_resnet(56, "A")`` (``ZeroPadShortcut``), prunes both to ``--flops`` of their FLOPs with the
identity transform (plain global L2 ranking, BatchNorm statistics as they were), and reports the test
accuracy of each on the same ``--images`` test images (a seeded sample of the 10k).

    python benchmarks/fpad_resnet56.py            # about a minute on 2 CPU cores
    python benchmarks/fpad_resnet56.py --smoke    # ResNet-14, random weights and images without ../shared
"""

import argparse
import os
import sys

import numpy as np
import torch

import legr_cifar10 as bench

sys.path.insert(0, bench.ROOT)

from lightning_legr import LeGRPruner, count_flops  # noqa: E402
from lightning_legr.models import cifar_resnet  # noqa: E402
from tests.models import akamaster_resnet  # noqa: E402 - the F.pad ResNet, verbatim akamaster layout


def test_images(data: str, images: int, smoke: bool) -> "bench.Split":
    if os.path.exists(data):
        x, y = bench.load_image_folder(data, "test")
    elif smoke:
        rng = np.random.default_rng(0)
        x, y = rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, images)
    else:
        raise SystemExit(f"No data at {data}: give --data, or use --smoke for generated images.")
    chosen = np.random.default_rng(0).permutation(len(y))[:images]  # the test set is sorted by class
    return bench.Split(x[chosen], y[chosen])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=bench.DATA)
    parser.add_argument("--weights", default=bench.WEIGHTS)
    parser.add_argument("--flops", type=float, default=0.9, help="budget, a fraction of the original FLOPs")
    parser.add_argument("--images", type=int, default=2000, help="test images evaluated")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    depth = 56
    if os.path.exists(args.weights):
        state = torch.load(args.weights, map_location="cpu", weights_only=True)["state_dict"]
        source = args.weights
    elif args.smoke:
        depth, state, source = 14, akamaster_resnet(14).state_dict(), "random weights"
    else:
        raise SystemExit(f"No weights at {args.weights}: give --weights, or use --smoke.")
    split = test_images(args.data, 200 if args.smoke else args.images, args.smoke)
    models = {"F.pad (akamaster LambdaLayer)": akamaster_resnet(depth), "ZeroPadShortcut (cifar_resnet 'A')": cifar_resnet(depth)}
    x = torch.zeros(1, 3, 32, 32)
    print(f"ResNet-{depth} from {source}; {len(split)} test images; budget {args.flops:g} of the FLOPs, identity"
          " transform, BatchNorm statistics not recalibrated")
    print("| model | acc, unpruned | acc, pruned | FLOPs kept (ptflops) | channels kept |")
    print("|---|---:|---:|---:|---:|")
    results = {}
    for name, model in models.items():
        model.load_state_dict(state)
        model.eval()
        pruner = LeGRPruner(model, x)
        selection = pruner.select(args.flops)
        pruned = pruner.apply(selection).eval()
        ratio = count_flops(pruned, x) / pruner.total_flops
        unpruned_acc, pruned_acc = bench.evaluate(model, split)[1], bench.evaluate(pruned, split)[1]
        results[name] = (selection, pruned, pruned_acc)
        print(f"| {name} | {unpruned_acc:.2f}% | {pruned_acc:.2f}% | {ratio:.4f} | {int(selection.widths.sum())}"
              f" / {pruner.structure.num_channels} |", flush=True)
    (sa, pa, acc_a), (sb, pb, acc_b) = results.values()
    same = all(np.array_equal(r, s) for r, s in zip(sa.removed, sb.removed))
    images = next(split.batches(len(split)))[0][:64].contiguous()
    with torch.no_grad():
        identical = torch.equal(pa(images), pb(images))
    print(f"same channels removed: {same}; identical outputs on 64 images: {identical};"
          f" accuracy difference {acc_a - acc_b:+.2f} points")
    return 0 if same and abs(acc_a - acc_b) <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
