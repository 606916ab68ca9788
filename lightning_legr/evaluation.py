"""Candidate evaluation: the user's own ``validation_step`` scores every pruned candidate.

Every candidate is a pruned deep copy of the user's LightningModule, so its own
``validation_step`` (and ``training_step`` for ``tau`` steps) produce the numbers: no second copy of
the user's loss code. Each runs in a fresh, quiet Trainer that inherits the outer one's
accelerator, device and precision.
"""

import contextlib
import itertools
import logging
import math
import time
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional

import lightning.pytorch as pl
import numpy as np
import torch
import torchmetrics
from lightning.pytorch.utilities.data import extract_batch_size
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from lightning_legr import _compat
from lightning_legr._random import BN_BATCHES, FITNESS_ORDER, derive_seed, seeded
from lightning_legr.core.calibration import recalibrate_batchnorm
from lightning_legr.core.errors import ConfigurationError
from lightning_legr.core.fastpath import FastPath

__all__ = ["DataSources", "trainer_kwargs", "Evaluator", "quiet", "batch_inputs", "missing_metric_message"]

_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning")
_LIGHTNING_MODULES = r"(lightning|pytorch_lightning|lightning_fabric|lightning_utilities)(\..*)?\Z"  # not lightning_legr
_depth = 0


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence what every new Trainer prints (device lines, tips, Lightning's warnings about the setup):
    hundreds of copies in a search. The user's own warnings still show, once per place, as usual.

    Re-entrant: only the outermost block changes anything, so that warnings the user's code issues
    for every candidate are not shown again for each one.
    """
    global _depth
    if _depth:
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
        return
    levels = {name: logging.getLogger(name).level for name in _LOGGERS}
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    _depth = 1
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=_LIGHTNING_MODULES)
            warnings.filterwarnings("ignore", category=PossibleUserWarning)
            yield
    finally:
        _depth = 0
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def trainer_kwargs(outer: pl.Trainer) -> Dict[str, Any]:
    """Accelerator, device and precision of the outer Trainer, for a one-device companion."""
    device = outer.strategy.root_device
    accelerator = {"cpu": "cpu", "cuda": "cuda", "mps": "mps"}.get(device.type, outer.accelerator)
    devices = [device.index] if device.type == "cuda" and device.index is not None else 1
    return {"accelerator": accelerator, "devices": devices, "precision": outer.precision}


class DataSources:
    """Where the outer fit got its data: a datamodule, the module's own hooks, or loaders."""

    def __init__(self, trainer: pl.Trainer) -> None:
        self.datamodule = trainer.datamodule
        self._train = _compat.train_data_source(trainer)
        self._val = _compat.val_data_source(trainer)
        self._cache: Dict[str, Any] = {}

    @property
    def has_validation(self) -> bool:
        return self._val.is_defined()

    def fit_kwargs(self) -> Dict[str, Any]:
        """Arguments that give a companion ``fit`` the same data as the outer one."""
        if self.datamodule is not None:
            return {"datamodule": self.datamodule}
        if isinstance(self._train.instance, pl.LightningModule):
            return {}  # the (pruned copy of the) module brings its own *_dataloader hooks
        return {"train_dataloaders": self._train.instance, "val_dataloaders": self._val.instance}

    def loader(self, which: str) -> Any:
        """The validation ("val") or training ("train") dataloader, fetched once."""
        if which not in self._cache:
            self._cache[which] = (self._val if which == "val" else self._train).dataloader()
        return self._cache[which]


def batch_inputs(batch: Any) -> torch.Tensor:
    """The model input of a batch: the batch itself if a tensor, else its first element."""
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise ConfigurationError(
            f"Cannot take the model input from a batch of type {type(batch).__name__}: lightning-legr expects"
            " a tensor or an (input, target) tuple. Set `self.example_input_array` in your LightningModule, and"
            " bn_batches=0 in LeGRCallback."
        )
    return batch


class Evaluator:
    """``monitor`` of a candidate: BatchNorm recalibration, optional ``tau`` training steps, then validation.

    Args:
        outer: the user's Trainer (for accelerator, device, precision).
        data: its data sources.
        monitor: the logged metric to read.
        batches: validation batches to use (None: all).
        tau: training steps before validation.
        tau_lr: learning rate of the plain SGD used for those steps (momentum 0.9, weight decay 5e-4,
            as in the paper's code); None uses the module's own ``configure_optimizers``.
        bn_batches: training batches that re-estimate BatchNorm statistics: the same ones in every
            process, drawn from the training loader under a seed derived from ``seed``.
        seed: the search's seed.
        fast_path: how to prepare a candidate for its validation when ``tau == 0`` (BatchNorm folded,
            memory format; see :class:`~lightning_legr.core.fastpath.FastPath`), once it has a decision
            (:meth:`decide_fast_path`); None: as it is.
        chunked: validate on the first ``batches`` validation batches kept in memory, in one random order
            (seeded by ``seed``, the same for every candidate), so that a call can report every batch's
            ``monitor`` as it goes and stop early (``observe``): the first batches are then a random sample of
            them, even from a loader sorted by class. Needs ``batches``.
    """

    def __init__(
        self,
        outer: pl.Trainer,
        data: DataSources,
        monitor: str,
        batches: Optional[int] = None,
        tau: int = 0,
        tau_lr: Optional[float] = 1e-3,
        bn_batches: int = 0,
        seed: int = 0,
        fast_path: Optional[FastPath] = None,
        chunked: bool = False,
    ) -> None:
        if chunked and batches is None:
            raise ConfigurationError("Scoring candidates batch by batch needs a number of fitness batches, not all of them.")
        self.kwargs = trainer_kwargs(outer)
        self.device = outer.strategy.root_device
        self.data = data
        self.monitor = monitor
        self.batches = batches
        self.tau = tau
        self.tau_lr = tau_lr
        self.bn_batches = bn_batches
        self.seed = seed
        self._bn_inputs: Optional[List[torch.Tensor]] = None
        self.root_dir = outer.default_root_dir
        self.fast_path = fast_path
        self.last_split: Dict[str, float] = {}  # seconds of the last call's BatchNorm recalibration and tau steps
        self.chunked = chunked
        self._chunks: Optional[_Batches] = None
        self.stopped = False  # the last call was stopped early by its ``observe``
        self.unreadable = False  # ``observe`` was given but ``monitor`` is not logged batch by batch

    def chunks(self) -> "_Batches":
        """The fitness batches of a chunked evaluator, in their fixed random order (fetched once)."""
        if self._chunks is None:
            batches = list(itertools.islice(self.data.loader("val"), self.batches))
            order = np.random.Generator(np.random.PCG64(derive_seed(self.seed, FITNESS_ORDER))).permutation(len(batches))
            self._chunks = _Batches([batches[i] for i in order])
        return self._chunks

    def chunk_sizes(self) -> List[int]:
        """The batch size of every chunk, as Lightning weighs them in the mean of a logged metric."""
        return [extract_batch_size(batch) for batch in self.chunks()]

    def recalibrate(self, module: pl.LightningModule) -> None:
        """Re-estimate the module's BatchNorm statistics on ``bn_batches`` training batches."""
        if self.bn_batches == 0:
            return
        if self._bn_inputs is None:
            with seeded(derive_seed(self.seed, BN_BATCHES)):
                batches = itertools.islice(self.data.loader("train"), self.bn_batches)
                self._bn_inputs = [batch_inputs(b) for b in batches]
        module.to(self.device)
        recalibrate_batchnorm(module, (x.to(self.device) for x in self._bn_inputs))

    def decide_fast_path(self, module: pl.LightningModule) -> Dict[str, Any]:
        """Decide the fast path on ``module`` (a candidate copy, changed) from the first validation batch's
        inputs; with batches lightning-legr cannot take the inputs from, candidates stay as they are."""
        try:
            inputs = batch_inputs(next(iter(self.data.loader("val")))).to(self.device)
        except ConfigurationError:
            decision = {"fold_batchnorm": 0, "memory_format": "contiguous", "note": "no tensor input to measure on"}
            self.fast_path.load(decision)
            return decision
        module.to(self.device)
        self.recalibrate(module)
        return self.fast_path.decide(module, inputs)

    def _trainer(self, **kwargs: Any) -> pl.Trainer:
        return pl.Trainer(
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, default_root_dir=self.root_dir, **self.kwargs, **kwargs,
        )

    def metrics(
        self, module: pl.LightningModule, batches: Optional[int] = None, recalibrate: bool = True,
        observe: Optional[Callable[[float, float], bool]] = None,
    ) -> Dict[str, float]:
        """Everything the module logs in validation (after recalibration and ``tau`` steps), as floats.

        ``observe(value, batch_size)`` (a chunked evaluator only) is told ``monitor`` of every batch; when it
        returns True, the validation stops there, ``stopped`` is set and the result is empty.
        """
        batches = self.batches if batches is None else batches
        self.stopped = False
        _compat.forget_metric_attributes(module)
        _keep_metrics_local(module)
        start = time.perf_counter()
        if recalibrate:
            self.recalibrate(module)
        self.last_split = {"bn": time.perf_counter() - start} if recalibrate and self.bn_batches else {}
        with quiet():
            start = time.perf_counter()
            if self.tau > 0:
                if self.tau_lr is not None:
                    params = [p for p in module.parameters() if p.requires_grad]
                    sgd = torch.optim.SGD(params, lr=self.tau_lr, momentum=0.9, weight_decay=5e-4)
                    module.configure_optimizers = lambda: sgd  # the user's schedule is for a long run
                self._trainer(max_steps=self.tau, limit_val_batches=0).fit(
                    module, train_dataloaders=self.data.loader("train")
                )
                self.last_split["tau"] = time.perf_counter() - start
            elif self.fast_path is not None and self.fast_path.decision is not None:
                self.fast_path.prepare(module)  # a copy, validated in eval mode: folding is exact
            limit = 1.0 if batches is None else batches
            if self.chunked and batches == self.batches:
                watch = _BatchWatch(self.monitor, observe)
                try:
                    results = self._trainer(callbacks=[watch]).validate(module, dataloaders=self.chunks(), verbose=False)
                except _Stop:
                    self.stopped = True
                    return {}
                finally:
                    self.unreadable = observe is not None and watch.unreadable
            else:
                results = self._trainer(limit_val_batches=limit).validate(
                    module, dataloaders=self.data.loader("val"), verbose=False
                )
        return {k: float(v) for k, v in (results[0] if results else {}).items()}

    def __call__(
        self, module: pl.LightningModule, batches: Optional[int] = None, recalibrate: bool = True,
        observe: Optional[Callable[[float, float], bool]] = None,
    ) -> float:
        """``monitor`` of the candidate; NaN when it is not finite, or when ``observe`` stopped it."""
        metrics = self.metrics(module, batches, recalibrate, observe)
        if self.stopped:
            return math.nan
        if self.monitor not in metrics:
            raise KeyError(missing_metric_message(self.monitor, metrics))
        value = metrics[self.monitor]
        return value if math.isfinite(value) else math.nan


class _Batches:
    """Batches kept in memory, as one loader (Lightning reads a plain list as a list of loaders)."""

    def __init__(self, batches: List[Any]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Any]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _Stop(Exception):
    """Raised from a validation batch's end to stop the candidate's validation there."""


class _BatchWatch(pl.Callback):
    """Tells ``observe`` the mean ``monitor`` of every validation batch (from the logged running sum), and
    stops the validation when it says so."""

    def __init__(self, monitor: str, observe: Optional[Callable[[float, float], bool]]) -> None:
        self.monitor, self.observe = monitor, observe
        self.last = (0.0, 0.0)
        self.unreadable = False

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if self.observe is None or self.unreadable:
            return
        now = _compat.logged_sum(trainer, self.monitor)
        if now is None:
            self.unreadable = True
            return
        total, count = now[0] - self.last[0], now[1] - self.last[1]
        self.last = now
        if count > 0 and self.observe(total / count, count):
            raise _Stop()


def _keep_metrics_local(module: pl.LightningModule) -> None:
    """Make the candidate's torchmetrics compute on this process alone. In a distributed run they would
    gather their state from every rank, where each rank scores another candidate (and hang when a rank
    has none to score); a candidate's score is its own rank's."""
    for metric in module.modules():
        if isinstance(metric, torchmetrics.Metric):
            metric.distributed_available_fn = _not_distributed


def _not_distributed() -> bool:
    return False


def missing_metric_message(monitor: str, metrics: Dict[str, Any]) -> str:
    available = ", ".join(sorted(metrics)) or "nothing"
    return (
        f"`monitor={monitor!r}` is not logged by the module's validation: it logs {available}."
        f" Log {monitor!r} with `self.log(...)` in `validation_step`, or set `monitor` to one of these."
    )
