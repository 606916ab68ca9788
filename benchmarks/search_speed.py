"""How fast is the search? Today's code against the code before the faster search, side by side in one run.

The pretrained ResNet-56 (../shared) on CIFAR-10, searched through ``LeGRCallback`` as a user runs it
(``Trainer(max_epochs=0)``, tau = 0, two threads), in two settings:

- **paper**: one search budget at 47% of the FLOPs, fitness = loss on the 5,000 held-out training images
  at batch 128 (40 batches), no BatchNorm re-estimation. Runs: the old code (a git worktree of ``--old``,
  before the fast path, fitness reuse and early rejection existed); today's code with early rejection off
  (its candidates and fitnesses must be the old ones: same transform); today's code with early rejection.
- **benchmark**: the CIFAR-10 benchmark's default search: 500 held-out images at batch 100, the two search
  budgets 0.3 and 0.47, BatchNorm re-estimated on one batch of 100 training images per candidate. Today's
  code searches the whole ``--benchmark-whole`` (400) generations, the old code ``--benchmark-generations``
  (its rate: it has no cache, so its seconds per generation do not fall later in a search); beside them,
  in the same run, the time of training steps of the unpruned network, scaled to one epoch of the 45,000
  training images at batch 128, measured before and after each whole search (the machine drifts: each search
  is counted against the mean of the two epochs around it). Also the CIFAR-10 benchmark's own search in the
  same setting (``benchmarks/legr_cifar10.py``'s ``legr``: plain PyTorch, BatchNorm on 128 images, early
  rejection on chunks of 25), today's whole and the old code's first generations.

Targets (issue: a search that costs less than two epochs): paper setting at least 2.1x fewer seconds per
generation than the old code, with the same transform when early rejection is off; 400 generations of the
benchmark setting in at most two epochs' time. Early rejection must reach the same best fitness as the full
scoring within the spread of two seeds (seeds 0 and 1 of both; ``--quality 400``: whole searches too).

    python benchmarks/search_speed.py --quality 400   # 100-generation runs, then whole searches with and without
    python benchmarks/search_speed.py --seeds 0 --quality 400 --quality-seeds 0 1 --keep   # add seed 1's whole searches
    python benchmarks/search_speed.py --seeds 0       # the 100-generation runs of seed 0 only
    python benchmarks/search_speed.py --only benchmark   # the two-epoch target alone (about 40 min)
    python benchmarks/search_speed.py --only own         # the benchmark's own search alone (about 20 min)
    python benchmarks/search_speed.py --smoke         # the digits demo, seconds (used by the tests)

Run it on an idle machine: nothing else may use the cores while it times.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.join(ROOT, "..", "shared")
DATA = os.path.join(SHARED, "data", "cifar10-jpg.tar.xz")
WEIGHTS = os.path.join(SHARED, "weights", "resnet56-cifar10-jpg.pt")
OLD = "ab70892"  # main before the faster search (issue 12)
EPOCH_STEPS = 45000 / 128


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=100,
                        help="paper setting, timed: the old code and today's, as long (the mutation step anneals"
                             " over the run, so only equal lengths give the same candidates)")
    parser.add_argument("--benchmark-generations", type=int, default=60,
                        help="benchmark setting: the old code's run (its rate), and today's first generations")
    parser.add_argument("--benchmark-whole", type=int, default=400,
                        help="benchmark setting: today's whole search, timed against the two-epoch target")
    parser.add_argument("--only", choices=["paper", "benchmark", "callback", "own"], default=None,
                        help="one setting's runs only (benchmark: both its searches, callback or own: one of them)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every run (the machine's cores)")
    parser.add_argument("--train-steps", type=int, default=40, help="training steps timed for the epoch figure")
    parser.add_argument("--old", default=OLD, help="the commit to compare with")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="seeds of today's paper-setting runs, with and without early rejection (the old code: 0)")
    parser.add_argument("--quality", type=int, default=0, metavar="GENERATIONS",
                        help="also whole searches this long (e.g. 400), with and without early rejection")
    parser.add_argument("--quality-seeds", type=int, nargs="+", default=[0], help="seeds of the whole searches")
    parser.add_argument("--keep", action="store_true", help="reuse the result files of an earlier, interrupted run")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "search_speed"))
    parser.add_argument("--smoke", action="store_true", help="the digits demo and short searches, for the tests")
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)  # one run, in a process of its own
    parser.add_argument("--code", default=ROOT, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="", help=argparse.SUPPRESS)  # "old_": the run of the old code
    return parser.parse_args(argv)


# ---------------------------------------------------------------------- one run, in its own process
def run(args) -> int:
    sys.path.insert(0, args.code)
    sys.path.insert(0, os.path.join(args.code, "examples"))
    import torch

    from lightning_legr.core.search import LeGRSearch

    torch.set_num_threads(args.threads)
    setting, variant = args.run.split(":")
    if setting == "own":
        return own_search(args)
    if args.smoke:
        from lightning_legr.demos.digits import DigitsClassifier, DigitsDataModule

        torch.manual_seed(0)
        model = DigitsClassifier(width=8)
        data = DigitsDataModule(batch_size=16 if setting == "paper" else 64)
        budgets, batches, bn = ([0.47], 20, 0) if setting == "paper" else ([0.3, 0.47], 2, 1)
        population, sample_size = 8, 4
    else:
        from cifar10 import CIFAR10DataModule, CIFARClassifier

        model = CIFARClassifier(depth=56, weights=WEIGHTS)
        if setting == "paper":
            data, budgets, batches, bn = CIFAR10DataModule(DATA, batch_size=128, augment=False), [0.47], 40, 0
        else:
            data, budgets, batches, bn = CIFAR10DataModule(DATA, batch_size=100, augment=False), [0.3, 0.47], 5, 1
        population, sample_size = 64, 16
    out = os.path.join(args.out, args.tag + args.run.replace(":", "_") + f"_seed{args.seed}")
    if setting == "train":
        return time_training(args, model, out)
    timing = {}
    real_run = LeGRSearch.run

    def timed_run(self, on_generation=None):
        start = time.perf_counter()
        result = real_run(self, on_generation)
        timing.update(seconds=time.perf_counter() - start, generations=self.evolution.generation)
        timing["state"] = self.state_dict()
        return result

    LeGRSearch.run = timed_run
    try:
        return search(args, setting, variant, model, data, budgets, batches, bn, population, sample_size, out, timing)
    finally:
        LeGRSearch.run = real_run  # a smoke run in the driver's process leaves the class as it was


def search(args, setting, variant, model, data, budgets, batches, bn, population, sample_size, out, timing) -> int:
    import inspect

    import lightning.pytorch as pl

    from lightning_legr import LeGRCallback

    with tempfile.TemporaryDirectory(prefix="legr_speed_") as run_dir:  # the run's checkpoints: not kept
        options = dict(
            flops=budgets, search_flops=budgets, generations=args.generations, population=population,
            sample_size=sample_size, fitness_batches=batches, bn_batches=bn, finetune_epochs=0, latency=False,
            seed=args.seed, dirpath=os.path.join(run_dir, "legr"),
        )
        accepted = inspect.signature(LeGRCallback).parameters
        if "early_rejection" in accepted:  # today's code: its defaults, and early rejection as the variant says
            options["early_rejection"] = variant == "rejection"
        callback = LeGRCallback(**options)
        trainer = pl.Trainer(max_epochs=0, callbacks=[callback], accelerator="cpu", devices=1, logger=False,
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=run_dir)
        trainer.fit(model, datamodule=data)
    state = timing.pop("state")
    records = state.get("generations", [])
    evolution = state["evolution"]
    summary = dict(
        timing, run=args.run, seed=args.seed,
        best=evolution["best"]["fitness"], history=[h[0] for h in evolution["history"]],
        alpha=evolution["best"]["alpha"], kappa=evolution["best"]["kappa"],
        per_generation=[r["seconds"] for r in records] if records else None,
        cached=sum(1 for r in records if r.get("cached")),
        rejected=sum(1 for r in records if r.get("rejected") and not r.get("cached")),
        saved_images=sum(r.get("saved", 0.0) for r in records),
        fitness_images=sum(state.get("early_rejection", {}).get("sizes", [])),  # with early rejection
        notes=state.get("notes", {}),
    )
    with open(out + ".json", "w") as f:
        json.dump(summary, f)
    return 0


def own_search(args) -> int:
    """The CIFAR-10 benchmark's own ``legr`` search (``benchmarks/legr_cifar10.py`` of ``--code``, its defaults:
    500 held-out images, budgets 0.3 and 0.47, BatchNorm on 128 training images per candidate; today's code:
    the fast search, early rejection on chunks of 25 images)."""
    import inspect

    import torch

    sys.path.insert(0, os.path.join(args.code, "benchmarks"))
    import legr_cifar10 as bench

    train, val, _, _ = bench.load_data(args.smoke, os.path.join(HERE, "no-such-data") if args.smoke else DATA)
    model = bench.cifar_resnet(8 if args.smoke else 56, shortcut="A")
    if not args.smoke:
        model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True)["state_dict"])
    model.eval()
    population, sample_size = (8, 4) if args.smoke else (64, 16)
    fast = "fast_search" in inspect.signature(bench.legr_transform).parameters  # the old code has no fast search
    _, transform, seconds, history, *stats = bench.legr_transform(
        model, torch.zeros(1, 3, 32, 32), [0.3, 0.47], val.head(128 if args.smoke else 500), train, args.generations,
        population, sample_size, 0, None, 0, **({"fast_search": True} if fast else {}),
    )
    stats = stats[0] if stats else {}
    summary = dict(seconds=seconds, generations=len(history), run=args.run, seed=args.seed,
                   best=transform.info["fitness"], history=[h[0] for h in history],
                   cached=stats.get("cache_hits", 0), rejected=stats.get("rejections", 0),
                   saved_images=stats.get("saved_images", 0.0), forwarded_images=stats.get("forwarded_images"))
    with open(os.path.join(args.out, args.tag + "own_search" + f"_seed{args.seed}.json"), "w") as f:
        json.dump(summary, f)
    return 0


def time_training(args, model, out: str) -> int:
    """Seconds of ``--train-steps`` training steps of the unpruned network at batch 128, scaled to an epoch."""
    import lightning.pytorch as pl

    if args.smoke:
        from lightning_legr.demos.digits import DigitsDataModule

        data = DigitsDataModule(batch_size=128)
    else:
        from cifar10 import CIFAR10DataModule

        data = CIFAR10DataModule(DATA, batch_size=128)  # the example's training recipe: augmented batches
    trainer = pl.Trainer(max_steps=args.train_steps + 5, limit_val_batches=0, accelerator="cpu", devices=1,
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, default_root_dir=os.path.dirname(out))
    ticks = []

    class Clock(pl.Callback):
        def on_train_batch_end(self, *a, **k):
            ticks.append(time.perf_counter())

    trainer.callbacks.append(Clock())
    trainer.fit(model, datamodule=data)
    steps = ticks[5:]  # the first five warm up
    per_step = (steps[-1] - steps[0]) / (len(steps) - 1)
    with open(out + ".json", "w") as f:
        json.dump({"run": args.run, "per_step": per_step, "epoch": per_step * EPOCH_STEPS}, f)
    return 0


# ---------------------------------------------------------------------- the driver
def launch(args, name: str, code: str, generations: int, seed: int = 0, tag: str = "") -> Optional[subprocess.Popen]:
    """Start one run in a process of its own (the smoke mode runs it here, at once: it is today's code)."""
    options = ["--run", name, "--code", code, "--out", args.out, "--generations", str(generations), "--seed", str(seed),
               "--train-steps", str(args.train_steps), "--tag", tag, "--threads", str(args.threads)]
    options += ["--smoke"] if args.smoke else []
    print(f"  {name} ({'old code' if tag == 'old_' else 'today'}, seed {seed}, {generations} generations) ...", flush=True)
    if args.smoke:
        run(parse(options))
        return None
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=code)
    return subprocess.Popen([sys.executable, os.path.abspath(__file__)] + options, env=env, cwd=code,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait(process: Optional[subprocess.Popen], name: str) -> None:
    if process is None:
        return
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        print(stdout[-3000:], stderr[-5000:])
        raise SystemExit(f"the run {name} failed")


def result(args, name: str, seed: int = 0, tag: str = "") -> dict:
    with open(os.path.join(args.out, tag + name.replace(":", "_") + f"_seed{seed}.json")) as f:
        return json.load(f)


def old_tree(args) -> str:
    """A worktree of ``--old`` (today's tree in smoke mode: the tests compare the code with itself)."""
    if args.smoke:
        return ROOT
    path = os.path.join(tempfile.gettempdir(), f"legr_old_{args.old}")
    if not os.path.exists(path):
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", path, args.old], check=True,
                       capture_output=True)
    return path


def main(argv=None) -> int:
    args = parse(argv)
    if args.run is not None:
        return run(args)
    if args.smoke:
        args.generations, args.benchmark_generations, args.benchmark_whole, args.train_steps = 16, 10, 12, 6
        args.quality = 24 if args.quality else 0
        args.seeds = args.seeds[:1]
        with tempfile.TemporaryDirectory(prefix="legr_speed_smoke_") as smoke_dir:  # nothing left behind
            args.out = os.path.join(smoke_dir, "out")
            return compare(args)
    if not (os.path.exists(DATA) and os.path.exists(WEIGHTS)):
        raise SystemExit(f"needs {DATA} and {WEIGHTS} (or --smoke)")
    return compare(args)


def compare(args) -> int:
    """Every run of the plan, one at a time, then the report."""
    os.makedirs(args.out, exist_ok=True)
    old = old_tree(args)
    start = time.perf_counter()
    paper, callback, own = args.only in (None, "paper"), args.only in (None, "benchmark", "callback"), args.only in (
        None, "benchmark", "own")
    plan = []
    if paper:
        plan += [("paper:full", "old_", args.generations, 0)]
        plan += [(name, "", args.generations, seed) for seed in args.seeds for name in ("paper:full", "paper:rejection")]
    if callback or own:  # an epoch timed before and after each whole search: the machine drifts
        plan += [("train:steps", "", 0, 0)]
    if callback:
        plan += [("benchmark:full", "old_", args.benchmark_generations, 0), ("benchmark:full", "", args.benchmark_whole, 0),
                 ("train:steps", "mid_" if own else "after_", 0, 0)]
    if own:
        plan += [("own:search", "old_", args.benchmark_generations, 0), ("own:search", "", args.benchmark_whole, 0),
                 ("train:steps", "after_", 0, 0)]
    if paper:
        plan += [(name, "long_", args.quality, seed) for seed in (args.quality_seeds if args.quality else [])
                 for name in ("paper:full", "paper:rejection")]
    runs = {}
    for name, tag, generations, seed in plan:  # one at a time: they are timed
        key = f"{tag.rstrip('_') + ' ' if tag else ''}{name} seed {seed}"
        path = os.path.join(args.out, tag + name.replace(":", "_") + f"_seed{seed}.json")
        kept = args.keep and os.path.exists(path) and json.load(open(path)).get("generations", 0) == generations
        if not kept:
            wait(launch(args, name, old if tag == "old_" else ROOT, generations, seed=seed, tag=tag), key)
        runs[key] = dict(result(args, name, seed=seed, tag=tag), kept=kept)
    report(runs, args, time.perf_counter() - start)
    return 0


def mean(values):
    return sum(values) / len(values)


def report_paper(runs: dict, args) -> None:
    old = runs["old paper:full seed 0"]
    n = old["generations"]
    print(f"\nPaper setting: 5,000 images at batch 128, one budget 0.47, tau 0, {args.threads} threads")
    print(f"{'run':<44} {'gens':>5} {'search s':>9} {'s/gen':>7} {'speed-up':>9} {'cached':>7} {'rejected':>9} {'best':>8}")
    old_rate = old["seconds"] / n
    rows = [("old code", old)]
    for key, r in runs.items():
        if key.startswith(("paper:", "long paper:")):
            label = f"today, early rejection {'on' if 'rejection' in key else 'off'}, seed {r['seed']}"
            rows.append((label if key.startswith("paper") else label + " (whole)", r))
    rows = [(label + (" *" if r.get("kept") else ""), r) for label, r in rows]
    for label, r in rows:
        rate = r["seconds"] / r["generations"]
        print(f"{label:<44} {r['generations']:>5} {r['seconds']:>9.1f} {rate:>7.3f} {old_rate / rate:>8.2f}x"
              f" {r['cached']:>7} {r['rejected']:>9} {r['best']:>8.4f}")
    if any(r.get("kept") for _, r in rows):
        print("* kept from an earlier run (--keep): timed then, not side by side with the old code above")
    full = runs["paper:full seed 0"]
    same = max(abs(a - b) for a, b in zip(old["history"], full["history"]))
    alpha = max(abs(a - b) for a, b in zip(old["alpha"] + old["kappa"], full["alpha"] + full["kappa"]))
    print(f"early rejection off against the old code: largest fitness difference over the {n} candidates {same:.2e},"
          f" best transform's largest alpha/kappa difference {alpha:.1e} (0: the same transform)")
    for key, r in runs.items():
        if "rejection" in key:
            images = r["fitness_images"] * r["generations"]
            print(f"{key}: {r['rejected']} candidates stopped, {r['saved_images']:.0f} of {images:.0f} image"
                  f" evaluations saved ({r['saved_images'] / images:.0%})")
    whole = sorted(r["seed"] for k, r in runs.items() if k.startswith("long paper:full"))
    for seed in whole:
        full, cut = runs[f"long paper:full seed {seed}"], runs[f"long paper:rejection seed {seed}"]
        at = [i for i, (a, b) in enumerate(zip(full["history"], cut["history"])) if abs(a - b) > 1e-4]
        above = sum(cut["history"][i] > full["history"][i] for i in at)
        print(f"whole search, seed {seed} ({full['generations']} generations, the speed-ups against the old code's"
              f" rate above): best fitness {cut['best']:.5f} with early rejection, {full['best']:.5f} with full"
              f" scoring; {len(at)} of {full['generations']} recorded fitnesses differ by more than 1e-4"
              f" ({cut['rejected']} stopped, their repeats cached), {above} of them above the exact value (a bound"
              " must be under it)")
    if len(whole) > 1:
        best = [runs[f"long paper:full seed {s}"]["best"] for s in whole]
        gap = max(abs(runs[f"long paper:rejection seed {s}"]["best"] - runs[f"long paper:full seed {s}"]["best"])
                  for s in whole)
        print(f"whole searches, seeds {whole}: full scoring's best fitness spread {max(best) - min(best):.5f};"
              f" early rejection's largest difference from full scoring at the same seed {gap:.5f}")
    seeds = sorted({r["seed"] for k, r in runs.items() if k.startswith("paper:")})
    if len(seeds) > 1:
        full = [runs[f"paper:full seed {s}"]["best"] for s in seeds]
        rejection = [runs[f"paper:rejection seed {s}"]["best"] for s in seeds]
        print(f"best fitness after {n} generations, seeds {seeds}: full scoring {full} (spread"
              f" {max(full) - min(full):.4f}); early rejection {rejection} (largest difference from full scoring at"
              f" the same seed {max(abs(a - b) for a, b in zip(full, rejection)):.4f})")
    print(f"fast path: {json.dumps({k: v for k, v in runs['paper:full seed 0']['notes'].get('fast_path', {}).items()})}")


def epochs(seconds: float, before: dict, after: dict) -> str:
    """``seconds`` in epochs of the unpruned network: by the mean of the epochs timed around it, and by each."""
    epoch = (before["epoch"] + after["epoch"]) / 2
    return (f"{seconds / epoch:.2f} epochs (target: at most 2; {seconds / max(before['epoch'], after['epoch']):.2f} to"
            f" {seconds / min(before['epoch'], after['epoch']):.2f} by either epoch)")


def report_epoch(before: dict, after: dict) -> None:
    print(f"one epoch of the unpruned network: {before['epoch']:.0f} s before these searches, {after['epoch']:.0f} s after"
          f" ({before['per_step'] * 1000:.0f} and {after['per_step'] * 1000:.0f} ms per step of 128)")


def report_callback(runs: dict, before: dict, after: dict) -> None:
    bold, bnew = runs["old benchmark:full seed 0"], runs["benchmark:full seed 0"]
    n = bold["generations"]
    old_rate, first_rate = bold["seconds"] / n, mean(bnew["per_generation"][:n])
    whole, gens = bnew["seconds"], bnew["generations"]
    epoch = (before["epoch"] + after["epoch"]) / 2
    print("\nBenchmark setting through LeGRCallback: 500 images, budgets 0.3 and 0.47, BatchNorm on 100 images")
    print(f"first {n} generations: old code {old_rate:.3f} s/gen, today {first_rate:.3f} s/gen ({old_rate / first_rate:.2f}x)")
    report_epoch(before, after)
    print(f"today's whole search: {gens} generations in {whole:.0f} s ({whole / gens:.3f} s/gen, {bnew['cached']} cached)"
          f" = {epochs(whole, before, after)}; {gens} generations at the old code's rate: {gens * old_rate / epoch:.2f} epochs")
    print(f"fast path: {json.dumps(bnew['notes'].get('fast_path', {}))}")
    if bold.get("kept") or bnew.get("kept"):
        print("(kept from an earlier run, --keep: those searches were timed then, beside that run's epoch)")


def report_own(runs: dict, before: dict, after: dict) -> None:
    own_old, own = runs["old own:search seed 0"], runs["own:search seed 0"]
    old_rate, whole, gens = own_old["seconds"] / own_old["generations"], own["seconds"], own["generations"]
    epoch = (before["epoch"] + after["epoch"]) / 2
    print("\nThe CIFAR-10 benchmark's own search (benchmarks/legr_cifar10.py's legr: 500 images, budgets 0.3 and 0.47,"
          " BatchNorm on 128 images)")
    report_epoch(before, after)
    print(f"old code (its plain search): {old_rate:.3f} s/gen over {own_old['generations']} generations; today (the fast"
          f" search): {gens} generations in {whole:.0f} s ({whole / gens:.3f} s/gen; {own['cached']} cached,"
          f" {own['rejected']} stopped early, {own['forwarded_images']} images through the candidates)"
          f" = {epochs(whole, before, after)}; {gens} generations at the old code's rate: {gens * old_rate / epoch:.2f} epochs")
    recorded = os.path.join(HERE, "results", "cifar10_short_fast.json")  # the benchmark run of the accuracies
    if os.path.exists(recorded) and gens == 400 and len(own["history"]) == 400:
        with open(recorded) as f:
            earlier = json.load(f)["searches"]["legr"]
        gap = max(abs(a[0] - b) for a, b in zip(earlier["history"], own["history"]))
        print(f"against the search of the recorded accuracies ({os.path.relpath(recorded, ROOT)}): largest fitness"
              f" difference over the 400 candidates {gap:.2e}; best fitness {own['best']:.5f} here,"
              f" {earlier['transform']['info']['fitness']:.5f} there")


def report(runs: dict, args, wall: float) -> None:
    if args.only in (None, "paper"):
        report_paper(runs, args)
    before, after = runs.get("train:steps seed 0"), runs.get("after train:steps seed 0")
    middle = runs.get("mid train:steps seed 0", after)
    if "benchmark:full seed 0" in runs:
        report_callback(runs, before, middle)
    if "own:search seed 0" in runs:
        report_own(runs, middle if "benchmark:full seed 0" in runs else before, after)
    print(f"\nwall of the whole benchmark {wall / 60:.1f} min")


if __name__ == "__main__":
    sys.exit(main())
