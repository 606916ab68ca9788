"""Pruned Lightning checkpoints: save one, and load it back into the user's own LightningModule class."""

import contextlib
import io
import os
from typing import Any, Dict, Iterator, Optional, Type, TypeVar

import lightning.pytorch as pl

from lightning_legr import _compat
from lightning_legr.core._io import PathLike, load_torch, save_torch
from lightning_legr.core.errors import ConfigurationError
from lightning_legr.core.surgery import RECORD_KEY, pruning_record, restore

__all__ = ["load_pruned", "save_module_checkpoint", "load_checkpoint"]

M = TypeVar("M", bound=pl.LightningModule)


def load_pruned(
    path: PathLike, cls: Type[M], map_location: Any = None, customized_pruners: Optional[Dict[Any, Any]] = None,
    **kwargs: Any,
) -> M:
    """Load a pruned checkpoint into ``cls``, the LightningModule class it was trained with.

    ``cls.load_from_checkpoint`` alone fails on a pruned checkpoint: the freshly built module has the
    original widths. This builds it the same way (hyperparameters from the checkpoint, ``kwargs``
    override them), replays the pruning record the checkpoint carries (with ``customized_pruners``
    for custom layers, as when pruning), then loads the weights.
    The result gives the same outputs as the module that was saved.

    To train it further: ``best.ckpt`` and ``last.ckpt`` are full Trainer checkpoints, so
    ``trainer.fit(model, ckpt_path=path)`` resumes the fine-tuning (optimizer state, epoch count).
    ``pruned.ckpt`` (like ``base.ckpt``, and any file written by :func:`save_module_checkpoint`) holds
    weights and hyperparameters only: call ``trainer.fit(model)`` without ``ckpt_path``.

    Example::

        model = lightning_legr.load_pruned("legr/flops_0.50/best.ckpt", MyModule)
        trainer.fit(model, datamodule=dm, ckpt_path="legr/flops_0.50/best.ckpt")  # go on training

        model = lightning_legr.load_pruned("legr/flops_0.50/pruned.ckpt", MyModule)
        trainer.fit(model, datamodule=dm)  # weights only: a fresh optimizer

    The file is loaded with ``weights_only=True``: a checkpoint that holds anything but tensors and
    plain data is refused before anything in it can run.

    Raises:
        ConfigurationError: if the file is not a plain checkpoint, or holds no pruning record (it is
            not a pruned model).
    """
    with open(path, "rb") as f:
        data = f.read()
    checkpoint = load_checkpoint(io.BytesIO(data), source=path)
    record = pruning_record(checkpoint.get("state_dict", {}))
    if record is None:
        raise ConfigurationError(
            f"{path} holds no pruning record ({RECORD_KEY!r} is not in its state_dict): it is not a model pruned"
            f" by lightning-legr. Load it with {cls.__name__}.load_from_checkpoint instead."
        )
    with _replay_on_load(cls, record, customized_pruners):
        return _compat.load_from_checkpoint(cls, io.BytesIO(data), map_location=map_location, **kwargs)


def load_checkpoint(file: Any, source: Optional[PathLike] = None) -> Dict[str, Any]:
    """A Lightning checkpoint (a path, or a binary file object read from ``source``) loaded onto the CPU
    with ``weights_only=True``.

    Raises:
        ConfigurationError: if it is not a plain checkpoint (it would run code when loaded), or holds no
            ``state_dict``.
    """
    name = os.fspath(source if source is not None else file)
    checkpoint = load_torch(file, name=name)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ConfigurationError(f"{name} is not a Lightning checkpoint: it has no 'state_dict'.")
    return checkpoint


@contextlib.contextmanager
def _replay_on_load(cls: type, record: Dict[str, Any], customized_pruners: Optional[Dict[Any, Any]]) -> Iterator[None]:
    """While active, ``cls.on_load_checkpoint`` first rebuilds the pruned architecture.

    Lightning calls ``on_load_checkpoint`` after building the module and before loading the state
    dict: the one moment when the shapes can be made to match.
    """
    own = cls.__dict__.get("on_load_checkpoint")
    inherited = cls.on_load_checkpoint

    def on_load_checkpoint(self, checkpoint):
        restore(self, record, customized_pruners=customized_pruners)
        return inherited(self, checkpoint)

    cls.on_load_checkpoint = on_load_checkpoint
    try:
        yield
    finally:
        if own is None:
            del cls.on_load_checkpoint
        else:
            cls.on_load_checkpoint = own


def save_module_checkpoint(module: pl.LightningModule, path: PathLike, extra: Optional[Dict[str, Any]] = None) -> str:
    """Write a minimal Lightning checkpoint of ``module`` (weights and hyperparameters), atomically.

    It loads with ``cls.load_from_checkpoint`` (or :func:`load_pruned` when pruned). It has no
    optimizer state: train from it with ``trainer.fit(model)``, not with ``ckpt_path``.
    """
    checkpoint = {
        "state_dict": module.state_dict(),
        "pytorch-lightning_version": pl.__version__,
        pl.LightningModule.CHECKPOINT_HYPER_PARAMS_KEY: dict(module.hparams),
        **(extra or {}),
    }
    save_torch(path, checkpoint)
    return os.fspath(path)
