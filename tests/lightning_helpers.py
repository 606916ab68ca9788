"""Tiny Lightning pieces shared by the callback, checkpoint and CLI tests."""

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.nn import functional as F

from lightning_legr.demos.digits import DigitsClassifier, DigitsDataModule


def tiny_module(cls=None, **kwargs) -> DigitsClassifier:
    torch.manual_seed(0)
    return (cls or DigitsClassifier)(width=kwargs.pop("width", 8), **kwargs)


def tiny_data() -> DigitsDataModule:
    return DigitsDataModule(batch_size=128)


def trainer(tmp_path, callbacks, max_epochs=1, **kwargs) -> pl.Trainer:
    kwargs.setdefault("logger", CSVLogger(str(tmp_path), name="logs"))
    kwargs.setdefault("enable_progress_bar", False)
    return pl.Trainer(
        max_epochs=max_epochs, callbacks=callbacks, default_root_dir=str(tmp_path), accelerator="cpu", devices=1,
        enable_model_summary=False, log_every_n_steps=1, **kwargs,
    )


# "contiguous": many tests compare separate runs bit for bit, which a timing-based "auto" could make differ in
# the last digits (the shared finished run keeps "auto")
SMALL_SEARCH = dict(generations=5, population=3, sample_size=2, finetune_epochs=1, latency=False, memory_format="contiguous")


class CountingClassifier(DigitsClassifier):
    """Counts training steps, to prove that a check failed before any training."""

    steps = 0

    def training_step(self, batch, batch_idx):
        CountingClassifier.steps += 1
        return super().training_step(batch, batch_idx)


class LinearOnly(pl.LightningModule):
    """No convolution at all: nothing LeGR can prune."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        self.example_input_array = torch.zeros(1, 1, 8, 8)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
