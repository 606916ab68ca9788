"""Does the learned ranking beat the baselines? Pretrained ResNet-56 on CIFAR-10 (JPEG), one run.

For each FLOP budget it compares, under the same fine-tuning recipe and data split:

- ``legr``        LeGR with tau = 0 (the paper's CIFAR-10 setting), fitness averaged over the two smallest budgets;
- ``legr_tau``    LeGR with tau > 0 (SGD steps before each candidate's fitness), at the smallest budget;
- ``legr_paper``  (optional) LeGR exactly as the paper: tau = 0, the smallest budget, no recalibration;
- ``uniform``     the same share of every layer (by L2 norm within the layer);
- ``l2``          global ranking by squared L2 norm, without the affine transform (alpha = 1, kappa = 0);
- ``tp_global``   torch-pruning's own global magnitude pruner (MetaPruner, global_pruning=True);
- ``random``      random ranking.

Search and fitness use 5,000 images held out from the training set; fine-tuning uses the other 45,000;
the test set is only used for the reported accuracies. Every pruned network, of every method, first
gets its BatchNorm statistics recomputed on 512 training images (no weight changes), and LeGR does the
same for each candidate before scoring it (see docs/benchmarks.md for why).

    python benchmarks/legr_cifar10.py                 # the short recipe, on 2 CPU cores (see docs/benchmarks.md)
    python benchmarks/legr_cifar10.py --resume        # go on after an interruption, with the same arguments
    python benchmarks/legr_cifar10.py --latency benchmarks/results/cifar10_short.json  # re-time its networks side by side
    python benchmarks/legr_cifar10.py --recipe paper  # the paper-length fine-tuning, for a GPU
    python benchmarks/legr_cifar10.py --smoke         # minutes -> seconds; generated data without ../shared
"""

import argparse
import copy
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "examples"))

from cifar10 import BatchTransform, load_image_folder  # noqa: E402

from lightning_legr import LeGRPruner, LeGRSearch, Transform, count_flops, count_params  # noqa: E402
from lightning_legr.core._io import write_json  # noqa: E402
from lightning_legr.core.calibration import recalibrate_batchnorm  # noqa: E402
from lightning_legr.core.fastpath import FastPath  # noqa: E402
from lightning_legr.core.rejection import EarlyRejection  # noqa: E402
from lightning_legr.models import cifar_resnet  # noqa: E402
from lightning_legr.report import measure_latencies  # noqa: E402
from lightning_legr.core.shortcuts import ZeroPadShortcut, ZeroPadShortcutPruner  # noqa: E402

SHARED = os.path.join(ROOT, "..", "shared")
DATA = os.path.join(SHARED, "data", "cifar10-jpg.tar.xz")
WEIGHTS = os.path.join(SHARED, "weights", "resnet56-cifar10-jpg.pt")
METHODS = ("legr", "legr_tau", "uniform", "l2", "tp_global", "random")
OPTIONAL = ("legr_paper",)


@dataclass
class Recipe:
    """Fine-tuning: SGD with Nesterov momentum 0.9, weight decay 5e-4, batch 128.

    ``distill > 0`` mixes in knowledge distillation from the unpruned network (temperature 4), with
    its logits computed once on the un-augmented training images; then no augmentation is used, so
    the teacher's targets match. ``distill = 0`` is plain cross-entropy with the standard augmentation.
    """

    epochs: float
    lr: float
    schedule: str  # "cosine" or "multistep" (x0.2 at 30%, 60%, 80%, as the paper's code)
    distill: float = 0.0
    weight_decay: float = 5e-4
    batch_size: int = 128


RECIPES = {
    "short": Recipe(epochs=1.0, lr=0.02, schedule="cosine", distill=0.9),
    "paper": Recipe(epochs=400, lr=0.01, schedule="multistep"),
}
BN_IMAGES = 512  # training images that re-estimate a pruned network's BatchNorm statistics
SEARCH_BN_IMAGES = 128  # the same, for each search candidate (cheaper)
FORWARD_IMAGES = 100  # images per forward pass of a fast-search candidate: on 2 CPU cores a pruned ResNet-56 scores
# an image 1.0-1.7 ms at batch 100 against 1.7-2.2 ms at 25 (the chunks are reported from per-image losses)


# ---------------------------------------------------------------------- data
class Split:
    """uint8 NHWC images and labels, served as normalized float batches."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> "Split":
        return Split(self.images[:n].numpy(), self.labels[:n].numpy())

    def batches(self, size: int, augment: bool = False, generator: Optional[torch.Generator] = None):
        order = torch.randperm(len(self), generator=generator) if generator is not None else torch.arange(len(self))
        collate = BatchTransform(augment=augment)
        for start in range(0, len(self), size):
            rows = order[start : start + size]
            yield collate((self.images[rows], self.labels[rows]))


def load_data(smoke: bool, data_path: str) -> Tuple[Split, Split, Split, str]:
    """train (45k), val (5k held out from train, seed 0), test (10k)."""
    if os.path.exists(data_path):
        train_x, train_y = load_image_folder(data_path, "train")
        test_x, test_y = load_image_folder(data_path, "test")
        source = "CIFAR-10 JPEG (../shared/data)"
    else:
        if not smoke:
            raise SystemExit(f"No data at {data_path}: give --data, or use --smoke for generated data.")
        rng = np.random.default_rng(0)
        train_x, train_y = rng.integers(0, 256, (1200, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 1200)
        test_x, test_y = rng.integers(0, 256, (400, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 400)
        source = "generated random images (../shared absent)"
    order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(0)).numpy()
    held_out = min(5000, len(train_y) // 6)
    val, train = order[:held_out], order[held_out:]
    splits = Split(train_x[train], train_y[train]), Split(train_x[val], train_y[val]), Split(test_x, test_y)
    if smoke:
        shuffled = np.random.default_rng(0).permutation(len(test_y))[:256]  # the test set is sorted by class
        splits = splits[0].head(512), splits[1].head(256), Split(test_x[shuffled], test_y[shuffled])
    return (*splits, source)


# ---------------------------------------------------------------------- training and evaluation
def evaluate(model: nn.Module, split: Split, batch_size: int = 500) -> Tuple[float, float]:
    """(mean cross-entropy, accuracy %) in eval mode."""
    model.to(memory_format=torch.channels_last).eval()  # faster inference on this CPU (outside inference mode,
    with torch.inference_mode():  # which would turn the converted parameters into inference tensors)
        return _evaluate(model, split, batch_size)


def _evaluate(model: nn.Module, split: Split, batch_size: int) -> Tuple[float, float]:
    loss, correct = 0.0, 0
    for x, y in split.batches(batch_size):
        logits = model(x.contiguous(memory_format=torch.channels_last))
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return loss / len(split), 100.0 * correct / len(split)


def sgd_steps(model: nn.Module, split: Split, steps: int, lr: float, batch_size: int, seed: int,
              schedule: str = "constant", weight_decay: float = 5e-4, teacher: Optional[torch.Tensor] = None,
              distill: float = 0.0) -> None:
    """``steps`` SGD steps (Nesterov, momentum 0.9); augmented batches unless distilling from ``teacher``
    (logits of every image of ``split``, un-augmented)."""
    model.to(memory_format=torch.channels_last).train()  # about 15% faster on this CPU
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    if schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps))
    elif schedule == "multistep":
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [int(steps * f) for f in (0.3, 0.6, 0.8)], 0.2)
    else:
        scheduler = None
    generator = torch.Generator().manual_seed(seed)
    collate = BatchTransform(augment=teacher is None)
    done = 0
    while done < steps:
        order = torch.randperm(len(split), generator=generator)
        for start in range(0, len(split), batch_size):
            rows = order[start : start + batch_size]
            x, y = collate((split.images[rows], split.labels[rows]))
            logits = model(x.contiguous(memory_format=torch.channels_last))
            loss = F.cross_entropy(logits, y)
            if teacher is not None and distill > 0:
                soft = F.kl_div(F.log_softmax(logits / 4, 1), F.softmax(teacher[rows] / 4, 1), reduction="batchmean")
                loss = (1 - distill) * loss + distill * 16 * soft
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            done += 1
            if done == steps:
                break
    model.to(memory_format=torch.contiguous_format).eval()


def finetune(model: nn.Module, train: Split, recipe: Recipe, seed: int, teacher: Optional[torch.Tensor]) -> float:
    steps = max(1, int(round(recipe.epochs * len(train) / recipe.batch_size)))
    start = time.perf_counter()
    sgd_steps(model, train, steps, recipe.lr, recipe.batch_size, seed, recipe.schedule, recipe.weight_decay,
              teacher if recipe.distill > 0 else None, recipe.distill)
    return time.perf_counter() - start


@torch.inference_mode()
def logits_of(model: nn.Module, split: Split) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x) for x, _ in split.batches(500)])


def recalibrate(model: nn.Module, train: Split, images: int = BN_IMAGES) -> nn.Module:
    """BatchNorm statistics from the first ``images`` training images (a fixed set: deterministic)."""
    recalibrate_batchnorm(model, (x for x, _ in train.head(images).batches(256)))
    return model


# ---------------------------------------------------------------------- methods
def fitness_function(val: Split, train: Split, tau: int, tau_lr: float, seed: int,
                     bn_images: int = SEARCH_BN_IMAGES, fast: Optional[FastPath] = None,
                     chunk: Optional[int] = None) -> Callable[[nn.Module], float]:
    """Validation loss of a candidate: BatchNorm recalibrated (unless bn_images = 0), then ``tau`` SGD
    steps (batch 64) if tau > 0, after which the statistics are recalibrated again: training updates
    them with momentum 0.1, so after a few steps they mix the old network's and the new one's.

    The fast search (tau = 0): ``fast`` prepares the recalibrated candidate (BatchNorm folded, channels_last;
    the same numbers to 1e-5) and ``chunk`` scores it in chunks of that many images, each reported to the
    search (``fitness.search.observe``) so that early rejection can stop it. The images go through the
    network in batches of whole chunks, about ``FORWARD_IMAGES`` at a time (``fitness.forwarded`` counts
    them: a candidate stopped inside a batch was computed to its end)."""
    counter = {"n": 0}

    def fitness(pruned: nn.Module) -> float:
        if bn_images:
            recalibrate(pruned, train, bn_images)
        if tau > 0:
            counter["n"] += 1
            sgd_steps(pruned, train, tau, tau_lr, 64, seed + counter["n"])
            if bn_images:
                recalibrate(pruned, train, bn_images)
        if fast is None:
            return evaluate(pruned, val)[0]
        pruned.eval()
        if fast.decision is None:  # decided once, on a throw-away copy of the first candidate
            fast.decide(copy.deepcopy(pruned), next(val.batches(chunk or 500))[0])
        fast.prepare(pruned)
        layout = torch.channels_last if fast.decision["memory_format"] == "channels_last" else torch.contiguous_format
        step = chunk or len(val)
        total, seen = 0.0, 0
        with torch.inference_mode():
            for x, y in val.batches(step * max(1, FORWARD_IMAGES // step)):
                losses = F.cross_entropy(pruned(x.contiguous(memory_format=layout)), y, reduction="none")
                fitness.forwarded += len(y)
                for part in losses.split(step):
                    loss = part.sum().item()
                    total, seen = total + loss, seen + len(part)
                    if fitness.search is not None and fitness.search.observe(loss / len(part), len(part)):
                        return total / seen  # stopped early: the search records its bound instead
        return total / seen

    fitness.search, fitness.forwarded = None, 0
    return fitness


def legr_transform(model, x, search_budgets, val, train, generations, population, sample_size, tau, tau_lr, seed,
                   bn_images=SEARCH_BN_IMAGES, state_path=None, fast_search=False, chunk=25):
    """The learned transform. ``fast_search`` (tau = 0 only): the library's faster search, exact fitness reuse,
    the evaluation fast path, and early rejection on chunks of ``chunk`` held-out images."""
    pruner = LeGRPruner(model, x)
    fast = fast_search and tau == 0
    fitness = fitness_function(val, train, tau, tau_lr, seed, bn_images, FastPath("channels_last") if fast else None,
                               chunk if fast else None)
    rejection = EarlyRejection([min(chunk, len(val) - i) for i in range(0, len(val), chunk)]) if fast else None
    search = LeGRSearch(
        pruner, fitness, search_budgets, state_path=state_path,
        generations=generations, population=min(population, generations),
        sample_size=min(sample_size, population, generations),
        seed=seed, reuse_fitness=fast, early_rejection=rejection,
    )
    fitness.search = search
    start = time.perf_counter()

    def progress(gen):
        if (gen.generation + 1) % 50 == 0:
            print(f"  generation {gen.generation + 1}/{generations}: best fitness {gen.best_fitness:.4f},"
                  f" {time.perf_counter() - start:.0f} s", flush=True)

    transform = search.run(progress)
    stats = dict(cache_hits=search.cache_hits, rejections=search.rejections, saved_images=search.saved,
                 forwarded_images=fitness.forwarded) if fast else {}
    return pruner, transform, time.perf_counter() - start, search.evolution.history, stats


def tp_global(model: nn.Module, x: torch.Tensor, budget: float) -> nn.Module:
    """torch-pruning's global magnitude pruning, pruning ratio bisected to the FLOP budget."""
    total = count_flops(model, x)
    low, high, best = 0.0, 0.9, None
    for _ in range(14):
        ratio = (low + high) / 2
        candidate = copy.deepcopy(model)
        pruner = tp.pruner.MetaPruner(
            candidate, x, importance=tp.importance.MagnitudeImportance(p=2), global_pruning=True,
            pruning_ratio=ratio, max_pruning_ratio=0.9, ignored_layers=[candidate.linear],
            customized_pruners={ZeroPadShortcut: ZeroPadShortcutPruner()},
        )
        pruner.step()
        if count_flops(candidate, x) <= budget * total:
            best, high = candidate, ratio
        else:
            low = ratio
    if best is None:
        raise RuntimeError(f"torch-pruning could not reach {budget} of the FLOPs")
    return best


# ---------------------------------------------------------------------- the run
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--weights", default=WEIGHTS)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.7, 0.47, 0.3])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS + OPTIONAL)
    parser.add_argument("--recipe", default="short", choices=sorted(RECIPES))
    parser.add_argument("--epochs", type=float, help="override the recipe's epochs")
    parser.add_argument("--lr", type=float, help="override the recipe's learning rate")
    parser.add_argument("--seeds", type=int, default=1, help="fine-tuning seeds per method and budget")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true",
                        help="go on with the results file of an interrupted run (same arguments): keep its rows")
    parser.add_argument("--transforms-from", help="results JSON of an earlier run: reuse its learned transforms")
    parser.add_argument("--latency", metavar="JSON",
                        help="measure again the latency of every network of a results file, side by side (no training)")
    parser.add_argument("--repeats", type=int, default=5, help="with --latency: rounds over all the networks")
    parser.add_argument("--merge", nargs="+", help="results JSON files to merge into one table (no training)")
    parser.add_argument("--generations", type=int, default=400, help="LeGR tau=0 search length")
    parser.add_argument("--search-flops", type=float, nargs="+",
                        help="budgets whose mean fitness scores a legr candidate (default: the two smallest)")
    parser.add_argument("--fitness-images", type=int, default=500, help="held-out images scoring a candidate")
    parser.add_argument("--search", choices=["fast", "plain"], default="fast",
                        help="tau = 0 searches: 'fast' (fitness reuse, BatchNorm folded, early rejection on chunks of"
                             " --chunk images) or 'plain' (every candidate scored in full at batch 500, as before)")
    parser.add_argument("--chunk", type=int, default=25, help="held-out images per chunk of the fast search")
    parser.add_argument("--tau", type=int, default=20, help="SGD steps (batch 64) per candidate for legr_tau")
    parser.add_argument("--tau-lr", type=float, default=0.003)
    parser.add_argument("--tau-generations", type=int, default=40, help="legr_tau search length")
    parser.add_argument("--tau-population", type=int, default=10, help="legr_tau population (tournament: a third)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--plot", default=None, help="PNG of test accuracy against FLOPs")
    parser.add_argument("--name", default=None, help="results file name (default cifar10_<recipe>)")
    parser.add_argument("--smoke", action="store_true", help="tiny everything, for the tests")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.budgets, args.plot)
    if args.latency:
        return remeasure_latency(args.latency, args.weights, args.repeats)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    recipe = RECIPES[args.recipe]
    recipe = Recipe(args.epochs or recipe.epochs, args.lr or recipe.lr, recipe.schedule, recipe.distill)
    if args.smoke:
        args.generations, args.tau_generations, args.tau, args.fitness_images = 4, 3, 2, 128
        args.tau_population = 2
        recipe = Recipe(epochs=0.25, lr=0.02, schedule="cosine", distill=0.9)
    search_flops = args.search_flops or sorted(args.budgets)[:2]
    depth = 8 if args.smoke else 56
    settings = dict(depth=depth, budgets=args.budgets, generations=args.generations, search_flops=search_flops,
                    fitness_images=args.fitness_images, search_bn_images=SEARCH_BN_IMAGES, tau=args.tau,
                    **({"search": "fast", "chunk": args.chunk} if args.search == "fast" else {}),
                    tau_lr=args.tau_lr, tau_generations=args.tau_generations, tau_population=args.tau_population)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{args.name or ('smoke' if args.smoke else f'cifar10_{args.recipe}')}.json")
    done = None
    if args.resume and os.path.exists(path):  # an interrupted run: keep its searches and fine-tuned rows
        with open(path) as f:
            done = json.load(f)
        if done["recipe"] != recipe.__dict__ or {"depth": 56, **done["settings"]} != settings:
            raise SystemExit(f"--resume: {path} was made with other settings ({done['settings']}, recipe"
                             f" {done['recipe']}); give the same arguments, or another --name.")

    started = time.perf_counter()

    train, val, test, source = load_data(args.smoke, args.data)
    fitness_val = val.head(args.fitness_images)
    model = cifar_resnet(depth, shortcut="A")
    if os.path.exists(args.weights) and not args.smoke:
        model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True)["state_dict"])
    model.eval()
    x = torch.zeros(1, 3, 32, 32)
    base_flops, base_params = count_flops(model, x), count_params(model)
    base_latency = latency_of(model, x, args.smoke)  # before evaluate(), which leaves the weights channels-last
    base_loss, base_acc = evaluate(model, test)
    print(f"data: {source}; train {len(train)}, held-out {len(val)} (fitness uses {len(fitness_val)}), test {len(test)}")
    print(f"unpruned: {base_flops / 1e6:.2f} MFLOPs, {base_params / 1e3:.1f}K params, test acc {base_acc:.2f}%")
    rows = [dict(method="unpruned", budget=1.0, seed=0, flops=base_flops, params=base_params, acc_pruned=base_acc,
                 acc_tuned=base_acc, latency_b1_ms=base_latency[0], latency_b64_ms=base_latency[1], search_s=0.0,
                 finetune_s=0.0)]
    searches: Dict[str, dict] = {}
    earlier_wall = 0.0
    if done is not None:
        rows, searches, earlier_wall = done["rows"], done["searches"], done["wall_s"]
        print(f"resuming {path}: {len(rows) - 1} fine-tuned rows, searches {sorted(searches)}", flush=True)

    def save(complete: bool) -> None:
        """The record so far, written atomically after every search and every fine-tuned network."""
        record = dict(
            command=" ".join(["python", "benchmarks/legr_cifar10.py", *(argv if argv is not None else sys.argv[1:])]),
            machine=f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
            versions={name: metadata.version(name) for name in ("torch", "torch-pruning", "numpy", "ptflops")},
            data=source, recipe=recipe.__dict__, wall_s=earlier_wall + time.perf_counter() - started, rows=rows,
            summary=summarize(rows, args.budgets), searches=searches, settings=settings, complete=complete,
        )
        write_json(path, record)

    earlier = {}
    if args.transforms_from:
        with open(args.transforms_from) as f:
            earlier = json.load(f)["searches"]
    tau_sample = max(1, args.tau_population // 3)
    legr_settings = {  # method: (search budgets, generations, population, tournament, tau, BatchNorm images per candidate)
        "legr": (search_flops, args.generations, 64, 16, 0, SEARCH_BN_IMAGES),
        "legr_tau": (min(args.budgets), args.tau_generations, args.tau_population, tau_sample, args.tau, SEARCH_BN_IMAGES),
        "legr_paper": (min(args.budgets), args.generations, 64, 16, 0, 0),
    }

    def pruning_for(method: str) -> Callable[[float], nn.Module]:
        """budget -> pruned network; a LeGR method searches first (or reuses an earlier run's transform)."""
        if method == "tp_global":
            return lambda b: tp_global(model, x, b)
        if method not in legr_settings:
            return lambda b, p=LeGRPruner(model, x, criterion=method): p.prune(b)
        if method not in searches and method in earlier:
            searches[method] = dict(earlier[method], reused_from=args.transforms_from)
            print(f"{method}: transform from {args.transforms_from}", flush=True)
        if method in searches:
            return lambda b, p=LeGRPruner(model, x), t=Transform.from_dict(searches[method]["transform"]): p.prune(b, t)
        search_budgets, generations, population, sample_size, tau, bn_images = legr_settings[method]
        state = f"{path[:-len('.json')]}.{method}-search.json"  # the search's own state: resumes mid-search
        if os.path.exists(state) and not args.resume:
            os.remove(state)
        resumed = os.path.exists(state)
        pruner, transform, seconds, history, stats = legr_transform(
            model, x, search_budgets, fitness_val, train, generations, population, sample_size, tau, args.tau_lr, 0,
            bn_images, state, fast_search=args.search == "fast", chunk=args.chunk)
        searches[method] = dict(seconds=seconds, generations=generations, population=population, tau=tau,
                                search_flops=search_budgets, bn_images=bn_images, history=history,
                                transform=transform.to_dict(), **stats)
        if resumed:  # then seconds counts this process's part of the search only
            searches[method]["resumed_mid_search"] = True
        save(complete=False)
        os.remove(state)
        print(f"{method} search (tau={tau}, {generations} generations, budgets {search_budgets}): {seconds / 60:.1f} min,"
              f" best fitness {transform.info['fitness']:.4f}"
              + (f"; {stats['cache_hits']} cached, {stats['rejections']} stopped early,"
                 f" {stats['saved_images']:.0f} image evaluations saved ({stats['forwarded_images']} images through"
                 " the candidates)" if stats else ""), flush=True)
        return lambda b: pruner.prune(b, transform)

    teacher = logits_of(model, train) if recipe.distill > 0 else None
    for method in args.methods:  # in the order given: each LeGR search runs just before its fine-tuning
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        todo = [(b, s) for b in args.budgets for s in seeds
                if not any(r["method"] == method and r["budget"] == b and r["seed"] == s for r in rows)]
        if not todo:
            continue
        prune_to = pruning_for(method)
        for budget in dict.fromkeys(b for b, _ in todo):
            pruned = recalibrate(prune_to(budget), train)
            flops, latency = count_flops(pruned, x), latency_of(pruned, x, args.smoke)
            _, acc_pruned = evaluate(pruned, test)
            for seed in [s for b, s in todo if b == budget]:
                tuned = copy.deepcopy(pruned)
                seconds = finetune(tuned, train, recipe, seed, teacher)
                _, acc_tuned = evaluate(tuned, test)
                rows.append(dict(
                    method=method, budget=budget, seed=seed, flops=flops, params=count_params(pruned),
                    acc_pruned=acc_pruned, acc_tuned=acc_tuned, latency_b1_ms=latency[0], latency_b64_ms=latency[1],
                    search_s=searches.get(method, {}).get("seconds", 0.0), finetune_s=seconds,
                ))
                save(complete=False)
                print(f"{method:>9} @ {budget:.2f}: {flops / base_flops:6.1%} FLOPs, {count_params(pruned) / 1e3:6.1f}K"
                      f" params, test acc {acc_pruned:6.2f}% pruned -> {acc_tuned:6.2f}% tuned (seed {seed},"
                      f" {seconds:.0f} s)", flush=True)

    save(complete=True)
    wall = earlier_wall + time.perf_counter() - started
    summary = summarize(rows, args.budgets)
    print("\n" + markdown_table(summary, base_acc))
    search_s = sum(v["seconds"] for v in searches.values() if "reused_from" not in v)
    finetune_s = sum(r["finetune_s"] for r in rows)
    print(f"\nwall time {wall / 60:.1f} min: searches {search_s / 60:.1f}, fine-tuning {finetune_s / 60:.1f},"
          f" the rest (data, teacher logits, evaluation, latency) {(wall - search_s - finetune_s) / 60:.1f}")
    if args.plot:
        plot(summary, base_flops, base_acc, args.plot)
    return 0


def latency_of(model: nn.Module, x: torch.Tensor, smoke: bool = False) -> Tuple[float, float]:
    """Median CPU forward time in ms at batch 1 and 64 (one thread, contiguous layout, three rounds; in smoke
    mode two short ones: the figures only need to exist)."""
    timing = dict(rounds=2, min_run_time=0.005, warmup=0.005) if smoke else dict(rounds=3)
    times = measure_latencies({"model": model}, x, (1, 64), threads=1, **timing)["model"]
    return times[1].median_ms, times[64].median_ms


def remeasure_latency(path: str, weights: str, repeats: int) -> int:
    """Rebuild every pruned network of a results file (LeGR from its recorded transforms) and time them
    in rounds, each round over all of them, so that a slow spell of the machine hits every network
    alike; the median over rounds replaces the recorded latency."""
    with open(path) as f:
        record = json.load(f)
    depth = record["settings"].get("depth", 56)
    torch.manual_seed(0)  # as main(): the smoke mode's ResNet-8 keeps its initial weights
    model = cifar_resnet(depth, shortcut="A")
    if depth == 56:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True)["state_dict"])
    model.eval()
    x = torch.zeros(1, 3, 32, 32)
    pruners: Dict[str, LeGRPruner] = {}
    networks = {}
    for row in record["rows"]:
        method, budget = row["method"], row["budget"]
        if (method, budget) in networks:
            continue
        if method == "unpruned":
            networks[method, budget] = model
        elif method == "tp_global":
            networks[method, budget] = tp_global(model, x, budget)
        else:
            search = record["searches"].get(method)
            criterion = "l2" if search else method
            if criterion not in pruners:
                pruners[criterion] = LeGRPruner(model, x, criterion=criterion)
            pruner = pruners[criterion]
            networks[method, budget] = pruner.prune(budget, Transform.from_dict(search["transform"]) if search else None)
        if count_params(networks[method, budget]) != row["params"]:
            raise SystemExit(f"--latency: {method} at {budget} rebuilds to another network than {path} records.")
    times = measure_latencies(networks, x, (1, 64), threads=1, rounds=repeats)
    for row in record["rows"]:
        measured = times[row["method"], row["budget"]]
        row["latency_b1_ms"], row["latency_b64_ms"] = measured[1].median_ms, measured[64].median_ms
        row["latency_b1_iqr_ms"], row["latency_b64_iqr_ms"] = measured[1].iqr_ms, measured[64].iqr_ms
    record["summary"] = summarize(record["rows"], record["settings"]["budgets"])
    record["latency"] = (
        f"measured again by --latency: torch.utils.benchmark, 1 thread, median of {repeats} rounds over all the networks"
    )
    write_json(path, record)
    print(markdown_table(record["summary"], record["rows"][0]["acc_tuned"]))
    return 0


def merge(paths: List[str], budgets: List[float], plot_path: Optional[str]) -> int:
    """One table from several runs (e.g. one per fine-tuning seed): latency and search time of the first."""
    records = []
    for path in paths:
        with open(path) as f:
            records.append(json.load(f))
    base = records[0]["rows"][0]
    rows = [base] + [r for record in records for r in record["rows"] if r["method"] != "unpruned"]
    summary = summarize(rows, budgets)
    print(markdown_table(summary, base["acc_tuned"]))
    if plot_path:
        plot(summary, base["flops"], base["acc_tuned"], plot_path)
    return 0


def summarize(rows: List[dict], budgets: List[float]) -> List[dict]:
    """Mean and spread over seeds, per method and budget."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "unpruned"):
        for budget in budgets:
            group = [r for r in rows if r["method"] == method and r["budget"] == budget]
            if not group:
                continue
            tuned = [r["acc_tuned"] for r in group]
            first = group[0]
            out.append(dict(
                method=method, budget=budget, flops=first["flops"], params=first["params"],
                acc_pruned=first["acc_pruned"], acc_tuned=float(np.mean(tuned)),
                acc_tuned_std=float(np.std(tuned)) if len(tuned) > 1 else None, seeds=len(tuned),
                latency_b1_ms=first["latency_b1_ms"], latency_b64_ms=first["latency_b64_ms"],
                search_s=first["search_s"],
            ))
    return out


def markdown_table(summary: List[dict], base_acc: float) -> str:
    lines = [
        "| budget | method | MFLOPs | params (K) | test acc pruned | test acc fine-tuned | vs unpruned | ms @1 | ms @64 | search |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(summary, key=lambda r: (-r["budget"], r["method"])):
        spread = f" ± {r['acc_tuned_std']:.2f}" if r["acc_tuned_std"] is not None else ""
        search = f"{r['search_s'] / 60:.1f} min" if r["search_s"] else "-"
        lines.append(
            f"| {r['budget']:.2f} | {r['method']} | {r['flops'] / 1e6:.2f} | {r['params'] / 1e3:.1f} |"
            f" {r['acc_pruned']:.2f} | {r['acc_tuned']:.2f}{spread} | {r['acc_tuned'] - base_acc:+.2f} |"
            f" {_ms(r['latency_b1_ms'], 2)} | {_ms(r['latency_b64_ms'], 1)} | {search} |"
        )
    return "\n".join(lines)


def _ms(value: Optional[float], digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def plot(summary: List[dict], base_flops: float, base_acc: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(r["method"] for r in summary):
        points = sorted((r["flops"] / 1e6, r["acc_tuned"], r["acc_tuned_std"] or 0) for r in summary if r["method"] == method)
        xs, ys, errs = zip(*points)
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=method, linewidth=2 if method.startswith("legr") else 1)
    ax.plot(base_flops / 1e6, base_acc, "k*", markersize=12, label="unpruned")
    ax.set_xlabel("MFLOPs (MACs, ptflops)")
    ax.set_ylabel("test accuracy after fine-tuning (%)")
    ax.set_title("ResNet-56 on CIFAR-10 (JPEG): LeGR and baselines, same fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
