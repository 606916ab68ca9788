"""Latency budgets against FLOP budgets on the pretrained ResNet-56: same measured speed, more accuracy?

For latency targets of ``--targets`` (default 70% and 50%) of the unpruned network's batch-1 CPU latency
at one thread, the package's latency kind selects channels against a per-layer latency table (built once,
cached in ``--out``), measures the pruned network end to end, side by side with the unpruned one, and
corrects the selection along the same global ranking until its share of the unpruned latency (the median
of the round-by-round ratios) is within 5% of the target (or the measurement's spread). For each latency
network, a FLOP-budget network of equal measured share is found by bisecting the FLOP budget along the
same ranking. All networks are then timed side by side (interleaved rounds; median and IQR, and each
one's paired share of the unpruned), and their test accuracy is taken after BatchNorm recalibration on 512 training images
(no fine-tuning). The ranking is the LeGR transform learned on FLOPs in
``benchmarks/results/cifar10_short.json`` when present (``--transform identity``: plain global L2).

    python benchmarks/latency_budgets.py            # a few minutes on 2 CPU cores (idle machine)
    python benchmarks/latency_budgets.py --smoke    # ResNet-14, random weights and images without ../shared
"""

import argparse
import copy
import json
import os
import sys
import time

import torch

import legr_cifar10 as bench

sys.path.insert(0, bench.ROOT)

from lightning_legr import LeGRPruner, Transform, count_flops  # noqa: E402
from lightning_legr.core._io import write_json  # noqa: E402
from lightning_legr.core.latency import BenchmarkTimer, Beside, meet_latency  # noqa: E402
from lightning_legr.models import cifar_resnet  # noqa: E402

RECORD = os.path.join(bench.HERE, "results", "cifar10_short.json")


def learned_transform(choice: str, pruner: LeGRPruner):
    if choice == "identity" or not os.path.exists(RECORD):
        return pruner.identity(), "identity (plain global L2 ranking)"
    with open(RECORD) as f:
        transform = Transform.from_dict(json.load(f)["searches"]["legr"]["transform"])
    transform.check(pruner.structure.signature(), pruner.criterion.name)
    return transform, f"LeGR, learned on FLOPs ({os.path.relpath(RECORD, bench.ROOT)})"


def flops_of_equal_latency(pruner: LeGRPruner, transform, ratio: float, steps: int):
    """The FLOP budget whose network measures closest to ``ratio`` of the unpruned latency, each timed
    beside the unpruned network (bisection along the ranking): ``(budget, Beside)``."""
    model = pruner.cost_model("latency")
    lo, hi, best = pruner.min_budget("flops"), 1.0, None
    budget = ratio
    for _ in range(steps):
        selection = pruner.select(flops=budget, transform=transform)
        measured = model.measure_beside(pruner.apply(selection))
        if best is None or abs(measured.ratio - ratio) < abs(best[1].ratio - ratio):
            best = (budget, measured)
        if abs(measured.ratio - ratio) <= max(0.02 * ratio, measured.spread):
            break
        lo, hi = (lo, budget) if measured.ratio > ratio else (budget, hi)
        budget = (lo + hi) / 2
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=bench.DATA)
    parser.add_argument("--weights", default=bench.WEIGHTS)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.7, 0.5])
    parser.add_argument("--transform", choices=["learned", "identity"], default="learned")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of the side-by-side timing")
    parser.add_argument("--out", default=os.path.join(bench.HERE, "results", "latency_budgets"))
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    start = time.time()
    torch.set_num_threads(1)
    depth, weights = 56, None
    if os.path.exists(args.weights) and not args.smoke:
        weights = torch.load(args.weights, map_location="cpu", weights_only=True)["state_dict"]
    elif args.smoke:
        depth = 14
    else:
        raise SystemExit(f"No weights at {args.weights}: give --weights, or use --smoke.")
    train, _, test, source = bench.load_data(args.smoke, args.data)
    model = cifar_resnet(depth)
    if weights is not None:
        model.load_state_dict(weights)
    model.eval()
    x = torch.zeros(1, 3, 32, 32)
    timer = (BenchmarkTimer(rounds=2, min_run_time=0.002, warmup=0.002) if args.smoke
             else BenchmarkTimer(threads=1, rounds=5, min_run_time=0.1, warmup=0.1))
    os.makedirs(args.out, exist_ok=True)
    cache = os.path.join(args.out, f"latency_table_resnet{depth}.json")
    pruner = LeGRPruner(model, x, cost_options={"latency": {"timer": timer, "cache": cache}})
    transform, ranking = learned_transform("identity" if args.smoke else args.transform, pruner)
    unpruned = pruner.cost_model("latency").unpruned  # measures the table, or loads it from the cache
    table_s = time.time() - start
    print(f"ResNet-{depth} ({source}); ranking: {ranking}; batch 1, 1 thread, CPU")
    print(f"latency table: {cache} ({table_s:.0f} s with loading); unpruned {unpruned.median_ms:.3f} ms"
          f" (IQR {unpruned.iqr_ms:.3f}); floor {pruner.min_budget('latency'):.3f} of it (table)")
    networks, rows = {"unpruned": model}, [{"name": "unpruned", "target": None}]
    for target in args.targets:
        selection, fit = meet_latency(pruner, target, transform)
        networks[f"latency {target:.2f}"] = pruner.apply(selection)
        rows.append({"name": f"latency {target:.2f}", "target": target, "fit": fit.to_dict()})
        print(f"latency {target:.2f}: target {fit.target_ms:.3f} ms ({target:.2f} of the unpruned {fit.unpruned_ms:.3f} ms"
              f" timed beside it), measured {fit.measured_ms:.3f} ms (IQR {fit.iqr_ms:.3f}), {fit.ratio:.3f} of the"
              f" unpruned (IQR {fit.ratio_iqr:.3f}): {'within' if fit.within else 'NOT within'}"
              f" {'the spread' if fit.spread_limited else '5%'}; {fit.measurements} networks measured", flush=True)
        budget, measured = flops_of_equal_latency(pruner, transform, fit.ratio, 4 if args.smoke else 8)
        networks[f"flops {budget:.3f}"] = pruner.prune(flops=budget, transform=transform)
        rows.append({"name": f"flops {budget:.3f}", "target": target, "flops_budget": budget})
        print(f"  FLOP budget of equal measured latency: {budget:.3f} ({measured.network.median_ms:.3f} ms,"
              f" {measured.ratio:.3f} of the unpruned)", flush=True)
    final = BenchmarkTimer(threads=1, rounds=2 if args.smoke else args.rounds, min_run_time=0.005 if args.smoke else 0.2,
                           warmup=0.005 if args.smoke else 0.2)
    names = list(networks)
    times = dict(zip(names, final.side_by_side([copy.deepcopy(networks[n]).eval() for n in names], x)))
    base_flops = count_flops(model, x)
    print("\n| network | FLOPs kept | latency @1, 1 thread (median ± IQR, side by side) | of unpruned (paired rounds,"
          " median ± IQR) | test acc. after BN recalibration |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        net = networks[row["name"]]
        if row["name"] != "unpruned":
            bench.recalibrate(net, train)
        latency, share = times[row["name"]], Beside(times[row["name"]], times["unpruned"])
        row.update(flops_ratio=count_flops(net, x) / base_flops, latency_ms=latency.median_ms,
                   latency_iqr_ms=latency.iqr_ms, latency_ratio=share.ratio, latency_ratio_iqr=share.spread,
                   acc=bench.evaluate(net, test)[1])
        print(f"| {row['name']} | {row['flops_ratio']:.3f} | {latency.median_ms:.3f} ± {latency.iqr_ms:.3f} ms |"
              f" {share.ratio:.3f} ± {share.spread:.3f} | {row['acc']:.2f}% |", flush=True)
    for target in args.targets:
        lat, flop = [r for r in rows if r["target"] == target]
        print(f"target {target:.2f}: latency budget {lat['acc']:.2f}% at {lat['latency_ms']:.3f} ms; FLOP budget"
              f" {flop['acc']:.2f}% at {flop['latency_ms']:.3f} ms: {lat['acc'] - flop['acc']:+.2f} points")
    write_json(os.path.join(args.out, f"latency_budgets_resnet{depth}.json"), {
        "command": "python benchmarks/latency_budgets.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "source": source, "ranking": ranking, "rows": rows, "wall_s": time.time() - start,
        "torch": torch.__version__, "threads": 1, "batch_size": 1,
    })
    print(f"wall time {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
