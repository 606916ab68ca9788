"""Does the search scale with the ranks? LeGR's candidate-parallel search under Lightning's DDP on CPU.

The pretrained ResNet-56 (../shared) on CIFAR-10, searched through ``LeGRCallback`` exactly as a user runs it:
``Trainer(devices=N, strategy="ddp", max_epochs=0)``, tau = 0, fitness = validation loss on 500 images held
out from the training set, BatchNorm re-estimated on one batch of 100 training images per candidate, fitness
averaged over the two search budgets (0.3 and 0.47), one thread per rank. For 1 and 2 ranks it reports
candidates per second, the search's wall time, and per candidate the time in pruning, BatchNorm,
evaluation and (with 2 ranks) communication: waiting for the other rank and exchanging the scores.

Target (issue: distributed LeGR): at least 1.8x the candidates per second at 2 ranks. Run it on an idle machine.

    python benchmarks/ddp_search.py                    # 1 rank, then 2 ranks, 400 generations each
    python benchmarks/ddp_search.py --generations 64   # shorter
    python benchmarks/ddp_search.py --smoke            # the digits demo model, seconds (used by the tests)
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.join(ROOT, "..", "shared")
DATA = os.path.join(SHARED, "data", "cifar10-jpg.tar.xz")
WEIGHTS = os.path.join(SHARED, "weights", "resnet56-cifar10-jpg.pt")


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts to compare")
    parser.add_argument("--generations", type=int, default=400)
    parser.add_argument("--population", type=int, default=64)
    parser.add_argument("--sample-size", type=int, default=16)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "ddp_search"))
    parser.add_argument("--smoke", action="store_true", help="the digits demo and a short search, for the tests")
    parser.add_argument("--rank-run", type=int, default=None, help=argparse.SUPPRESS)  # one run, launched by main
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.rank_run is not None:
        return run(args, args.rank_run)
    if args.smoke:
        args.generations, args.population, args.sample_size = min(args.generations, 8), 4, 2
    elif not (os.path.exists(DATA) and os.path.exists(WEIGHTS)):
        raise SystemExit(f"needs {DATA} and {WEIGHTS} (or --smoke)")
    summaries = {}
    for ranks in args.ranks:
        out = os.path.join(args.out, f"ranks{ranks}")
        os.makedirs(out, exist_ok=True)
        command = [sys.executable, os.path.abspath(__file__), "--rank-run", str(ranks), "--out", out,
                   "--generations", str(args.generations), "--population", str(args.population),
                   "--sample-size", str(args.sample_size)] + (["--smoke"] if args.smoke else [])
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stdout[-3000:], done.stderr[-5000:])
            raise SystemExit(f"the run with {ranks} rank(s) failed")
        summaries[ranks] = [json.load(open(os.path.join(out, f"timing{r}.json"))) for r in range(ranks)]
    report(summaries, args)
    return 0


def run(args, ranks: int) -> int:
    """One search on ``ranks`` ranks (this process is rank 0; Lightning starts the others)."""
    import lightning.pytorch as pl
    import torch

    import lightning_legr.core.pruner as pruner_module
    import lightning_legr.distributed as distributed_module
    import lightning_legr.evaluation as evaluation_module
    from lightning_legr import LeGRCallback
    from lightning_legr.core.search import LeGRSearch

    torch.set_num_threads(1)
    spent = {"prune": 0.0, "batchnorm": 0.0, "evaluation": 0.0, "candidates": 0}

    def timed(owner, name, key):
        real = getattr(owner, name)

        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return real(*a, **k)
            finally:
                spent[key] += time.perf_counter() - start

        setattr(owner, name, wrapper)

    timed(pruner_module.LeGRPruner, "apply", "prune")
    timed(evaluation_module.Evaluator, "recalibrate", "batchnorm")
    timed(evaluation_module.Evaluator, "metrics", "evaluation")  # includes its BatchNorm: subtracted below
    workers = []
    real_workers = distributed_module.RankWorkers.__init__

    def keep(self, *a, **k):
        real_workers(self, *a, **k)
        workers.append(self)

    distributed_module.RankWorkers.__init__ = keep
    search_time = {}
    real_run = LeGRSearch.run

    def timed_run(self, on_generation=None):
        start = time.perf_counter()
        result = real_run(self, on_generation)
        search_time["seconds"], search_time["generations"] = time.perf_counter() - start, self.evolution.generation
        return result

    LeGRSearch.run = timed_run

    if args.smoke:
        from lightning_legr.demos.digits import DigitsClassifier, DigitsDataModule

        model, data, budgets, fitness_batches, bn_batches = DigitsClassifier(width=8), DigitsDataModule(batch_size=100), [0.3, 0.5], 2, 1
    else:
        sys.path.insert(0, os.path.join(ROOT, "examples"))
        from cifar10 import CIFAR10DataModule, CIFARClassifier

        model = CIFARClassifier(depth=56, weights=WEIGHTS)
        data = CIFAR10DataModule(DATA, batch_size=100, val_size=5000, augment=False)
        budgets, fitness_batches, bn_batches = [0.3, 0.47], 5, 1
    callback = LeGRCallback(
        flops=budgets, search_flops=budgets, generations=args.generations, population=args.population,
        sample_size=args.sample_size, fitness_batches=fitness_batches, bn_batches=bn_batches, finetune_epochs=0,
        latency=False, dirpath=os.path.join(args.out, "legr"),
    )
    for name in ("run.json", "search_state.json", "transform.json", "budgets.json"):
        path = os.path.join(args.out, "legr", name)
        if os.path.exists(path) and int(os.environ.get("LOCAL_RANK", "0")) == 0:
            os.remove(path)  # every run of the benchmark searches from the start
    trainer = pl.Trainer(
        accelerator="cpu", devices=ranks, strategy="ddp" if ranks > 1 else "auto", max_epochs=0, callbacks=[callback],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=args.out,
    )
    trainer.fit(model, datamodule=data)
    mine = spent["evaluation"] - spent["batchnorm"]
    timing = {
        "rank": trainer.global_rank, "ranks": ranks, "search_seconds": search_time["seconds"],
        "generations": search_time["generations"], "prune": spent["prune"], "batchnorm": spent["batchnorm"],
        "evaluation": mine, "communication": workers[0].wait_seconds if workers else 0.0,
        "best_fitness": callback.transform.info["fitness"],
    }
    with open(os.path.join(args.out, f"timing{trainer.global_rank}.json"), "w") as f:
        json.dump(timing, f)
    return 0


def report(summaries, args) -> None:
    print(f"LeGR search under DDP on CPU, one thread per rank, {args.generations} generations"
          f" (population {args.population}){' [smoke]' if args.smoke else ''}")
    print("| ranks | search wall time | candidates/s | speed-up | per candidate: prune | BatchNorm | evaluation |"
          " communication |")
    print("|---|---|---|---|---|---|---|---|")
    base = None
    for ranks, timings in summaries.items():
        zero = timings[0]
        rate = zero["generations"] / zero["search_seconds"]
        base = base or rate
        # each rank evaluated generations / ranks candidates; times are per candidate evaluated on a rank
        per = zero["generations"] / ranks

        def ms(key):
            return f"{1000 * sum(t[key] for t in timings) / len(timings) / per:.0f} ms"

        print(f"| {ranks} | {zero['search_seconds']:.1f} s | {rate:.2f} | {rate / base:.2f}x | {ms('prune')} |"
              f" {ms('batchnorm')} | {ms('evaluation')} | {ms('communication')} |")
    print("best fitness: " + ", ".join(f"{r} rank(s) {t[0]['best_fitness']:.4f}" for r, t in summaries.items()))


if __name__ == "__main__":
    sys.exit(main())
