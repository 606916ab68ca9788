"""LeGRCallback: after pretraining, learn a global filter ranking and fine-tune one model per FLOP budget."""

import contextlib
import copy
import glob
import math
import os
import signal
from typing import Any, Dict, Iterator, List, Optional, Union

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from tqdm.auto import tqdm

from lightning_legr.core._io import read_json, write_json
from lightning_legr.checkpoint import save_module_checkpoint
from lightning_legr.companion import (
    CANDIDATE_STREAM, DataSources, Evaluator, batch_inputs, derive_seed, finetune, missing_metric_message, seeded,
)
from lightning_legr.core.criteria import CRITERIA
from lightning_legr.core.evolution import RegularizedEvolution
from lightning_legr.core.flops import count_flops, count_params
from lightning_legr.core.pruner import LeGRPruner
from lightning_legr.report import format_table, measure_latency, plot_metric, plot_widths, write_results
from lightning_legr.core.search import Generation, LeGRSearch, check_budgets
from lightning_legr.core.structure import map_tensors
from lightning_legr.core.transform import Transform

__all__ = ["LeGRCallback"]

RUN_FILE = "run.json"
BASE_CKPT = "base.ckpt"
STATE_FILE = "search_state.json"
TRANSFORM_FILE = "transform.json"
PRUNED_CKPT = "pruned.ckpt"


class LeGRCallback(Callback):
    r"""Compress the model with LeGR when ``trainer.fit`` ends: one search, one model per budget.

    When fit ends (pretraining done), the callback

    1. learns the per-group affine transform of the global filter ranking by regularized evolution:
       each candidate is the module pruned to ``search_flops``, optionally trained ``tau`` steps on
       the module's training data, and scored by ``monitor`` from the module's own
       ``validation_step`` on ``fitness_batches`` validation batches;
    2. for every budget in ``flops``, prunes a copy with the best transform, saves it as
       ``dirpath/flops_<budget>/pruned.ckpt`` and fine-tunes it for ``finetune_epochs`` in a fresh
       Trainer (same accelerator, device, precision and loggers), keeping the best checkpoint by
       ``monitor`` in ``dirpath/flops_<budget>/best.ckpt``. If the pruned model scores better than
       every fine-tuned epoch, a warning says so and its row of the results points to ``pruned.ckpt``
       (``metric_after`` stays the fine-tuned score);
    3. prints a results table and writes ``results.csv``, ``results.json``, ``metric_vs_flops.png``
       and ``widths_<budget>.png`` in ``dirpath``.

    Everything is resumable: the search state is saved every generation, finished budgets are kept,
    and an interrupted fine-tune resumes from its ``last.ckpt``. Run the same command again with the
    same ``dirpath``: the pretrained model is taken from ``dirpath/base.ckpt`` and pretraining is
    skipped. A ``dirpath`` holding another run's settings (or another LightningModule class) is refused.
    A resumed search scores every candidate as the uninterrupted one would: the BatchNorm batches
    and each candidate's ``tau`` batches are drawn under seeds derived from ``seed``, in a forked
    random state that leaves your global one as it was.

    Args:
        flops: FLOP budgets, fractions of the original FLOPs in (0, 1], e.g. ``[0.3, 0.5, 0.7]``.
        generations: candidates evaluated by the search, the initial population included.
        population: population size of the regularized evolution.
        sample_size: tournament size.
        mutation_rate: share of channel groups mutated in each child.
        sigma: standard deviation of the log-scale mutations of alpha.
        tau: training steps given to each candidate before it is scored (0 in the paper for
            CIFAR-10 ResNet-56, 200 elsewhere).
        tau_lr: learning rate of the plain SGD used for those steps; ``None`` uses the module's own
            ``configure_optimizers``.
        safeguard: share of every channel group always kept (at least one channel).
        criterion: base filter importance: ``"l2"`` (squared L2 norm, the paper's), ``"l1"`` or ``"bn"``
            (BatchNorm ``|gamma|``); ``"random"`` and ``"uniform"`` are baselines for comparisons.
        round_to: keep every group's width a multiple of this (1: no rounding).
        search_flops: the budget candidates are pruned to; default the smallest of ``flops``, as in
            the paper. A list scores each candidate by its mean fitness over those budgets, which
            keeps the ranking good at all of them when the smallest one leaves every candidate near
            chance (with ``tau=0`` and an aggressive budget, see docs/benchmarks.md).
        fitness_batches: validation batches scoring one candidate (default: all).
        bn_batches: training batches (the same ones in every run with this ``seed``) that re-estimate
            the BatchNorm statistics of every candidate and every pruned model before it is scored or
            fine-tuned; removing channels makes the old statistics wrong. 0 turns this off (as in the paper).
        finetune_epochs: epochs of fine-tuning per budget (0: keep the pruned model as it is,
            ``pruned.ckpt``).
        monitor: metric logged by the module's validation that scores candidates and picks the best
            fine-tuning checkpoint.
        mode: ``"min"`` if lower ``monitor`` is better (a loss), ``"max"`` for accuracy-like metrics.
        seed: seed of the search (candidates, and the training batches that score them).
        dirpath: where everything is written; default ``<trainer.default_root_dir>/legr``.
        transform: a saved ``transform.json``: skip the search and prune with it.
        ignored_layers: names of modules (in the LightningModule) whose channels are never pruned.
        customized_pruners: torch-pruning pruners for your custom layers, ``{LayerClass: pruner}``.
        latency: measure CPU latency at batch 1 and 64 for the results table.

    Raises:
        ValueError: at construction, for invalid settings; when fit starts (before any training
            step), if there is no validation data, ``monitor`` is not logged, the model cannot be
            pruned or a budget is unreachable, or ``dirpath`` holds another run (other settings,
            another LightningModule class, or a ``base.ckpt`` that does not load into the module).

    Example::

        trainer = L.Trainer(max_epochs=30, callbacks=[LeGRCallback(flops=[0.3, 0.5, 0.7])])
        trainer.fit(model, datamodule=dm)  # pretrain, learn the ranking, fine-tune 3 models
        small = lightning_legr.load_pruned(trainer.callbacks[0].results[1]["checkpoint"], MyModule)
    """

    def __init__(
        self,
        flops: List[float],
        generations: int = 400,
        population: int = 64,
        sample_size: int = 16,
        mutation_rate: float = 0.1,
        sigma: float = 1.0,
        tau: int = 0,
        tau_lr: Optional[float] = 1e-3,
        safeguard: float = 0.1,
        criterion: str = "l2",
        round_to: int = 1,
        search_flops: Optional[Union[float, List[float]]] = None,
        fitness_batches: Optional[int] = None,
        bn_batches: int = 4,
        finetune_epochs: int = 10,
        monitor: str = "val_loss",
        mode: str = "min",
        seed: int = 0,
        dirpath: Optional[str] = None,
        transform: Optional[str] = None,
        ignored_layers: Optional[List[str]] = None,
        customized_pruners: Optional[dict] = None,
        latency: bool = True,
    ) -> None:
        super().__init__()
        self.flops = check_budgets(flops)
        self.search_flops = sorted(check_budgets(search_flops, "search_flops")) if search_flops is not None else [min(self.flops)]
        RegularizedEvolution([1.0], generations, population, sample_size, mutation_rate, sigma, seed=seed)
        integers = (("tau", tau, 0), ("finetune_epochs", finetune_epochs, 0), ("round_to", round_to, 1), ("bn_batches", bn_batches, 0))
        for name, value, minimum in integers:
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")
        if fitness_batches is not None and (not isinstance(fitness_batches, int) or fitness_batches < 1):
            raise ValueError(f"`fitness_batches` must be a positive integer or None (all batches), got {fitness_batches!r}")
        if tau_lr is not None and not tau_lr > 0:
            raise ValueError(f"`tau_lr` must be positive or None (use the module's optimizer), got {tau_lr}")
        if not 0 <= safeguard < 1:
            raise ValueError(f"`safeguard` must be in [0, 1) (the share of each group always kept), got {safeguard}")
        if mode not in ("min", "max"):
            raise ValueError(f"`mode` can be min or max, got {mode!r}")
        if criterion not in CRITERIA:
            raise ValueError(f"`criterion` can be {', '.join(CRITERIA)}, got {criterion!r}")
        if not all(isinstance(name, str) for name in ignored_layers or []):
            raise ValueError(f"`ignored_layers` must be module names (strings, e.g. 'model.conv1'), got {ignored_layers!r}")
        if transform is not None:
            Transform.load(transform)  # fail now on a missing or broken file
        self.generations, self.population, self.sample_size = generations, population, sample_size
        self.mutation_rate, self.sigma, self.seed = mutation_rate, sigma, seed
        self.tau, self.tau_lr, self.fitness_batches, self.bn_batches = tau, tau_lr, fitness_batches, bn_batches
        self.safeguard, self.criterion, self.round_to = safeguard, criterion, round_to
        self.finetune_epochs, self.monitor, self.mode = finetune_epochs, monitor, mode
        self.dirpath, self.transform_path = dirpath, transform
        self.ignored_layers = list(ignored_layers or [])
        self.customized_pruners = dict(customized_pruners or {})
        self.latency = latency
        self.transform: Optional[Transform] = None
        self.results: List[Dict[str, Any]] = []
        self._example: Any = None
        self._module_class: Optional[str] = None

    # ------------------------------------------------------------------ settings
    def _settings(self) -> Dict[str, Any]:
        """What makes two runs the same run: a dirpath is only reused with these unchanged."""
        return {
            "module": self._module_class,
            "flops": sorted(self.flops),
            "search_flops": self.search_flops if len(self.search_flops) > 1 else self.search_flops[0],
            "generations": self.generations,
            "population": self.population,
            "sample_size": self.sample_size,
            "mutation_rate": self.mutation_rate,
            "sigma": self.sigma,
            "tau": self.tau,
            "tau_lr": self.tau_lr,
            "safeguard": self.safeguard,
            "criterion": self.criterion,
            "round_to": self.round_to,
            "fitness_batches": self.fitness_batches,
            "bn_batches": self.bn_batches,
            "finetune_epochs": self.finetune_epochs,
            "monitor": self.monitor,
            "mode": self.mode,
            "seed": self.seed,
            "transform": None if self.transform_path is None else os.path.abspath(self.transform_path),
            "ignored_layers": self.ignored_layers,
            "customized_pruners": sorted(getattr(k, "__name__", str(k)) for k in self.customized_pruners),
        }

    def _path(self, *parts: str) -> str:
        return os.path.join(self.dirpath, *parts)

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "legr")
        self._module_class = f"{type(pl_module).__module__}.{type(pl_module).__qualname__}"
        self._check_run_file()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check everything that can fail before the first training step, and resume a cut-off run."""
        # the checks draw batches: leave the pretraining the random state it would have without LeGR
        with seeded(self.seed, trainer.strategy.root_device):
            self._check_and_resume(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.interrupted:
            return
        with _sigterm_as_interrupt():
            self._compress(trainer, pl_module)

    def state_dict(self) -> Dict[str, Any]:
        return {
            "results": self.results,
            "transform": None if self.transform is None else self.transform.to_dict(),
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.results = list(state_dict.get("results", []))
        if state_dict.get("transform"):
            self.transform = Transform.from_dict(state_dict["transform"])

    # ------------------------------------------------------------------ checks
    def _check_and_resume(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:
            raise ValueError(
                f"LeGRCallback runs its search in one process, but this Trainer has {trainer.world_size}."
                " Pretrain with several devices if you like, then load the trained weights"
                " (model = MyModule.load_from_checkpoint(path)) and run LeGR alone on one device:"
                " Trainer(devices=1, max_epochs=0, callbacks=[LeGRCallback(...)]).fit(model, dm)."
            )
        data = DataSources(trainer)
        if not data.has_validation or trainer.limit_val_batches == 0:
            raise ValueError(
                "LeGRCallback needs validation data: candidates are scored by the module's validation_step."
                " Give `trainer.fit` a datamodule with `val_dataloader`, `val_dataloaders=...`, or define"
                " `val_dataloader` in the module (and do not set limit_val_batches=0)."
            )
        resumed = self._resume_pretraining(trainer, pl_module)
        self._example = self._example_input(pl_module, data)
        pruner = self._pruner(pl_module)  # raises if the model cannot be pruned
        for budget in self.flops + self.search_flops:
            pruner.select(budget)  # raises if the safeguard makes a budget unreachable
        if self.transform_path is not None:
            Transform.load(self.transform_path).check(
                pruner.structure.signature(), pruner.criterion.name, f"The transform file {self.transform_path}"
            )
        if self.bn_batches:
            batch_inputs(next(iter(data.loader("train"))))  # BatchNorm recalibration can read the batches
        metrics = Evaluator(trainer, data, self.monitor).metrics(copy.deepcopy(pl_module), batches=1)
        if self.monitor not in metrics:
            raise ValueError(missing_metric_message(self.monitor, metrics))
        _remove_stale_temporaries(self.dirpath)
        if resumed:
            rank_zero_info(f"LeGR: resuming the run in {self.dirpath}; pretrained weights from {BASE_CKPT}.")

    def _check_run_file(self) -> None:
        path = self._path(RUN_FILE)
        if not os.path.exists(path):
            return
        saved, mine = read_json(path), self._settings()
        if isinstance(saved.get("flops"), list):
            saved["flops"] = sorted(saved["flops"])  # written unsorted by earlier versions; order does not matter
        differs = [k for k in mine if saved.get(k) != mine[k]]
        if differs:
            details = ", ".join(f"{k}: {saved.get(k)!r} there, {mine[k]!r} here" for k in differs[:4])
            raise ValueError(
                f"`dirpath` {self.dirpath} holds another LeGR run ({details}). Use another dirpath, or delete"
                " it to start over."
            )

    def _resume_pretraining(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """If an earlier run of this command finished pretraining, take its weights and skip training."""
        base = self._path(BASE_CKPT)
        if not os.path.exists(base):
            return False
        checkpoint = torch.load(base, map_location=pl_module.device, weights_only=False)
        try:
            pl_module.load_state_dict(checkpoint["state_dict"])
        except (RuntimeError, KeyError) as err:
            reason = str(err).strip().splitlines()[0]
            raise ValueError(
                f"`dirpath` {self.dirpath} holds the {BASE_CKPT} of another model: its weights do not load into"
                f" this {type(pl_module).__name__} ({reason}). Use another dirpath, or delete it to start over."
            ) from err
        trainer.fit_loop.max_epochs = trainer.fit_loop.epoch_progress.current.processed  # nothing left to train
        return True

    def _example_input(self, pl_module: pl.LightningModule, data: DataSources) -> Any:
        example = pl_module.example_input_array
        if example is None:
            example = batch_inputs(next(iter(data.loader("val"))))[:1]
        return map_tensors(example, lambda t: t.to(pl_module.device))

    def _pruner(self, pl_module: pl.LightningModule) -> LeGRPruner:
        return LeGRPruner(
            pl_module, map_tensors(self._example, lambda t: t.to(pl_module.device)), criterion=self.criterion,
            safeguard=self.safeguard, round_to=self.round_to, ignored_layers=self.ignored_layers,
            customized_pruners=self.customized_pruners or None,
        )

    # ------------------------------------------------------------------ the run
    def _compress(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        os.makedirs(self.dirpath, exist_ok=True)
        if not os.path.exists(self._path(RUN_FILE)):
            write_json(self._path(RUN_FILE), self._settings())
        if not os.path.exists(self._path(BASE_CKPT)):
            save_module_checkpoint(pl_module, self._path(BASE_CKPT))
        data = DataSources(trainer)
        pruner = self._pruner(pl_module)
        self.transform = self._learn(trainer, pruner, data)
        evaluator = Evaluator(trainer, data, self.monitor, bn_batches=self.bn_batches, seed=self.seed)
        base_metric = evaluator(copy.deepcopy(pl_module), recalibrate=False)
        self.results = [self._measure(1.0, pl_module, base_metric, None, self._path(BASE_CKPT))]
        done = {r["budget"]: r for r in self._saved_results()}
        for budget in sorted(self.flops, reverse=True):
            row = done.get(budget)
            if row is None or not os.path.exists(row["checkpoint"]):
                row = self._compress_one(trainer, pruner, data, evaluator, budget)
            self.results.append(row)
            self._write_report(pruner)
        rank_zero_info("\nLeGR results\n" + format_table(self.results, self.monitor) + f"\n(written to {self.dirpath})")

    def _learn(self, trainer: pl.Trainer, pruner: LeGRPruner, data: DataSources) -> Transform:
        if self.transform_path is not None:
            return Transform.load(self.transform_path)
        if os.path.exists(self._path(TRANSFORM_FILE)):
            transform = Transform.load(self._path(TRANSFORM_FILE))
            transform.check(pruner.structure.signature(), pruner.criterion.name)
            return transform
        sign = 1.0 if self.mode == "min" else -1.0
        score = Evaluator(
            trainer, data, self.monitor, self.fitness_batches, self.tau, self.tau_lr, self.bn_batches, self.seed
        )
        device = trainer.strategy.root_device

        def fitness(module: pl.LightningModule) -> float:
            # the tau steps' batches come from the global RNG: seeded by the generation, a resumed
            # search gives every candidate the batches the uninterrupted one would have
            with seeded(derive_seed(self.seed, CANDIDATE_STREAM, search.evolution.generation), device):
                return sign * score(module)

        search = LeGRSearch(
            pruner, fitness, self.search_flops, state_path=self._path(STATE_FILE),
            generations=self.generations, population=self.population, sample_size=self.sample_size,
            mutation_rate=self.mutation_rate, sigma=self.sigma, seed=self.seed,
        )
        names = [g.name for g in pruner.structure.groups]
        bar = tqdm(
            total=self.generations, initial=search.evolution.generation, desc="LeGR search", unit="gen",
            disable=trainer.progress_bar_callback is None, dynamic_ncols=True,
        )

        def on_generation(gen: Generation) -> None:
            metrics = {"legr/fitness": sign * gen.fitness, "legr/best": sign * gen.best_fitness}
            metrics["legr/population_mean"] = sign * gen.mean_fitness
            metrics.update({f"legr/width/{n}": float(w) for n, w in zip(names, gen.widths)})
            for logger in trainer.loggers:
                logger.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)}, step=gen.generation)
            bar.update(1)
            bar.set_postfix({f"best {self.monitor}": f"{sign * gen.best_fitness:.4f}"})

        with bar:
            transform = search.run(on_generation)
        transform.info.update(monitor=self.monitor, mode=self.mode, best_metric=sign * search.evolution.best_fitness)
        transform.save(self._path(TRANSFORM_FILE))
        return transform

    def _compress_one(
        self, trainer: pl.Trainer, pruner: LeGRPruner, data: DataSources, evaluator: Evaluator, budget: float
    ) -> Dict[str, Any]:
        directory = self._path(f"flops_{_name(budget)}")
        module = pruner.prune(budget, self.transform)
        evaluator.recalibrate(module)
        before = evaluator(copy.deepcopy(module), recalibrate=False)
        pruned = save_module_checkpoint(module, os.path.join(directory, PRUNED_CKPT))  # before fine-tuning changes it
        path, after = pruned, None
        if self.finetune_epochs > 0:
            last = os.path.join(directory, "last.ckpt")
            path, after = finetune(
                module, trainer, data, self.finetune_epochs, directory, self.monitor, self.mode,
                prefix=f"flops_{_name(budget)}", resume_from=last if os.path.exists(last) else None,
            )
            if _better(before, after, self.mode):
                self._warn_finetuning_did_not_help(budget, before, after, pruned)
                path = pruned
        row = self._measure(budget, module, before, after, path)
        self._save_result(row)
        return row

    def _warn_finetuning_did_not_help(self, budget: float, before: float, after: Optional[float], pruned: str) -> None:
        tuned = "no value" if after is None else f"{after:.4f}"
        rank_zero_warn(
            f"LeGR: fine-tuning at {budget:.0%} of the FLOPs did not improve on the pruned model ({self.monitor}"
            f" {before:.4f} pruned, {tuned} fine-tuned, the best of finetune_epochs={self.finetune_epochs}), so the"
            f" results point to {os.path.abspath(pruned)}. Lower the learning rate in configure_optimizers, or"
            " raise finetune_epochs."
        )

    def _measure(self, budget: float, module: pl.LightningModule, before: float, after: Optional[float], path: str):
        flops = count_flops(module, self._example)
        row = {
            "budget": budget,
            "flops": flops,
            "params": count_params(module),
            "metric_before": before,
            "metric_after": after,
            "latency_b1_ms": measure_latency(module, self._example, 1) if self.latency else None,
            "latency_b64_ms": measure_latency(module, self._example, 64) if self.latency else None,
            "checkpoint": os.path.abspath(path),
        }
        row["flops_ratio"] = flops / self.results[0]["flops"] if self.results else 1.0
        return row

    def _saved_results(self) -> List[Dict[str, Any]]:
        path = self._path("budgets.json")
        return read_json(path) if os.path.exists(path) else []

    def _save_result(self, row: Dict[str, Any]) -> None:
        rows = [r for r in self._saved_results() if r["budget"] != row["budget"]] + [row]
        write_json(self._path("budgets.json"), rows)

    def _write_report(self, pruner: LeGRPruner) -> None:
        write_results(
            self.results, self._path("results.csv"), self._path("results.json"),
            extra={"monitor": self.monitor, "mode": self.mode, "transform": self.transform.to_dict()},
        )
        plot_metric(self.results, self.monitor, self._path("metric_vs_flops.png"))
        groups = pruner.structure.groups
        for budget in self.flops:
            if any(r["budget"] == budget for r in self.results):
                kept = pruner.select(budget, self.transform).widths
                plot_widths(
                    [g.name for g in groups], [g.width for g in groups], kept,
                    self._path(f"widths_{_name(budget)}.png"), f"channels kept at {budget:.0%} of the FLOPs",
                )


def _better(value: float, than: Optional[float], mode: str) -> bool:
    """Whether ``value`` is a better ``monitor`` than ``than``; any finite value beats a missing one."""
    if not math.isfinite(value):
        return False
    if than is None or not math.isfinite(than):
        return True
    return value < than if mode == "min" else value > than


def _name(budget: float) -> str:
    """Budget in file names: two decimals (flops_0.30), more only when needed (flops_0.333)."""
    return f"{budget:.2f}" if round(budget, 2) == budget else f"{budget:g}"


def _remove_stale_temporaries(dirpath: str) -> None:
    """Temporary files left by a process killed mid-write (atomic writes never leave a half target)."""
    for path in glob.glob(os.path.join(dirpath, "**", ".tmp-*"), recursive=True):
        os.remove(path)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C, so cleanup runs and the state on disk stays whole and resumable."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
