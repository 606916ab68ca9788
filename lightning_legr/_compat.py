"""The private Lightning attributes lightning-legr reaches, all here: a Lightning upgrade touches this file only.

Checked against Lightning 2.2 to 2.6.
"""

import inspect
from typing import Any, List, Optional, Tuple

import lightning.pytorch as pl

__all__ = [
    "train_data_source", "val_data_source", "logger_prefix", "set_logger_prefix", "forget_metric_attributes",
    "restart_train_iterator", "epochs_done", "logged_sum", "end_pretraining", "fit", "load_from_checkpoint", "prefixable", "spawns_processes", "companion_ddp_strategy",
]


def train_data_source(trainer: pl.Trainer) -> Any:
    """Where the fit's training data comes from (a datamodule, the module's hooks, or loaders)."""
    return trainer.fit_loop._data_source


def val_data_source(trainer: pl.Trainer) -> Any:
    return trainer.fit_loop.epoch_loop.val_loop._data_source


def logger_prefix(logger: Any) -> Optional[str]:
    """The prefix Lightning's own loggers put before every metric name (None: the logger has none)."""
    return getattr(logger, "_prefix", None)


def set_logger_prefix(logger: Any, prefix: str) -> None:
    logger._prefix = prefix


def prefixable(loggers: List[Any]) -> List[Any]:
    return [lg for lg in loggers if hasattr(lg, "_prefix")]


def forget_metric_attributes(module: pl.LightningModule) -> None:
    """A deep copy inherits the original's cache of torchmetrics attribute names, keyed by the original
    metric objects; Lightning would then not find the copy's metrics when they are logged. Lightning
    itself clears this cache at teardown."""
    module._metric_attributes = None


def logged_sum(trainer: pl.Trainer, name: str) -> Optional[Tuple[float, float]]:
    """``(sum of value x batch size, sum of batch sizes)`` so far in the running loop of the metric logged as
    ``name``, when it is a tensor averaged over the epoch (``self.log(name, tensor)`` in ``validation_step``);
    None when it is not logged (yet) that way, e.g. a torchmetrics object, whose batches cannot be told apart."""
    results = trainer._results
    for metric in (results or {}).values():
        meta = getattr(metric, "meta", None)
        if meta is None or meta.name != name or not getattr(metric, "is_tensor", False):
            continue
        if not (meta.on_epoch and meta.is_mean_reduction):
            return None
        return float(metric.value), float(metric.cumulated_batch_size)
    return None


def restart_train_iterator(trainer: pl.Trainer) -> None:
    """Make the training iterator anew. Lightning makes the first epoch's iterator (and a resumed
    epoch's) before ``on_train_epoch_start``, every later one after it; calling this from that hook
    makes every epoch's data order come from the random state the hook leaves."""
    iter(trainer.fit_loop._data_fetcher)


def epochs_done(trainer: pl.Trainer) -> int:
    return trainer.fit_loop.epoch_progress.current.processed


def end_pretraining(trainer: pl.Trainer) -> None:
    """Leave the fit no epoch to train, whatever ``max_epochs`` and ``min_epochs`` say."""
    trainer.fit_loop.max_epochs = epochs_done(trainer)
    trainer.fit_loop.min_epochs = 0


def fit(trainer: pl.Trainer, module: pl.LightningModule, ckpt_path: Optional[str] = None, **kwargs: Any) -> None:
    """``trainer.fit``, resuming from ``ckpt_path`` with ``weights_only=True`` where Lightning takes that
    argument (2.5 and later; earlier ones load with torch's default, which is ``True`` from torch 2.6)."""
    if ckpt_path is not None and "weights_only" in inspect.signature(trainer.fit).parameters:
        kwargs["weights_only"] = True
    trainer.fit(module, ckpt_path=ckpt_path, **kwargs)


def load_from_checkpoint(cls: type, source: Any, **kwargs: Any) -> Any:
    """``cls.load_from_checkpoint`` with ``weights_only=True`` where Lightning takes that argument."""
    if "weights_only" in inspect.signature(cls.load_from_checkpoint).parameters:
        kwargs["weights_only"] = True
    return cls.load_from_checkpoint(source, **kwargs)


def spawns_processes(strategy: Any) -> bool:
    """Whether the strategy's processes are started by torch.multiprocessing (ddp_spawn, ddp_fork,
    ddp_notebook): they end with ``fit``, and whatever a callback holds in them with it."""
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    return isinstance(getattr(strategy, "_launcher", None), _MultiProcessingLauncher)


def companion_ddp_strategy(strategy: Any) -> Any:
    """A new DDPStrategy with the settings of ``strategy`` (a DDPStrategy bound to another Trainer), for a
    companion Trainer in the processes ``strategy`` runs in: it joins their process group, it starts no
    processes of its own."""
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(
        cluster_environment=strategy.cluster_environment, process_group_backend=strategy.process_group_backend,
        timeout=strategy._timeout, **strategy._ddp_kwargs,
    )
