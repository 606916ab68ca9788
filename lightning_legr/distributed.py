"""LeGR on the Trainer's own distributed strategy: candidates spread over the ranks, files written by rank 0.

Under DDP every rank runs the whole callback. The evolution is identical on every rank (same seed, same
state, the same saved state broadcast from rank 0 on resume); each step makes one child per rank, rank
``r`` prunes and scores child ``r`` on the same validation batches as every other rank, and the scores
are gathered and told to the evolution in rank order everywhere, with a fingerprint of the evolution's
state compared every step. Rank 0 alone writes files; what one rank decides from the run directory it
broadcasts. Fine-tuning uses the Trainer's strategy across all ranks.
"""

import math
import time
import traceback
from typing import Any, Callable, List, Optional

import lightning.pytorch as pl
import torch.distributed as dist
from lightning.pytorch.strategies import (
    DDPStrategy, DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy, SingleDeviceStrategy,
)

from lightning_legr import _compat
from lightning_legr.core.errors import ConfigurationError
from lightning_legr.evaluation import trainer_kwargs

__all__ = ["Ranks", "RankWorkers", "check_strategy", "companion_kwargs"]

_SHARDED = (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)


def check_strategy(trainer: pl.Trainer) -> None:
    """Refuse, before anything runs, a strategy LeGR cannot run under, saying what to use instead.

    Raises:
        ConfigurationError: for ddp_spawn and its kin, sharded strategies (FSDP, DeepSpeed, model
            parallel) and any strategy that is neither single-device nor DDP.
    """
    strategy = trainer.strategy
    name = type(strategy).__name__
    if isinstance(strategy, _SHARDED):
        raise ConfigurationError(
            f"LeGRCallback cannot run under {name}: it prunes whole filters, and the model's weights are sharded"
            " across the ranks. Pretrain with it and save a checkpoint, then run LeGR under DDP from that"
            " checkpoint: model = MyModule.load_from_checkpoint(path); Trainer(strategy='ddp', devices=N,"
            " max_epochs=0, callbacks=[LeGRCallback(...)]).fit(model, datamodule=dm)."
        )
    if isinstance(strategy, DDPStrategy) and _compat.spawns_processes(strategy):
        raise ConfigurationError(
            "LeGRCallback cannot run under strategy='ddp_spawn' (or 'ddp_fork', 'ddp_notebook'): its processes end"
            " with fit, and the search, the results and the pruned models with them. Use strategy='ddp', which runs"
            " your script once per device, or launch it with torchrun or srun."
        )
    if not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)):
        raise ConfigurationError(
            f"LeGRCallback runs on one device or under DDP (strategy='ddp'), not under {name}."
        )


def companion_kwargs(outer: pl.Trainer) -> dict:
    """Trainer arguments that run a companion fit on all the outer Trainer's processes, as it runs."""
    if not isinstance(outer.strategy, DDPStrategy) or outer.world_size == 1:
        return trainer_kwargs(outer)
    return {
        "accelerator": outer.accelerator,
        "devices": outer.num_devices,
        "num_nodes": outer.num_nodes,
        "strategy": _compat.companion_ddp_strategy(outer.strategy),
        "precision": outer.precision,
    }


class Ranks:
    """The ranks of the outer Trainer: who writes, and how a decision of rank 0 reaches everyone."""

    def __init__(self, trainer: pl.Trainer) -> None:
        self.strategy = trainer.strategy
        self.rank = trainer.global_rank
        self.size = trainer.world_size

    @property
    def zero(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        return self.strategy.broadcast(obj, src=0) if self.size > 1 else obj

    def barrier(self, name: str) -> None:
        if self.size > 1:
            self.strategy.barrier(name)

    def from_zero(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run on rank 0 only, its result on every rank; if it raises, every rank raises."""
        if self.size == 1:
            return fn()
        result, error = None, None
        if self.zero:
            try:
                result = fn()
            except Exception as err:  # noqa: BLE001 - every rank must learn that rank 0 failed, or the others hang
                error = err
        message = None if error is None else (isinstance(error, ConfigurationError), type(error).__name__, str(error))
        result, message = self.broadcast((result, message))
        if error is not None:
            raise error
        if message is not None:
            configuration, kind, text = message
            if configuration:  # the same message on every rank: a bad setting, not a crash
                raise ConfigurationError(text)
            raise RuntimeError(f"LeGR: rank 0 failed, so every rank stops: {kind}: {text}")
        return result


class RankWorkers:
    """The core's workers protocol over the ranks of a distributed run: one candidate per rank per step.

    Rank ``r`` evaluates candidate ``r`` (ranks beyond the step's count wait); the values and every rank's
    evolution fingerprint are gathered; all ranks get the values in order, or all raise together: when the
    fingerprints differ (the ranks' searches diverged) or a rank's evaluation failed.

    Args:
        ranks: the outer Trainer's ranks.
        gather: gathers one object per rank, in rank order (``torch.distributed.all_gather_object``).
    """

    def __init__(self, ranks: Ranks, gather: Optional[Callable[[Any], List[Any]]] = None) -> None:
        self.ranks = ranks
        self.size = ranks.size
        self.gather = gather or _all_gather
        self.evaluate_seconds = 0.0  # this rank's time in its candidates (prune, BatchNorm, evaluation)
        self.wait_seconds = 0.0  # its time waiting for the others and exchanging the results

    def map(self, evaluate: Callable[[int], Any], count: int, digest: str) -> List[Any]:
        start = time.perf_counter()
        value, failure = math.nan, None
        if self.ranks.rank < count:
            try:
                value = evaluate(self.ranks.rank)
            except Exception as err:  # noqa: BLE001 - tell the others, then raise
                failure = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
                error = err
        done = time.perf_counter()
        gathered = self.gather((value, digest, failure))
        self.evaluate_seconds += done - start
        self.wait_seconds += time.perf_counter() - done
        failed = [(r, f) for r, (_, _, f) in enumerate(gathered) if f is not None]
        if failed:
            if failure is not None:
                raise error
            rank, text = failed[0]
            raise RuntimeError(f"LeGR: rank {rank} failed to evaluate its candidate, so every rank stops: {text}")
        digests = [d for _, d, _ in gathered]
        if len(set(digests)) > 1:
            raise RuntimeError(
                "LeGR: the ranks' searches disagree (evolution fingerprints " + ", ".join(
                    f"rank {r}: {d}" for r, d in enumerate(digests)
                ) + "): they must run the same code with the same settings, seed and saved state. Start the run"
                " again; if it persists, the ranks see different models or data (e.g. a model built with an"
                " unseeded random width)."
            )
        return [v for v, _, _ in gathered[:count]]


def _all_gather(obj: Any) -> List[Any]:
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
