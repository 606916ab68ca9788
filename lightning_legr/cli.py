"""The ``lightning-legr`` command: LightningCLI with LeGR's options, a ``prune`` subcommand and the demo.

    lightning-legr fit --config config.yaml --legr.flops "[0.3, 0.5]"   # pretrain, search, fine-tune
    lightning-legr prune --config config.yaml --ckpt_path base.ckpt \\
        --legr.transform transform.json --legr.flops "[0.2]"             # new budgets, no search
    lightning-legr demo                                                  # the bundled digits demo

``--legr.*`` are the arguments of :class:`~lightning_legr.LeGRCallback`, which the command adds to
the Trainer. In your own LightningCLI script, add it with
``--trainer.callbacks+=lightning_legr.LeGRCallback --trainer.callbacks.flops=[0.3,0.5]``; the short
name ``LeGRCallback`` works once the class is imported: ``import lightning_legr`` after Lightning's
imports does it.
"""

import hashlib
import io
import sys
import warnings
from typing import List, Optional

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_legr import _compat
from lightning_legr.callback import LeGRCallback
from lightning_legr.checkpoint import load_checkpoint
from lightning_legr.core.errors import ConfigurationError

__all__ = ["LeGRTrainer", "LeGRCLI", "main", "DEMO_CONFIG"]

from lightning_legr.demos import DEMO_CONFIG


class LeGRTrainer(pl.Trainer):
    """A Trainer with a :meth:`prune` entry point for models that are already trained."""

    def prune(
        self, model: pl.LightningModule, datamodule: Optional[pl.LightningDataModule] = None, ckpt_path: Optional[str] = None
    ) -> None:
        """Prune a trained model to the LeGRCallback's budgets with its saved ``transform``: no
        training before, no search; then fine-tune and report as usual.

        Args:
            model: the LightningModule, with the trained weights or with ``ckpt_path``.
            datamodule: the data (validation is needed; training data for fine-tuning).
            ckpt_path: a checkpoint whose ``state_dict`` holds the trained weights (e.g. a run's ``base.ckpt``);
                nothing else is read from it, and it is loaded with ``weights_only=True``.
        """
        callbacks = [c for c in self.callbacks if isinstance(c, LeGRCallback)]
        if not callbacks or callbacks[0].transform_path is None:
            raise ConfigurationError(
                "`prune` needs a LeGRCallback with a saved transform: pass --legr.transform path/to/transform.json"
            )
        if ckpt_path is not None:
            with open(ckpt_path, "rb") as f:
                data = f.read()
            model.load_state_dict(load_checkpoint(io.BytesIO(data), source=ckpt_path)["state_dict"])
            # other weights make another run: a run directory is only reused for these very weights
            callbacks[0].pretrained_weights = hashlib.sha256(data).hexdigest()[:16]
        _compat.end_pretraining(self)  # the model is trained: fit only to run the callback
        self.fit(model, datamodule=datamodule)


class LeGRCLI(LightningCLI):
    """LightningCLI with ``--legr.*`` (LeGRCallback's arguments) and the ``prune`` subcommand."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("trainer_class", LeGRTrainer)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        # running the same command again is how a cut-off run resumes: let it rewrite its config.yaml
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands():
        return {
            "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
            "prune": {"model", "datamodule"},
        }

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(LeGRCallback, "legr")

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the hyperparameters of `--ckpt_path` into `--model`, which in subclass mode
        # fails for any checkpoint without a class path (one saved from Python, or by a plain
        # LightningCLI). `prune` takes only the weights from it (LeGRTrainer.prune); --model builds the module.
        if self.config.get("subcommand") == "prune":
            return
        super()._parse_ckpt_path()


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of the ``lightning-legr`` console command.

    A bad setting (a :class:`~lightning_legr.core.errors.ConfigurationError`, raised before any compute)
    is printed as one line, and the command exits with status 2, as for any other bad argument.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        argv = ["fit", "--config", DEMO_CONFIG, *argv[1:]]
    try:
        with warnings.catch_warnings():  # we pass sys.argv ourselves, on purpose
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            LeGRCLI(args=argv)
    except ConfigurationError as err:
        sys.stderr.write(f"lightning-legr: error: {err}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
