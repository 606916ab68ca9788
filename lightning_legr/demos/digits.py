"""The demo: a small CNN on scikit-learn's bundled 8x8 digits, which needs no download."""

from typing import Optional

import lightning.pytorch as pl
import torch
import torchmetrics
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["SmallCNN", "DigitsDataModule", "DigitsClassifier"]


class SmallCNN(nn.Module):
    """A small VGG-style CNN, sized for 8x8 digit images (scikit-learn's bundled digits)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(
            block(in_channels, width),
            block(width, width),
            nn.MaxPool2d(2),
            block(width, 2 * width),
            block(2 * width, 2 * width),
            nn.MaxPool2d(2),
            block(2 * width, 4 * width),
        )
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class DigitsDataModule(pl.LightningDataModule):
    """scikit-learn's 1797 8x8 handwritten digits: a fixed, stratified train / val / test split.

    Args:
        batch_size: batch size of every loader.
        val_size: share of the images held out for validation (search fitness, checkpoint choice).
        test_size: share held out for the final test.
        seed: seed of the split.
    """

    def __init__(self, batch_size: int = 64, val_size: float = 0.2, test_size: float = 0.2, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.val_size, self.test_size, self.seed = val_size, test_size, seed

    def setup(self, stage: Optional[str] = None) -> None:
        if hasattr(self, "train_set"):
            return
        try:
            from sklearn.datasets import load_digits
            from sklearn.model_selection import train_test_split
        except ImportError as err:  # pragma: no cover - depends on the install
            raise ImportError("The digits demo needs scikit-learn: pip install 'lightning-legr[examples]'") from err
        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        x = (x - 0.5) / 0.5
        y = torch.tensor(digits.target, dtype=torch.long)
        rest, test = train_test_split(range(len(y)), test_size=self.test_size, random_state=self.seed, stratify=y)
        share = self.val_size / (1 - self.test_size)
        train, val = train_test_split(rest, test_size=share, random_state=self.seed, stratify=y[rest])
        self.train_set = TensorDataset(x[train], y[train])
        self.val_set = TensorDataset(x[val], y[val])
        self.test_set = TensorDataset(x[test], y[test])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.batch_size)


class DigitsClassifier(pl.LightningModule):
    """:class:`SmallCNN` trained with SGD + cosine schedule; logs loss and accuracy.

    Args:
        width: channels of the first convolution (the widest has 4x).
        lr: initial learning rate.
        weight_decay: SGD weight decay.
    """

    def __init__(self, width: int = 32, lr: float = 0.05, weight_decay: float = 5e-4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = SmallCNN(in_channels=1, num_classes=10, width=width)
        self.example_input_array = torch.zeros(1, 1, 8, 8)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=10)
        self.test_acc = torchmetrics.Accuracy(task="multiclass", num_classes=10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.val_acc(logits, y)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("test_loss", F.cross_entropy(logits, y))
        self.test_acc(logits, y)
        self.log("test_acc", self.test_acc)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(
            self.parameters(), lr=self.hparams.lr, momentum=0.9, weight_decay=self.hparams.weight_decay
        )
        epochs = max(1, self.trainer.max_epochs or 1)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)}
