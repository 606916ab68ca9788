"""Fine-tuning a pruned model with the user's own ``training_step`` and ``configure_optimizers``, resumably.

It runs with the outer Trainer's strategy: under DDP on all its ranks, each on a shard of the training
data, checkpoints saved once. Each epoch's randomness (data order, dropout, augmentation) is seeded from
the run's seed, the budget, the epoch and the rank, so an interrupted fine-tune resumed from ``last.ckpt``
ends exactly where an uninterrupted one does.
"""

import contextlib
import os
from typing import Any, Dict, Iterator, List, Optional, Tuple

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.seed import isolate_rng
from typing_extensions import override

from lightning_legr import _compat
from lightning_legr._random import derive_seed, seed_all
from lightning_legr.checkpoint import load_checkpoint
from lightning_legr.distributed import companion_kwargs
from lightning_legr.evaluation import DataSources, quiet

__all__ = ["finetune"]

BEST = "best"
LAST = "last"


class _PortableCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that finds its files again in a run directory that was moved or copied.

    Lightning forgets the best score and paths when a checkpoint's folder differs from the one it was
    saved in; here the saved paths are moved along with the folder instead. No version counter: the
    file names are the run directory's own (``best.ckpt``, ``last.ckpt``), never ``best-v1.ckpt``.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(enable_version_counter=False, **kwargs)

    @override
    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and os.path.realpath(old) != os.path.realpath(self.dirpath):

            def move(path: Any) -> Any:
                return os.path.join(self.dirpath, os.path.relpath(path, old)) if path else path

            state_dict = dict(state_dict, dirpath=self.dirpath)
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                state_dict[key] = move(state_dict.get(key, ""))
            state_dict["best_k_models"] = {move(k): v for k, v in state_dict.get("best_k_models", {}).items()}
        super().load_state_dict(state_dict)


class _SeedEveryEpoch(Callback):
    """Seed the global generators at the start of every epoch from ``seed``, the epoch and the rank."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._first = True

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._first = True

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seed_all(derive_seed(self.seed, trainer.current_epoch, trainer.global_rank))
        if self._first:  # this epoch's iterator was made before this hook: make it again, from this seed
            _compat.restart_train_iterator(trainer)
            self._first = False


def finetune(
    module: pl.LightningModule,
    outer: pl.Trainer,
    data: DataSources,
    epochs: int,
    dirpath: str,
    monitor: str,
    mode: str,
    prefix: str,
    seed: int,
    resume_from: Optional[str] = None,
) -> Tuple[str, Optional[float]]:
    """Fine-tune ``module`` for ``epochs``, keeping the best checkpoint by ``monitor`` (``best.ckpt``) and the
    last epoch's (``last.ckpt``, saved every epoch). The outer Trainer's loggers get the metrics under
    ``prefix``; its global random state is left as it was.

    Args:
        seed: the seed of this fine-tune (derive it from the run's seed and the budget); epoch ``e`` on
            rank ``r`` runs under ``derive_seed(seed, e, r)``.
        resume_from: a ``last.ckpt`` of this fine-tune to go on from (under DDP, decided by rank 0 for all:
            every rank reads it, as Lightning reads any ``ckpt_path``).

    Returns:
        The best checkpoint's path and its ``monitor`` value (None if it was never logged).
    """
    if resume_from is not None:
        load_checkpoint(resume_from)  # a file that would run code is refused with our message, before Lightning reads it
    best = _PortableCheckpoint(dirpath=dirpath, filename=BEST, monitor=monitor, mode=mode, save_top_k=1)
    last = _PortableCheckpoint(dirpath=dirpath, filename=LAST, monitor=None, save_top_k=1)
    with quiet():
        trainer = pl.Trainer(
            max_epochs=epochs,
            logger=outer.loggers or False,
            callbacks=[_SeedEveryEpoch(seed), best, last],  # best saves first: last.ckpt holds its state
            default_root_dir=dirpath,
            enable_progress_bar=outer.progress_bar_callback is not None,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=outer.log_every_n_steps,
            **companion_kwargs(outer),
        )
        _compat.forget_metric_attributes(module)
        datamodule_trainer = data.datamodule.trainer if data.datamodule is not None else None
        with isolate_rng(), _prefixed(outer.loggers, prefix):
            _compat.fit(trainer, module, ckpt_path=resume_from, **data.fit_kwargs())
    if data.datamodule is not None:
        data.datamodule.trainer = datamodule_trainer
    score = best.best_model_score
    return best.best_model_path, (None if score is None else float(score))


@contextlib.contextmanager
def _prefixed(loggers: List[Any], prefix: str) -> Iterator[None]:
    """Log a companion run's metrics under ``prefix``."""
    saved = [(lg, _compat.logger_prefix(lg)) for lg in _compat.prefixable(loggers)]
    for lg, old in saved:
        _compat.set_logger_prefix(lg, f"{old}-{prefix}" if old else prefix)
    try:
        yield
    finally:
        for lg, old in saved:
            _compat.set_logger_prefix(lg, old)
