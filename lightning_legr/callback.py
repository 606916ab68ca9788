"""LeGRCallback: after pretraining, learn a global filter ranking and fine-tune one model per budget
(of the FLOPs or of the parameters)."""

import contextlib
import copy
import hashlib
import json
import math
import os
import signal
import tempfile
import warnings
from typing import Any, Dict, Iterator, List, Optional, Union

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from tqdm.auto import tqdm
from typing_extensions import override

from lightning_legr import _compat
from lightning_legr._random import CANDIDATE, CHECKS, FINETUNE, derive_seed, seeded
from lightning_legr.checkpoint import load_checkpoint, save_module_checkpoint
from lightning_legr.core import export as onnx
from lightning_legr.core._io import read_json, write_json, write_text
from lightning_legr.core.criteria import get_criterion
from lightning_legr.core.errors import ConfigurationError
from lightning_legr.core.evolution import RegularizedEvolution
from lightning_legr.core.fastpath import FastPath
from lightning_legr.core.flops import count_flops, count_params
from lightning_legr.core.latency import check_latency_budgets, latency_cost, meet_latency
from lightning_legr.core.pruner import LeGRPruner
from lightning_legr.core.rejection import MIN_CHUNKS, EarlyRejection
from lightning_legr.core.search import Generation, LeGRSearch, check_budgets
from lightning_legr.core.selection import check_round_to, check_safeguard
from lightning_legr.core.structure import check_layer_list, map_tensors
from lightning_legr.core.surgery import restore
from lightning_legr.core.transform import Transform
from lightning_legr.distributed import Ranks, RankWorkers, check_strategy
from lightning_legr.evaluation import DataSources, Evaluator, batch_inputs, missing_metric_message, quiet
from lightning_legr.finetuning import finetune
from lightning_legr.report import (
    LATENCY_BATCHES, format_table, latency_columns, measure_latencies, plot_metric, plot_widths, write_results,
)
from lightning_legr.rundir import RunDirectory, budget_name

__all__ = ["LeGRCallback"]


class LeGRCallback(Callback):
    r"""Compress the model with LeGR when ``trainer.fit`` ends: one search, one model per budget.

    When fit ends (pretraining done), the callback

    1. learns the per-group affine transform of the global filter ranking by regularized evolution:
       each candidate is the module pruned to ``search_flops``, optionally trained ``tau`` steps on
       the module's training data, and scored by ``monitor`` from the module's own
       ``validation_step`` on ``fitness_batches`` validation batches;
    2. for every budget in ``flops`` (or ``params``), prunes a copy with the best transform, saves it as
       ``dirpath/flops_<budget>/pruned.ckpt`` (``params_<budget>/``) and fine-tunes it for ``finetune_epochs`` in a fresh
       Trainer (same accelerator, device, precision and loggers), keeping the best checkpoint by
       ``monitor`` in ``dirpath/flops_<budget>/best.ckpt`` and the last epoch's in ``last.ckpt``. If the
       pruned model scores better than every fine-tuned epoch, a warning says so and its row of the
       results points to ``pruned.ckpt`` (``metric_after`` stays the fine-tuned score);
    3. measures the CPU latency of every network side by side, prints a results table and writes
       ``results.csv``, ``results.json``, ``metric_vs_flops.png`` (``metric_vs_params.png``) and
       ``widths_<budget>.png`` in ``dirpath``.

    Everything is resumable, and a resumed run ends exactly as an uninterrupted one: the search state
    is saved every generation, finished budgets are kept, an interrupted fine-tune resumes from its
    ``last.ckpt``, and every random choice (the BatchNorm batches, each candidate's ``tau`` batches,
    each fine-tuning epoch's data order and dropout) is drawn under a seed derived from ``seed``, in a
    forked random state that leaves your global one as it was. Run the same command again with the
    same ``dirpath`` (which may have been moved or copied: it stores only relative paths): the
    pretrained model is taken from ``dirpath/base.ckpt`` and pretraining is skipped. A ``dirpath``
    holding another run (other settings, LightningModule class, module or datamodule hyperparameters,
    or ``max_epochs``) is refused, naming what differs.

    Args:
        flops: FLOP budgets, fractions of the original FLOPs in (0, 1), e.g. ``[0.3, 0.5, 0.7]``.
        params: parameter budgets instead, fractions of the original parameters in (0, 1), e.g.
            ``params=[0.3, 0.5]``: the search and every model are pruned to shares of the parameters
            (counted as torch-pruning removes them; met within 1% and never over). Give ``flops`` or
            ``params``, not both.
        generations: candidates evaluated by the search, the initial population included.
        population: population size of the regularized evolution.
        sample_size: tournament size.
        mutation_rate: share of channel groups mutated in each child.
        sigma: standard deviation of the log-scale mutations of alpha (finite, > 0).
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
        search_params: the same for ``params`` budgets (default: the smallest of ``params``).
        fitness_batches: validation batches scoring one candidate (default: all).
        bn_batches: training batches (the same ones in every run with this ``seed``) that re-estimate
            the BatchNorm statistics of every candidate and every pruned model before it is scored or
            fine-tuned; removing channels makes the old statistics wrong. 0 turns this off (as in the paper).
        finetune_epochs: epochs of fine-tuning per budget (0: keep the pruned model as it is,
            ``pruned.ckpt``).
        monitor: metric logged by the module's validation that scores candidates and picks the best
            fine-tuning checkpoint. A candidate whose ``monitor`` is NaN or infinite counts as the worst.
        mode: ``"min"`` if lower ``monitor`` is better (a loss), ``"max"`` for accuracy-like metrics.
        seed: seed of the run (an integer >= 0): the candidates, and the batches that score and
            fine-tune them.
        dirpath: where everything is written; default ``<trainer.default_root_dir>/legr``.
        transform: a saved ``transform.json``: skip the search and prune with it.
        ignored_layers: names of modules (in the LightningModule) whose channels are never pruned.
        customized_pruners: torch-pruning pruners for your custom layers, ``{LayerClass: pruner}``.
        latency: measure CPU latency at batch 1 and 64 for the results table.
        latency_threads: CPU threads for the latency measurement (one by default: the steadiest).
        export_onnx: export every network to ONNX, ``dirpath/base.onnx`` and ``dirpath/flops_<budget>/model.onnx``,
            each checked against the PyTorch outputs on a batch (at most 1e-4 apart), and time it with
            onnxruntime beside PyTorch (``latency=True``). Needs the extra: ``pip install "lightning-legr[onnx]"``.
        memory_format: how candidates (and the pruned models the table scores) are evaluated when ``tau`` is
            0: ``"auto"`` times one validation batch in both memory formats on the first candidate and keeps
            ``channels_last`` only if faster with the same outputs; ``"channels_last"`` or ``"contiguous"``.
            BatchNorms that only follow a convolution are folded into it too (exact in eval mode). Your
            module is never changed: every evaluation works on a copy. The decision is kept in the search
            state.
        reuse_fitness: a candidate whose widths at every search budget equal an earlier candidate's is the
            same pruned network, and gets that fitness without being evaluated (kept in the search state, counted
            in the logs as ``legr/cache_hits``). Ignored when ``tau > 0``: the training steps make the fitness
            random. Turn it off if your validation is random otherwise (e.g. a shuffled validation loader
            with ``fitness_batches``).
        early_rejection: stop scoring a candidate once it is, with high confidence (a Student's t bound at
            the 3-sigma level, after at least a fifth of the fitness batches and at least 8), worse than the
            population member that tournaments pass over 99% of the time; its fitness is then recorded as that
            low estimate, marked as a bound (``legr/rejected``, ``legr/saved`` in the logs, ``rejected`` in
            ``search_state.json``). The best candidate is always scored in full. Needs ``fitness_batches`` > 8:
            they are kept in memory and scored in one random order (the same for every candidate), and
            ``monitor`` logged as a tensor in ``validation_step`` (``self.log(monitor, loss)``). The rule:
            docs/how-legr-works.md.

    Raises:
        ConfigurationError: (a ``ValueError``) at construction, for invalid settings; when fit starts
            (before any training step), if there is no validation data, ``monitor`` is not logged, the
            model cannot be pruned or a budget is unreachable, or ``dirpath`` holds another run or a
            file that is not a plain checkpoint.

    Attributes:
        results: after ``fit``, one dict per network (the unpruned one first, then every budget from the
            largest): ``budget``, ``flops``, ``flops_ratio``, ``params``, ``metric_before`` (pruned),
            ``metric_after`` (fine-tuned), latencies, and ``checkpoint`` (an absolute path); with ``export_onnx``
            also ``onnx`` (an absolute path), ``onnx_max_abs_diff`` and the onnxruntime latencies.
        transform: the learned :class:`~lightning_legr.Transform`.

    Example::

        >>> import lightning as L
        >>> from lightning_legr import LeGRCallback
        >>> callback = LeGRCallback(flops=[0.3, 0.5, 0.7], generations=100, population=16, sample_size=4)
        >>> callback.flops
        [0.3, 0.5, 0.7]
        >>> trainer = L.Trainer(max_epochs=30, callbacks=[callback])  # doctest: +SKIP
        >>> trainer.fit(model, datamodule=dm)  # doctest: +SKIP
        >>> small = lightning_legr.load_pruned(callback.results[1]["checkpoint"], MyModule)  # doctest: +SKIP
    """

    def __init__(
        self,
        flops: Optional[List[float]] = None,
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
        latency_threads: int = 1,
        params: Optional[List[float]] = None,
        search_params: Optional[Union[float, List[float]]] = None,
        latency_budgets: Optional[List[float]] = None,
        latency_batch_size: int = 1,
        export_onnx: bool = False,
        reuse_fitness: bool = True,
        memory_format: str = "auto",
        early_rejection: bool = False,
    ) -> None:
        super().__init__()
        self.kind, budgets, search = _budget_kind(flops, params, latency_budgets, search_flops, search_params)
        self.budgets = check_budgets(budgets, _BUDGET_ARGUMENT[self.kind], unpruned=False)
        self.search_budgets = (
            sorted(check_budgets(search, f"search_{self.kind}", unpruned=False))
            if search is not None else [min(self.budgets)]
        )
        RegularizedEvolution([1.0], generations, population, sample_size, mutation_rate, sigma, seed=seed)
        for name, value, minimum in (("tau", tau, 0), ("finetune_epochs", finetune_epochs, 0), ("bn_batches", bn_batches, 0)):
            _check_int(name, value, minimum)
        if fitness_batches is not None:
            _check_int("fitness_batches", fitness_batches, 1, "or None (all batches)")
        if tau_lr is not None and (not _is_number(tau_lr) or not math.isfinite(tau_lr) or tau_lr <= 0):
            raise ConfigurationError(f"`tau_lr` must be a number > 0 or None (use the module's optimizer), got {tau_lr!r}")
        if mode not in ("min", "max"):
            raise ConfigurationError(f"`mode` can be min or max, got {mode!r}")
        if not isinstance(monitor, str) or not monitor:
            raise ConfigurationError(f"`monitor` must be the name of a logged metric, got {monitor!r}")
        if mode == "max" and "loss" in monitor.lower():
            rank_zero_warn(
                f"LeGRCallback(mode='max') with monitor={monitor!r}: the name says loss, and mode='max' keeps the"
                " candidates and checkpoints with the highest value. Use mode='min' for a loss."
            )
        check_layer_list(ignored_layers)
        if not all(isinstance(name, str) for name in ignored_layers or []):
            raise ConfigurationError(f"`ignored_layers` must be module names (strings, e.g. 'model.conv1'), got {ignored_layers!r}")
        if not isinstance(latency, bool):
            raise ConfigurationError(f"`latency` must be True or False, got {latency!r}")
        _check_int("latency_threads", latency_threads, 1)
        _check_int("latency_batch_size", latency_batch_size, 1)
        self.latency_batch_size = latency_batch_size
        if not isinstance(export_onnx, bool):
            raise ConfigurationError(f"`export_onnx` must be True or False, got {export_onnx!r}")
        if export_onnx:
            onnx.require_onnx("LeGRCallback(export_onnx=True)")  # now, not after the search and fine-tuning
        if not isinstance(reuse_fitness, bool):
            raise ConfigurationError(f"`reuse_fitness` must be True or False, got {reuse_fitness!r}")
        self.reuse_fitness = reuse_fitness
        if not isinstance(early_rejection, bool):
            raise ConfigurationError(f"`early_rejection` must be True or False, got {early_rejection!r}")
        if early_rejection and fitness_batches is None:
            raise ConfigurationError(
                "`early_rejection=True` needs `fitness_batches` (e.g. 40): those batches are kept in memory and"
                " scored in one random order, so that the first ones are a fair sample of them."
            )
        if early_rejection and not EarlyRejection([1] * fitness_batches).can_stop:
            raise ConfigurationError(
                f"`early_rejection=True` stops a candidate only after {MIN_CHUNKS} of its `fitness_batches` with some"
                f" left to skip: it needs `fitness_batches` > {MIN_CHUNKS} (e.g. 40), got {fitness_batches}"
            )
        self.early_rejection = early_rejection
        self.memory_format = FastPath(memory_format).memory_format  # refuses an unknown format
        if customized_pruners is not None and not isinstance(customized_pruners, dict):
            raise ConfigurationError(f"`customized_pruners` must be a dict {{LayerClass: pruner}}, got {customized_pruners!r}")
        self.run = None if dirpath is None else RunDirectory(dirpath, self.kind)  # refuses a dirpath that is not a path
        self.transform_path = transform
        given = None if transform is None else Transform.load(transform)  # fails now on a missing or broken file
        self._transform_digest = None if given is None else _digest(given)
        self.generations, self.population, self.sample_size = generations, population, sample_size
        self.mutation_rate, self.sigma, self.seed = mutation_rate, sigma, seed
        self.tau, self.tau_lr, self.fitness_batches, self.bn_batches = tau, tau_lr, fitness_batches, bn_batches
        self.safeguard, self.round_to = check_safeguard(safeguard), check_round_to(round_to)
        self.criterion = criterion
        self._criterion_name = get_criterion(criterion).name  # refuses an unknown criterion
        self.finetune_epochs, self.monitor, self.mode = finetune_epochs, monitor, mode
        self.ignored_layers = list(ignored_layers or [])
        self.customized_pruners = dict(customized_pruners or {})
        self.latency, self.latency_threads, self.export_onnx = latency, latency_threads, export_onnx
        self.transform: Optional[Transform] = None
        self.results: List[Dict[str, Any]] = []
        self.pretrained_weights: Optional[str] = None  # a digest of the weights `prune` started from
        self._example: Any = None
        self._settings: Dict[str, Any] = {}

    @property
    def flops(self) -> Optional[List[float]]:
        """The FLOP budgets, as given (None when the budgets are of the parameters)."""
        return list(self.budgets) if self.kind == "flops" else None

    @property
    def params(self) -> Optional[List[float]]:
        """The parameter budgets, as given (None when the budgets are of the FLOPs)."""
        return list(self.budgets) if self.kind == "params" else None

    @property
    def latency_budgets(self) -> Optional[List[float]]:
        """The latency budgets, as given (None when the budgets are of another kind)."""
        return list(self.budgets) if self.kind == "latency" else None

    @property
    def _of(self) -> str:
        """What a budget is a share of, in messages."""
        return _SHARE_OF[self.kind]

    @property
    def dirpath(self) -> Optional[str]:
        return None if self.run is None else self.run.path

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_strategy(trainer)
        if self.run is None:
            self.run = RunDirectory(os.path.join(trainer.default_root_dir, "legr"), self.kind)
        self._settings = self._run_settings(trainer, pl_module)
        Ranks(trainer).from_zero(lambda: self.run.check_settings(self._settings))

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check everything that can fail before the first training step, and resume a cut-off run."""
        # the checks draw batches: leave the pretraining the random state it would have without LeGR
        with seeded(derive_seed(self.seed, CHECKS)):
            self._check_and_resume(trainer, pl_module)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.interrupted:
            return
        with _sigterm_as_interrupt():
            self._compress(trainer, pl_module)

    @override
    def state_dict(self) -> Dict[str, Any]:
        return {
            "results": self.results,
            "transform": None if self.transform is None else self.transform.to_dict(),
        }

    @override
    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.results = list(state_dict.get("results", []))
        if state_dict.get("transform"):
            self.transform = Transform.from_dict(state_dict["transform"])

    # ------------------------------------------------------------------ settings
    def _run_settings(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Dict[str, Any]:
        """What makes two runs the same run: a dirpath is only reused with all of these unchanged."""
        datamodule = trainer.datamodule
        return {
            "legr": {  # FLOP runs keep the keys they had before parameter budgets existed
                _BUDGET_ARGUMENT[self.kind]: sorted(self.budgets),
                **({"latency_batch_size": self.latency_batch_size, "latency_threads": self.latency_threads}
                   if self.kind == "latency" else {}),
                f"search_{self.kind}": self.search_budgets if len(self.search_budgets) > 1 else self.search_budgets[0],
                "generations": self.generations,
                "population": self.population,
                "sample_size": self.sample_size,
                "mutation_rate": self.mutation_rate,
                "sigma": self.sigma,
                "tau": self.tau,
                "tau_lr": self.tau_lr,
                "safeguard": self.safeguard,
                "criterion": self._criterion_name,
                "round_to": self.round_to,
                "fitness_batches": self.fitness_batches,
                **({"early_rejection": True} if self.early_rejection else {}),  # it orders the fitness batches
                "bn_batches": self.bn_batches,
                "finetune_epochs": self.finetune_epochs,
                "monitor": self.monitor,
                "mode": self.mode,
                "seed": self.seed,
                "transform": self._transform_digest,
                "ignored_layers": self.ignored_layers,
                "customized_pruners": sorted(getattr(k, "__name__", str(k)) for k in self.customized_pruners),
            },
            "module": {"class": _class_name(pl_module), "hparams": _hparams(pl_module)},
            "datamodule": None if datamodule is None else {"class": _class_name(datamodule), "hparams": _hparams(datamodule)},
            "trainer": {"max_epochs": trainer.max_epochs},
            "weights": self.pretrained_weights,
        }

    # ------------------------------------------------------------------ checks
    def _check_and_resume(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ranks = Ranks(trainer)
        data = DataSources(trainer)
        if not data.has_validation or trainer.limit_val_batches == 0:
            raise ConfigurationError(
                "LeGRCallback needs validation data: candidates are scored by the module's validation_step."
                " Give `trainer.fit` a datamodule with `val_dataloader`, `val_dataloaders=...`, or define"
                " `val_dataloader` in the module (and do not set limit_val_batches=0)."
            )
        resumed = self._resume_pretraining(trainer, pl_module, ranks)
        self._example = self._example_input(pl_module, data)
        pruner = self._pruner(pl_module, ranks)  # raises if the model cannot be pruned
        if self.kind == "latency":  # a target below the measured floor: refused now, with the floor
            ranks.from_zero(lambda: check_latency_budgets(pruner, self.budgets) and None)
        for budget in self.budgets + self.search_budgets:
            pruner.select(**{self.kind: budget})  # raises if the safeguard makes a budget unreachable
        if self.transform_path is not None:
            Transform.load(self.transform_path).check(
                pruner.structure.signature(), pruner.criterion.name, f"The transform file {self.transform_path}"
            )
        if self.bn_batches:
            batch_inputs(next(iter(data.loader("train"))))  # BatchNorm recalibration can read the batches
        with quiet():
            metrics = Evaluator(trainer, data, self.monitor).metrics(copy.deepcopy(pl_module), batches=1)
        if self.monitor not in metrics:
            raise ConfigurationError(missing_metric_message(self.monitor, metrics))
        if self.export_onnx:
            ranks.from_zero(lambda: self._check_exportable(pl_module))
        if ranks.zero:
            self.run.remove_stale_temporaries()
        if resumed:
            rank_zero_info(f"LeGR: resuming the run in {self.run.path}; pretrained weights from {RunDirectory.BASE}.")

    def _resume_pretraining(self, trainer: pl.Trainer, pl_module: pl.LightningModule, ranks: Ranks) -> bool:
        """If an earlier run of this command finished pretraining, take its weights and skip training."""
        base = self.run.file(RunDirectory.BASE)
        state = ranks.from_zero(lambda: load_checkpoint(base)["state_dict"] if self.run.exists(RunDirectory.BASE) else None)
        if state is None:
            return False
        try:
            pl_module.load_state_dict(state)
        except (RuntimeError, KeyError) as err:
            reason = str(err).strip().splitlines()[0]
            raise ConfigurationError(
                f"`dirpath` {self.run.path} holds the {RunDirectory.BASE} of another model: its weights do not load"
                f" into this {type(pl_module).__name__} ({reason}). Use another dirpath, or delete it to start over."
            ) from err
        _compat.end_pretraining(trainer)
        return True

    def _example_input(self, pl_module: pl.LightningModule, data: DataSources) -> Any:
        example = pl_module.example_input_array
        if example is None:
            example = batch_inputs(next(iter(data.loader("val"))))[:1]
        return map_tensors(example, lambda t: t.to(pl_module.device))

    def _pruner(self, pl_module: pl.LightningModule, ranks: Ranks) -> LeGRPruner:
        options = {}
        if self.kind == "latency":
            options = {"latency": {"batch_size": self.latency_batch_size, "threads": self.latency_threads,
                                   "cache": self.run.file(RunDirectory.LATENCY_TABLE)}}
        pruner = LeGRPruner(
            pl_module, map_tensors(self._example, lambda t: t.to(pl_module.device)), criterion=self.criterion,
            safeguard=self.safeguard, round_to=self.round_to, ignored_layers=self.ignored_layers,
            customized_pruners=self.customized_pruners or None, cost_options=options,
        )
        if self.kind == "latency" and ranks.size > 1:  # rank 0 measures; every rank selects against its table
            table = ranks.from_zero(lambda: pruner.cost_model("latency").table.to_dict())
            if not ranks.zero:
                pruner.use_cost(latency_cost(pruner.structure, table=table, **options["latency"]))
        return pruner

    # ------------------------------------------------------------------ the run
    def _compress(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run, ranks = self.run, Ranks(trainer)
        if ranks.zero:
            run.write_settings(self._settings)
            if not run.exists(RunDirectory.BASE):
                save_module_checkpoint(pl_module, run.file(RunDirectory.BASE))
        data = DataSources(trainer)
        pruner = self._pruner(pl_module, ranks)
        fast = FastPath(self.memory_format)
        self.transform = self._learn(trainer, pruner, data, ranks, fast)
        evaluator = Evaluator(trainer, data, self.monitor, bn_batches=self.bn_batches, seed=self.seed, fast_path=fast)
        if fast.decision is None:  # no search ran: decide for the table's evaluations, on rank 0 for everyone
            fast.load(ranks.from_zero(lambda: evaluator.decide_fast_path(
                pruner.apply(pruner.select(**{self.kind: min(self.budgets)}))
            )))
        with quiet():
            base_metric = evaluator(copy.deepcopy(pl_module), recalibrate=False)
        unpruned = None
        if self.kind == "latency":
            timing = pruner.cost_model("latency").unpruned
            unpruned = {"measured_ms": timing.median_ms, "iqr_ms": timing.iqr_ms}  # as the table measured it
        self.results = [ranks.broadcast(
            self._measure(1.0, pl_module, base_metric, None, run.file(RunDirectory.BASE), unpruned)
        )]
        if self.export_onnx:
            self._export(self.results[0], pl_module, ranks)
        done = ranks.from_zero(run.finished)
        budgets = sorted(self.budgets, reverse=True)
        for i, budget in enumerate(budgets, 1):
            row = done.get(budget)
            if row is None:
                rank_zero_info(f"LeGR: fine-tuning {budget:.0%} of {self._of}, {i} of {len(budgets)}")
                row = self._compress_one(trainer, pruner, data, evaluator, budget, ranks)
            else:
                row.setdefault("kind", self.kind)  # a row written before parameter budgets existed
                row.setdefault("params_ratio", row["params"] / self.results[0]["params"])
                rank_zero_info(
                    f"LeGR: {budget:.0%} of {self._of}, {i} of {len(budgets)}, was finished by an earlier run:"
                    f" {run.relative(row['checkpoint'])}"
                )
            self.results.append(row)
            if self.export_onnx:
                self._export(row, pl_module, ranks)
            if ranks.zero:
                self._write_report(pruner)
        if self.latency:
            times = ranks.from_zero(lambda: self._measure_latency(pl_module))  # the other ranks wait: no contention
            for row, latency in zip(self.results, times):
                row.update(latency)
            if ranks.zero:
                self._write_report(pruner)
        rank_zero_info("\nLeGR results\n" + format_table(run.portable(self.results), self.monitor, run.path))

    def _learn(
        self, trainer: pl.Trainer, pruner: LeGRPruner, data: DataSources, ranks: Ranks, fast: FastPath
    ) -> Transform:
        run = self.run
        if self.transform_path is not None:
            return Transform.from_dict(ranks.from_zero(lambda: Transform.load(self.transform_path).to_dict()))
        saved = ranks.from_zero(
            lambda: Transform.load(run.file(RunDirectory.TRANSFORM)).to_dict() if run.exists(RunDirectory.TRANSFORM) else None
        )
        if saved is not None:
            transform = Transform.from_dict(saved)
            transform.check(pruner.structure.signature(), pruner.criterion.name)
            return transform
        sign = 1.0 if self.mode == "min" else -1.0
        score = Evaluator(
            trainer, data, self.monitor, self.fitness_batches, self.tau, self.tau_lr, self.bn_batches, self.seed,
            fast_path=fast if self.tau == 0 else None, chunked=self.early_rejection,
        )
        rejection = EarlyRejection(score.chunk_sizes()) if self.early_rejection else None
        if rejection is not None and not rejection.can_stop:
            rank_zero_warn(
                f"LeGRCallback(early_rejection=True): the validation data gives {len(rejection.sizes)} fitness batches"
                f" of the {self.fitness_batches} asked for, and a candidate can be stopped only after"
                f" {rejection.min_chunks} of them with some left: every candidate will be scored in full. Validate"
                " in smaller batches, or on more of them, for early rejection to save anything."
            )
        observe = (lambda value, weight: search.observe(sign * value, weight)) if rejection is not None else None
        unreadable_told = False

        def fitness(module: pl.LightningModule) -> float:
            nonlocal unreadable_told
            # the tau steps' batches come from the global RNG: seeded by the candidate's generation, a resumed
            # search (or another rank) gives every candidate the batches the uninterrupted one would have
            with seeded(derive_seed(self.seed, CANDIDATE, search.evaluating)):
                value = score(module, observe=observe)
            for part, seconds in score.last_split.items():
                search.add_split(part, seconds)
            if score.unreadable and not unreadable_told and ranks.zero:  # a plain warning: quiet() keeps the user's
                unreadable_told = True
                warnings.warn(
                    f"LeGRCallback(early_rejection=True): `monitor={self.monitor!r}` is not logged batch by batch as"
                    " a tensor averaged over the epoch (e.g. it is a torchmetrics object), so candidates are scored"
                    f" in full. Log a tensor, `self.log({self.monitor!r}, loss)`, to stop hopeless ones early.",
                    UserWarning, stacklevel=2,
                )
            return sign * value if math.isfinite(value) else math.inf  # NaN or +-inf: the worst, in either mode

        state_file = run.file(RunDirectory.SEARCH_STATE)
        state = ranks.from_zero(lambda: read_json(state_file) if run.exists(RunDirectory.SEARCH_STATE) else None)
        search = LeGRSearch(
            pruner, fitness, self.search_budgets, state_path=state_file if ranks.zero else None,
            fitness_name=f"`monitor={self.monitor!r}`", workers=RankWorkers(ranks) if ranks.size > 1 else None,
            kind=self.kind,
            generations=self.generations, population=self.population, sample_size=self.sample_size,
            mutation_rate=self.mutation_rate, sigma=self.sigma, seed=self.seed,
            reuse_fitness=self.reuse_fitness and self.tau == 0,  # tau steps on random batches: a random fitness
            early_rejection=rejection,
        )
        if state is not None and not ranks.zero:  # rank 0 read the file itself; the others take its copy
            search.load_state_dict(state)
        if self.tau == 0:  # decided once, on rank 0's first candidate; a resumed search keeps its decision
            with quiet():
                decision = search.notes.get("fast_path") or ranks.from_zero(
                    lambda: score.decide_fast_path(pruner.prune(self.search_budgets[0]))
                )
            fast.load(decision)
            search.notes["fast_path"] = decision
        summary = pruner.structure.summary()
        if ranks.zero:
            write_text(run.file(RunDirectory.STRUCTURE), summary + "\n")
            write_json(run.file(RunDirectory.LAYERS), {"layers": pruner.structure.layer_table()})
        rank_zero_info(summary)
        rank_zero_info(
            f"LeGR: learning the ranking, {self.generations} candidates at"
            f" {', '.join(f'{b:.0%}' for b in self.search_budgets)} of {self._of}"
            + (f", {ranks.size} at a time on {ranks.size} ranks" if ranks.size > 1 else "")
            + f" (the layers above: {RunDirectory.STRUCTURE}, {RunDirectory.LAYERS})"
        )
        names = [g.name for g in pruner.structure.groups]
        bar = tqdm(
            total=self.generations, initial=search.evolution.generation, desc="LeGR search", unit="gen",
            disable=trainer.progress_bar_callback is None or not ranks.zero, dynamic_ncols=True,
        )
        non_finite = 0

        def on_generation(gen: Generation) -> None:
            nonlocal non_finite
            metrics = {"legr/fitness": sign * gen.fitness, "legr/best": sign * gen.best_fitness}
            metrics["legr/population_mean"] = sign * gen.mean_fitness
            metrics["legr/non_finite"] = float(gen.non_finite)
            metrics.update({f"legr/width/{n}": float(w) for n, w in zip(names, gen.widths)})
            metrics.update(_generation_costs(gen, search))
            if ranks.zero:
                for logger in trainer.loggers:
                    logger.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)}, step=gen.generation)
            if gen.non_finite:
                non_finite += 1
                rank_zero_info(
                    f"LeGR: candidate {gen.generation} scored a NaN or infinite {self.monitor}; it counts as the worst"
                    f" ({non_finite} so far)."
                )
            bar.update(1)
            postfix = {f"best {self.monitor}": f"{sign * gen.best_fitness:.4f}", "s/gen": f"{gen.seconds:.2f}"}
            if search.reuse_fitness:
                postfix["cached"] = search.cache_hits
            if rejection is not None:
                postfix["rejected"] = search.rejections
            bar.set_postfix(postfix)

        with bar, quiet():
            transform = search.run(on_generation)
        transform.info.update(monitor=self.monitor, mode=self.mode, best_metric=sign * search.evolution.best_fitness)
        if ranks.zero:
            transform.save(run.file(RunDirectory.TRANSFORM))
        return transform

    def _compress_one(
        self, trainer: pl.Trainer, pruner: LeGRPruner, data: DataSources, evaluator: Evaluator, budget: float,
        ranks: Ranks,
    ) -> Dict[str, Any]:
        directory = self.run.budget_dir(budget)
        fit = None
        if self.kind == "latency":  # measured end to end and corrected on rank 0; every rank prunes the same
            fit = ranks.from_zero(lambda: meet_latency(pruner, budget, self.transform)[1].to_dict())
            selection = pruner.select(transform=self.transform, latency=fit["table_budget"])
            module = pruner.apply(selection, {"fit": fit})
            self._report_fit(fit)
        else:
            module = pruner.prune(transform=self.transform, **{self.kind: budget})
        with quiet():
            evaluator.recalibrate(module)
            before = evaluator(copy.deepcopy(module), recalibrate=False)
        pruned = os.path.join(directory, RunDirectory.PRUNED)
        if ranks.zero:
            save_module_checkpoint(module, pruned)  # before fine-tuning changes it
        path, after = pruned, None
        if self.finetune_epochs > 0:
            resume = ranks.from_zero(lambda: self.run.last_checkpoint(budget))
            path, after = finetune(
                module, trainer, data, self.finetune_epochs, directory, self.monitor, self.mode,
                prefix=f"{self.kind}_{budget_name(budget)}", seed=derive_seed(self.seed, FINETUNE, budget),
                resume_from=resume,
            )
            if _better(before, after, self.mode):
                self._warn_finetuning_did_not_help(budget, before, after, pruned)
                path = pruned
        row = ranks.broadcast(self._measure(budget, module, before, after, path, fit))  # rank 0's decisions for all
        if ranks.zero:
            self.run.save_finished(row)
        return row

    def _warn_finetuning_did_not_help(self, budget: float, before: float, after: Optional[float], pruned: str) -> None:
        tuned = "no value" if after is None else f"{after:.4f}"
        rank_zero_warn(
            f"LeGR: fine-tuning at {budget:.0%} of {self._of} did not improve on the pruned model ({self.monitor}"
            f" {before:.4f} pruned, {tuned} fine-tuned, the best of finetune_epochs={self.finetune_epochs}), so the"
            f" results point to {os.path.abspath(pruned)}. Lower the learning rate in configure_optimizers, or"
            " raise finetune_epochs."
        )

    def _report_fit(self, fit: Dict[str, Any]) -> None:
        how = "within" if fit["within"] else "NOT within"
        limit = "its spread" if fit["spread_limited"] else "5%"
        message = (
            f"LeGR: {fit['budget']:.0%} of the measured latency: {fit['ratio']:.3f} of the unpruned network timed beside"
            f" it (IQR {fit['ratio_iqr']:.3f}; {fit['measured_ms']:.3f} ms against {fit['unpruned_ms']:.3f} ms), {how}"
            f" {limit} of {fit['budget']:.3f} ({fit['measurements']} networks measured)"
        )
        (rank_zero_info if fit["within"] else rank_zero_warn)(message)

    def _measure(
        self, budget: float, module: pl.LightningModule, before: float, after: Optional[float], path: str,
        fit: Optional[Dict[str, Any]] = None,
    ) -> Dict[str, Any]:
        flops, params = count_flops(module, self._example), count_params(module)
        row = {
            "budget": budget,
            "kind": self.kind,
            "flops": flops,
            "flops_ratio": flops / self.results[0]["flops"] if self.results else 1.0,
            "params": params,
            "params_ratio": params / self.results[0]["params"] if self.results else 1.0,
            "metric_before": before,
            "metric_after": after,
            "checkpoint": os.path.abspath(path),
        }
        if fit is not None:  # the end-to-end latency at the budgets' setting (the unpruned row: the table's)
            row["latency_ms"], row["latency_iqr_ms"] = fit["measured_ms"], fit["iqr_ms"]
            row["latency_ratio"] = 1.0
            if "target_ms" in fit:  # a budget: its share of the unpruned network timed beside it, as judged
                row.update(latency_ratio=fit["ratio"], latency_ratio_iqr=fit["ratio_iqr"],
                           latency_unpruned_ms=fit["unpruned_ms"], latency_target_ms=fit["target_ms"],
                           latency_within=fit["within"], latency_spread_limited=fit["spread_limited"])
        return row

    def _measure_latency(self, pl_module: pl.LightningModule) -> List[Dict[str, Any]]:
        """Every network of the run timed side by side (rebuilt from its checkpoint: the table's own files);
        the latency columns of every row."""
        networks: Dict[Any, Any] = {row["budget"]: self._network(row, pl_module) for row in self.results}
        exported = [row["budget"] for row in self.results if self.export_onnx and row.get("onnx")]
        networks.update({(budget, "onnx"): self._onnx_runner(budget) for budget in exported})  # interleaved with them
        rank_zero_info(f"LeGR: measuring the CPU latency of {len(networks)} networks side by side")
        times = measure_latencies(networks, self._example, LATENCY_BATCHES, threads=self.latency_threads)
        return [
            {**latency_columns(times[b]), **(latency_columns(times[(b, "onnx")], "onnx") if b in exported else {})}
            for b in (row["budget"] for row in self.results)
        ]

    def _network(self, row: Dict[str, Any], pl_module: pl.LightningModule) -> pl.LightningModule:
        """The network of a results row, rebuilt from its checkpoint (the table's own files)."""
        if row["budget"] == 1.0:
            return pl_module
        state = load_checkpoint(row["checkpoint"])["state_dict"]
        return restore(copy.deepcopy(pl_module), state_dict=state, customized_pruners=self.customized_pruners or None)

    def _onnx_runner(self, budget: float) -> "onnx.OnnxRunner":
        row = next(r for r in self.results if r["budget"] == budget)
        return onnx.OnnxRunner(row["onnx"], threads=self.latency_threads)

    # ------------------------------------------------------------------ ONNX
    def _check_exportable(self, pl_module: pl.LightningModule) -> None:
        """Export the unpruned model once, to nowhere: a model that cannot be exported is refused before
        any training (its pruned copies run the same code)."""
        with tempfile.TemporaryDirectory() as folder:
            try:
                onnx.export_onnx(pl_module, self._example, os.path.join(folder, RunDirectory.ONNX))
            except onnx.ExportError as err:
                raise onnx.ExportError(f"LeGRCallback(export_onnx=True): {err} Or set export_onnx=False.") from None

    def _export(self, row: Dict[str, Any], pl_module: pl.LightningModule, ranks: Ranks) -> None:
        """Add a row's ONNX file (rank 0 exports it) and its difference from PyTorch; keep them in budgets.json."""
        row.update(ranks.from_zero(lambda: self._export_one(row, pl_module)))
        if ranks.zero and row["budget"] != 1.0:
            self.run.save_finished(row)

    def _export_one(self, row: Dict[str, Any], pl_module: pl.LightningModule) -> Dict[str, Any]:
        run, budget = self.run, row["budget"]
        path = run.file(RunDirectory.BASE_ONNX) if budget == 1.0 else os.path.join(run.budget_dir(budget), RunDirectory.ONNX)
        network, report = self._network(row, pl_module), None
        if os.path.exists(path):  # an earlier run's: checked, not exported again
            try:
                report = onnx.check_onnx(network, self._example, path)
            except onnx.ExportError:  # not this network's (cut off between a checkpoint and its export)
                report = None
        if report is None:
            rank_zero_info(f"LeGR: exporting {'the unpruned model' if budget == 1.0 else f'{budget:.0%}'} to {run.relative(path)}")
            report = onnx.export_onnx(network, self._example, path)
        return {"onnx": os.path.abspath(path), "onnx_max_abs_diff": report.max_abs_diff}

    def _write_report(self, pruner: LeGRPruner) -> None:
        run = self.run
        write_results(
            run.portable(self.results), run.file("results.csv"), run.file("results.json"),
            extra={"monitor": self.monitor, "mode": self.mode, "transform": self.transform.to_dict()},
        )
        plot_metric(self.results, self.monitor, run.file(f"metric_vs_{self.kind}.png"), kind=self.kind)
        groups = pruner.structure.groups
        for budget in self.budgets:
            if any(r["budget"] == budget for r in self.results):
                kept = pruner.select(transform=self.transform, **{self.kind: budget}).widths
                plot_widths(
                    [g.name for g in groups], [g.width for g in groups], kept,
                    run.file(f"widths_{budget_name(budget)}.png"), f"channels kept at {budget:.0%} of {self._of}",
                )


_SHARE_OF = {"flops": "the FLOPs", "params": "the parameters", "latency": "the measured latency"}
_BUDGET_ARGUMENT = {"flops": "flops", "params": "params", "latency": "latency_budgets"}


def _budget_kind(flops: Any, params: Any, latency: Any, search_flops: Any, search_params: Any):
    """``(kind, budgets, search budgets)`` from the callback's arguments: budgets of one kind, given once."""
    given = {k: v for k, v in (("flops", flops), ("params", params), ("latency", latency)) if v is not None}
    names = [f"`{_BUDGET_ARGUMENT[k]}`" for k in given]
    if len(given) > 1:
        raise ConfigurationError(
            f"Give one kind of budgets, not {' and '.join(names)}: one run prunes to budgets of one kind (a learned"
            " transform can be applied to budgets of another kind later, with `transform=` and no new search). On"
            " the command line, with a config that sets flops, add --legr.flops=null."
        )
    if not given:
        raise ConfigurationError(
            "Give the budgets: `flops=[0.3, 0.5, 0.7]` (shares of the FLOPs), `params=[0.3, 0.5]` (of the parameters)"
            " or `latency_budgets=[0.5, 0.7]` (of the measured latency)."
        )
    (kind, budgets), = given.items()
    searches = {"flops": search_flops, "params": search_params}
    for other, search in searches.items():
        if other != kind and search is not None:
            wanted = f" Use `search_{kind}`." if kind in searches else " The search prunes to the smallest of them."
            raise ConfigurationError(
                f"`search_{other}` was given with budgets of {_SHARE_OF[kind]}: the search prunes to budgets of the"
                f" run's kind.{wanted}"
            )
    return kind, budgets, searches.get(kind)


def _generation_costs(gen: Generation, search: LeGRSearch) -> Dict[str, float]:
    """What a generation cost, for the loggers: its seconds, their split where this rank evaluated it,
    whether its fitness was reused (``legr/cached``) with the run's count so far (``legr/cache_hits``), and
    with early rejection, whether it is a bound (``legr/rejected``), the candidates stopped so far
    (``legr/rejections``) and the weight (images) of fitness data they were not scored on (``legr/saved``)."""
    costs = {"legr/seconds": gen.seconds, "legr/cached": float(gen.cached), "legr/cache_hits": float(search.cache_hits)}
    if search.early_rejection is not None:
        costs.update({"legr/rejected": float(gen.rejected), "legr/rejections": float(search.rejections),
                      "legr/saved": search.saved})
    costs.update({f"legr/seconds/{part}": seconds for part, seconds in (gen.split or {}).items()})
    return costs


def _check_int(name: str, value: Any, minimum: int, alternative: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"`{name}` must be an integer >= {minimum}{' ' + alternative if alternative else ''}, got {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _class_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _hparams(obj: Any) -> Dict[str, Any]:
    """The hyperparameters that make a recipe, without the bookkeeping keys LightningCLI adds (``_class_path``,
    ``_instantiator``): a run started from the command line and the same run from Python are one run."""
    return {k: v for k, v in dict(obj.hparams).items() if not str(k).startswith("_")}


def _digest(transform: Transform) -> str:
    """The same for the same transform, wherever its file lies."""
    data = transform.to_dict()
    data.pop("info", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _better(value: float, than: Optional[float], mode: str) -> bool:
    """Whether ``value`` is a better ``monitor`` than ``than``; any finite value beats a missing one."""
    if not math.isfinite(value):
        return False
    if than is None or not math.isfinite(than):
        return True
    return value < than if mode == "min" else value > than


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
