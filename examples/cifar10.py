"""CIFAR-10 with a CIFAR ResNet in Lightning: data loading, training, testing, and LeGR pruning.

Evaluate the pretrained ResNet-56 on the JPEG test set::

    python examples/cifar10.py --data ../shared/data/cifar10-jpg.tar.xz \\
        --weights ../shared/weights/resnet56-cifar10-jpg.pt --test-only

Prune it with LeGR to 50% and 30% of its FLOPs (search, then fine-tune each budget)::

    python examples/cifar10.py --data ../shared/data/cifar10-jpg.tar.xz \\
        --weights ../shared/weights/resnet56-cifar10-jpg.pt --flops 0.5 0.3 --lr 0.02

``--data`` is an image-folder tree (``train/<class>/*.jpg``, ``test/<class>/*.jpg``), the same tree
packed as a ``.tar.xz``, or a folder holding torchvision's ``cifar-10-batches-py``.
"""

import argparse
import hashlib
import io
import os
import pickle
import tarfile
import uuid
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_legr.core.criteria import CRITERIA
from lightning_legr.models import cifar_resnet

__all__ = ["load_image_folder", "CIFAR10DataModule", "CIFARClassifier", "run_legr", "main"]

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "test")
IMAGE_SHAPE = (32, 32, 3)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TORCHVISION_FOLDER = "cifar-10-batches-py"

Arrays = Tuple[np.ndarray, np.ndarray]


# ----------------------------------------------------------------------------------------------
# Reading the images
# ----------------------------------------------------------------------------------------------


def load_image_folder(root_or_tarxz: str, split: str, cache_dir: Optional[str] = None) -> Arrays:
    """Read one split of a CIFAR-style image-folder dataset into memory.

    Args:
        root_or_tarxz: a folder with ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``; the same tree
            packed as ``.tar.xz`` (any leading folders inside are fine); or a folder holding
            torchvision's ``cifar-10-batches-py`` (read with torchvision when it is importable).
        split: ``"train"`` or ``"test"``.
        cache_dir: where the decoded arrays are cached as ``.npy``. Default: ``~/.cache/lightning-legr``
            (``$XDG_CACHE_HOME/lightning-legr``), else the folder of the data if that one is writable;
            if neither is, nothing is cached. A tar is decoded once for both splits.

    Returns:
        ``(images, labels)``: uint8 ``N x 32 x 32 x 3`` RGB and int64 ``N``; labels number the class
        folders in alphabetical order, images are sorted by class then file name.

    Raises:
        ValueError: ``split`` is not train/test, the tree has no such split, a class folder is empty
            or an image is not 32x32.
        FileNotFoundError: ``root_or_tarxz`` does not exist.
    """
    if split not in SPLITS:
        raise ValueError(f"`split` can be {' or '.join(SPLITS)}, got {split!r}")
    path = os.path.abspath(os.path.expanduser(os.fspath(root_or_tarxz)))
    if not os.path.exists(path):
        raise FileNotFoundError(f"`root_or_tarxz` {root_or_tarxz!r} does not exist")
    torchvision_root = _torchvision_root(path)
    if torchvision_root is not None:
        return _load_torchvision_cifar10(torchvision_root, split)

    cache = _cache_paths(path, cache_dir)
    if cache is not None and all(os.path.exists(p) for p in cache[split]):
        images_path, labels_path = cache[split]
        return np.load(images_path), np.load(labels_path)

    if os.path.isdir(path):
        decoded = {split: _decode_folder(path, split)}
    else:
        decoded = _decode_tar(path)
        if split not in decoded:
            raise ValueError(f"{root_or_tarxz!r} has no `{split}/<class>/<image>` entries")
    if cache is not None:
        for name, arrays in decoded.items():
            _save_cache(cache[name], arrays)
    return decoded[split]


def _torchvision_root(path: str) -> Optional[str]:
    if os.path.isdir(os.path.join(path, TORCHVISION_FOLDER)):
        return path
    if os.path.basename(path) == TORCHVISION_FOLDER and os.path.isdir(path):
        return os.path.dirname(path)
    return None


def _load_torchvision_cifar10(root: str, split: str) -> Arrays:
    try:
        from torchvision.datasets import CIFAR10
    except ImportError:
        # torchvision is optional: its CIFAR-10 files are pickled dicts, which are simple to read.
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        images, labels = [], []
        for name in names:
            with open(os.path.join(root, TORCHVISION_FOLDER, name), "rb") as f:
                batch = pickle.load(f, encoding="latin1")
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch["labels"], dtype=np.int64))
        return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)
    dataset = CIFAR10(root, train=split == "train", download=False)
    return np.ascontiguousarray(dataset.data, dtype=np.uint8), np.asarray(dataset.targets, dtype=np.int64)


def _cache_paths(path: str, cache_dir: Optional[str]) -> Optional[Dict[str, Tuple[str, str]]]:
    """The cache files of each split, named after the data's path, size and modification time."""
    if cache_dir is None:
        cache_dir = _default_cache_dir(path)
        if cache_dir is None:
            warnings.warn(f"No writable cache folder for {path}: the images are decoded on every run.")
            return None
    if os.path.isdir(path):
        # A folder's own mtime misses files added deeper down; its split and class folders' do not.
        folders = _listdir(path, SPLITS)
        folders += [os.path.join(s, c) for s in list(folders) for c in _listdir(os.path.join(path, s))]
        stamps = [(f, os.stat(os.path.join(path, f)).st_mtime_ns) for f in folders]
    else:
        info = os.stat(path)
        stamps = [(info.st_size, info.st_mtime_ns)]
    key = hashlib.sha1(repr((path, stamps)).encode()).hexdigest()[:12]
    stem = os.path.basename(path.rstrip(os.sep)).split(".")[0] or "data"
    return {
        split: tuple(os.path.join(cache_dir, f"{stem}-{key}-{split}-{part}.npy") for part in ("images", "labels"))
        for split in SPLITS
    }


def _default_cache_dir(path: str) -> Optional[str]:
    user = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lightning-legr")
    beside = path if os.path.isdir(path) else os.path.dirname(path)
    for candidate in (user, beside):
        try:
            os.makedirs(candidate, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate
    return None


def _listdir(folder: str, only: Sequence[str] = ()) -> List[str]:
    names = sorted(n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n)))
    return [n for n in names if n in only] if only else names


def _save_cache(paths: Tuple[str, str], arrays: Arrays) -> None:
    try:
        for path, array in zip(paths, arrays):
            _save_npy_atomic(path, array)
    except OSError as err:
        warnings.warn(f"Could not cache the decoded images in {os.path.dirname(paths[0])}: {err}")


def _save_npy_atomic(path: str, array: np.ndarray) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
    try:
        with open(tmp, "xb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _decode(data: bytes, name: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        array = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    if array.shape != IMAGE_SHAPE:
        raise ValueError(f"{name} is {array.shape[1]}x{array.shape[0]}; CIFAR images are 32x32")
    return array


def _stack(images: Dict[Tuple[str, str], np.ndarray], classes: Sequence[str], where: str) -> Arrays:
    """Order the images by (class, file name); a class with no images would shift every later label."""
    empty = sorted(set(classes) - {c for c, _ in images})
    if empty:
        raise ValueError(f"{where}: class folders without images: {empty}")
    index = {c: i for i, c in enumerate(sorted(classes))}
    keys = sorted(images)
    array = np.stack([images[k] for k in keys]) if keys else np.zeros((0,) + IMAGE_SHAPE, np.uint8)
    return array, np.array([index[c] for c, _ in keys], dtype=np.int64)


def _decode_folder(root: str, split: str) -> Arrays:
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise ValueError(f"{root} has no `{split}` folder; it holds {sorted(os.listdir(root))}")
    classes = _listdir(folder)
    images = {}
    for c in classes:
        for name in os.listdir(os.path.join(folder, c)):
            if name.lower().endswith(IMAGE_SUFFIXES):
                file = os.path.join(folder, c, name)
                with open(file, "rb") as f:
                    images[(c, name)] = _decode(f.read(), file)
    return _stack(images, classes, folder)


def _decode_tar(path: str) -> Dict[str, Arrays]:
    """Decode both splits in one pass: ``r|xz`` streams; random access into xz is quadratic."""
    images: Dict[str, Dict[Tuple[str, str], np.ndarray]] = {s: {} for s in SPLITS}
    classes: Dict[str, set] = {s: set() for s in SPLITS}
    with tarfile.open(path, "r|xz") as archive:
        for member in archive:
            parts = member.name.strip("/").split("/")
            if member.isdir() and len(parts) >= 2 and parts[-2] in SPLITS:
                classes[parts[-2]].add(parts[-1])
            elif member.isfile() and len(parts) >= 3 and parts[-3] in SPLITS:
                if parts[-1].lower().endswith(IMAGE_SUFFIXES) and not parts[-1].startswith("."):
                    split, c, name = parts[-3:]
                    classes[split].add(c)
                    images[split][(c, name)] = _decode(archive.extractfile(member).read(), member.name)
    return {s: _stack(images[s], sorted(classes[s]), f"{path}:{s}") for s in SPLITS if classes[s]}


# ----------------------------------------------------------------------------------------------
# Batches: whole-batch indexing, augmentation and normalization in torch
# ----------------------------------------------------------------------------------------------


class _ImageSubset(Dataset):
    """Rows ``indices`` of an ``N x 32 x 32 x 3`` uint8 tensor; fetches a whole batch in one index."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: Optional[torch.Tensor] = None) -> None:
        self.images, self.labels = images, labels
        self.indices = torch.arange(len(images)) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        j = self.indices[i]
        return self.images[j], self.labels[j]

    def __getitems__(self, batch: List[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        rows = self.indices[torch.as_tensor(batch)]
        return self.images[rows], self.labels[rows]


class BatchTransform:
    """Collate function: uint8 NHWC batch -> normalized float NCHW, optionally augmented.

    The augmentation is the standard CIFAR one, done for the whole batch with one gather: a random
    32x32 crop of the image zero-padded by ``padding`` pixels, flipped horizontally with probability 1/2.
    """

    def __init__(self, augment: bool = False, padding: int = 4, mean=MEAN, std=STD) -> None:
        self.augment, self.padding = augment, padding
        std_ = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.scale = 1.0 / (255.0 * std_)
        self.shift = -torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) / std_

    def __call__(self, batch) -> Tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batch, list):  # a sampler that yields single indices
            images, labels = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
        else:
            images, labels = batch
        if self.augment:
            images = self.crop_and_flip(images)
        x = images.permute(0, 3, 1, 2).float()
        return (x * self.scale + self.shift).contiguous(), labels

    def crop_and_flip(self, images: torch.Tensor) -> torch.Tensor:
        n, h, w, _ = images.shape
        p = self.padding
        padded = images.new_zeros((n, h + 2 * p, w + 2 * p, images.shape[3]))
        padded[:, p : p + h, p : p + w] = images
        top = torch.randint(0, 2 * p + 1, (n, 1))
        left = torch.randint(0, 2 * p + 1, (n, 1))
        flip = torch.rand(n, 1) < 0.5
        rows = top + torch.arange(h)
        cols = left + torch.where(flip, torch.arange(w - 1, -1, -1), torch.arange(w))
        return padded[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


class CIFAR10DataModule(L.LightningDataModule):
    """CIFAR-10 for Lightning: train, a validation set held out from train, and test.

    Args:
        data: the dataset, in any form :func:`load_image_folder` reads.
        batch_size: images per batch, for every split.
        val_size: train images held out (with ``seed``) as the validation set. ``0`` holds out none;
            then there is no validation set, and asking for one is an error (the test set is never
            used in its place).
        num_workers: ``DataLoader`` worker processes. Batches are built with whole-batch tensor ops,
            so ``0`` is usually fast enough.
        seed: seed of the validation split.
        augment: random crop and flip of the training images.
        cache_dir: see :func:`load_image_folder`.

    Raises:
        ValueError: an argument is out of range, or ``val_dataloader`` is called with ``val_size=0``.

    Example::

        dm = CIFAR10DataModule("../shared/data/cifar10-jpg.tar.xz", val_size=5000)
        trainer.fit(CIFARClassifier(), datamodule=dm)
    """

    def __init__(
        self,
        data: str,
        batch_size: int = 128,
        val_size: int = 5000,
        num_workers: int = 0,
        seed: int = 0,
        augment: bool = True,
        cache_dir: Optional[str] = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size}")
        if val_size < 0:
            raise ValueError(f"`val_size` must be 0 or more train images to hold out, got {val_size}")
        if num_workers < 0:
            raise ValueError(f"`num_workers` must be 0 or more, got {num_workers}")
        self.save_hyperparameters()
        self.data, self.batch_size, self.val_size = data, batch_size, val_size
        self.num_workers, self.seed, self.augment, self.cache_dir = num_workers, seed, augment, cache_dir
        self.train_set: Optional[_ImageSubset] = None
        self.val_set: Optional[_ImageSubset] = None
        self.test_set: Optional[_ImageSubset] = None
        self.train_indices: Optional[torch.Tensor] = None
        self.val_indices: Optional[torch.Tensor] = None

    def prepare_data(self) -> None:
        # Decodes and caches once (rank 0); `setup` then reads the cache on every rank.
        for split in SPLITS:
            load_image_folder(self.data, split, self.cache_dir)

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate") and self.train_set is None:
            images, labels = self._tensors("train")
            if self.val_size >= len(images):
                raise ValueError(f"`val_size` must be less than the {len(images)} train images, got {self.val_size}")
            order = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.seed))
            self.val_indices, self.train_indices = order[: self.val_size], order[self.val_size :]
            self.train_set = _ImageSubset(images, labels, self.train_indices)
            self.val_set = _ImageSubset(images, labels, self.val_indices) if self.val_size else None
        if stage in ("test", "predict") and self.test_set is None:
            self.test_set = _ImageSubset(*self._tensors("test"))

    def _tensors(self, split: str) -> Tuple[torch.Tensor, torch.Tensor]:
        images, labels = load_image_folder(self.data, split, self.cache_dir)
        return torch.from_numpy(images), torch.from_numpy(labels)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        return self._loader(self.train_set, shuffle=True, augment=self.augment)

    def val_dataloader(self) -> DataLoader:
        if self.val_size == 0:
            raise ValueError(
                "There is no validation set: `val_size=0` holds out no train images, and the test set is not"
                " used in its place. Set `val_size` > 0, or turn validation off with `Trainer(limit_val_batches=0)`."
            )
        if self.val_set is None:
            self.setup("validate")
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None:
            self.setup("test")
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def _loader(self, dataset: _ImageSubset, shuffle: bool = False, augment: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=BatchTransform(augment=augment),
            persistent_workers=self.num_workers > 0,
        )


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


def load_weights(model: nn.Module, path: str) -> None:
    """Load a checkpoint's ``state_dict`` (or a bare state dict), with any ``module.`` prefix removed."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    model.load_state_dict(state)


class CIFARClassifier(L.LightningModule):
    """A CIFAR ResNet trained with SGD and a per-epoch cosine learning rate.

    The network is ``self.model``; LeGR replaces it with its pruned version, so every step goes
    through ``self.model`` and the optimizer is built from the current parameters.

    Args:
        depth: ResNet depth, 6n+2 (20, 32, 44, 56, 110, ...).
        shortcut: ``"A"`` (zero padding, as the pretrained weights) or ``"B"`` (1x1 conv).
        lr: initial learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty on all parameters.
        nesterov: Nesterov momentum.
        epochs: length of the cosine schedule, in epochs; ``None``: the ``max_epochs`` of the Trainer
            that runs it (LeGR fine-tunes pruned copies in Trainers of its own, so ``None`` suits it).
        weights: a ``.pt``/``.th`` file with a ``state_dict`` (keys may carry a ``module.`` prefix).
        num_classes: output classes.

    Example::

        model = CIFARClassifier(weights="../shared/weights/resnet56-cifar10-jpg.pt")
        L.Trainer().test(model, datamodule=CIFAR10DataModule("../shared/data/cifar10-jpg.tar.xz"))
    """

    def __init__(
        self,
        depth: int = 56,
        shortcut: str = "A",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        nesterov: bool = True,
        epochs: Optional[int] = None,
        weights: Optional[str] = None,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"`lr` must be positive, got {lr}")
        if epochs is not None and epochs < 0:
            raise ValueError(f"`epochs` must be 0 or more (or None for the Trainer's max_epochs), got {epochs}")
        self.save_hyperparameters()
        self.model = cifar_resnet(depth, num_classes=num_classes, shortcut=shortcut)
        if weights is not None:
            load_weights(self.model, weights)
        self.example_input_array = torch.zeros(1, 3, 32, 32)
        # "micro": the fraction of images right; the default, "macro", averages per-class recall.
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.test_acc(logits, y)
        self.log("test_loss", F.cross_entropy(logits, y))
        self.log("test_acc", self.test_acc)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.SGD(
            self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay, nesterov=hp.nesterov
        )
        epochs = hp.epochs if hp.epochs is not None else self.trainer.max_epochs
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs or 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


# ----------------------------------------------------------------------------------------------
# LeGR: train (optionally), then search, prune and fine-tune when `fit` ends
# ----------------------------------------------------------------------------------------------


def run_legr(
    model: CIFARClassifier,
    datamodule: CIFAR10DataModule,
    flops: Sequence[float],
    epochs: int = 0,
    test: bool = True,
    trainer_kwargs: Optional[dict] = None,
    **legr_kwargs,
) -> Tuple[L.Trainer, "object"]:
    """Fit ``model`` for ``epochs`` epochs; when fit ends, LeGR learns the ranking and fine-tunes one
    pruned copy per budget in ``flops``; then each model is tested.

    Args:
        model: the classifier, usually with pretrained ``weights`` (then ``epochs=0``).
        datamodule: its data; LeGR scores candidates on the validation set, so ``val_size`` must be > 0.
        flops: the FLOP budgets, fractions of the unpruned model's FLOPs.
        epochs: training epochs before the search.
        test: test the unpruned model and every pruned checkpoint the callback lists in ``results``;
            each row of ``callback.results`` gets ``test_acc`` and ``test_loss``.
        trainer_kwargs: more ``lightning.Trainer`` arguments.
        **legr_kwargs: :class:`lightning_legr.LeGRCallback` arguments (``generations``, ``population``,
            ``sample_size``, ``mutation_rate``, ``tau``, ``safeguard``, ``criterion``, ``search_flops``,
            ``fitness_batches``, ``finetune_epochs``, ``monitor``, ``mode``, ``seed``, ``dirpath``,
            ``transform``, ...); ``None`` values are left to the callback's defaults.

    Returns:
        The trainer and the callback.

    A pruned checkpoint loads back with ``lightning_legr.load_pruned(path, CIFARClassifier, weights=None)``
    (``weights=None``: the checkpoint has the weights; the pretrained file need not be read again).
    """
    from lightning_legr import LeGRCallback  # Lightning glue: imported only on this path

    if datamodule.val_size == 0:
        raise ValueError("LeGR scores candidates on the validation set: give `val_size` > 0, got 0")
    callback = LeGRCallback(flops=list(flops), **{k: v for k, v in legr_kwargs.items() if v is not None})
    trainer = L.Trainer(max_epochs=epochs, callbacks=[callback], **(trainer_kwargs or {}))
    trainer.fit(model, datamodule=datamodule)
    if test:
        _test_results(trainer, model, datamodule, getattr(callback, "results", []))
    return trainer, callback


def _test_results(trainer: L.Trainer, model: CIFARClassifier, datamodule: CIFAR10DataModule, rows: List[dict]) -> None:
    """Test the unpruned model and each pruned checkpoint; print one line per model."""
    from lightning_legr import load_pruned

    (base,) = trainer.test(model, datamodule=datamodule, verbose=False)
    print(f"unpruned: test_acc {100 * base['test_acc']:.2f}%")
    for row in rows:
        if row.get("budget", 1.0) >= 1.0 or not row.get("checkpoint"):
            row.update(test_acc=base["test_acc"], test_loss=base["test_loss"])
            continue
        pruned = load_pruned(row["checkpoint"], type(model), weights=None)
        (result,) = trainer.test(pruned, datamodule=datamodule, verbose=False)
        row.update(test_acc=result["test_acc"], test_loss=result["test_loss"])
        ratio = row.get("flops_ratio", row["budget"])
        print(f"flops {row['budget']:.2f} (x{ratio:.3f} of the FLOPs): test_acc {100 * result['test_acc']:.2f}%")


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--data", required=True, help="image-folder tree, its .tar.xz, or a cifar-10-batches-py root")
    data.add_argument("--cache-dir", default=None, help="decoded-image cache (default ~/.cache/lightning-legr)")
    data.add_argument("--batch-size", type=int, default=128)
    data.add_argument("--val-size", type=int, default=5000, help="train images held out for validation")
    data.add_argument("--num-workers", type=int, default=0)
    data.add_argument("--no-augment", action="store_true")
    model = p.add_argument_group("model and training")
    model.add_argument("--depth", type=int, default=56)
    model.add_argument("--shortcut", choices=("A", "B"), default="A")
    model.add_argument("--weights", default=None, help="pretrained .pt/.th file")
    model.add_argument("--test-only", action="store_true", help="only evaluate on the test set")
    model.add_argument("--epochs", type=int, default=None, help="training epochs (default: 200; 0 with --flops)")
    model.add_argument("--lr", type=float, default=0.1)
    model.add_argument("--momentum", type=float, default=0.9)
    model.add_argument("--weight-decay", type=float, default=1e-4)
    model.add_argument("--seed", type=int, default=0)
    model.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    model.add_argument("--accelerator", default="auto")
    model.add_argument("--devices", default=None, help="default: 1 with --flops (LeGR runs in one process), else auto")
    legr = p.add_argument_group("LeGR (runs when --flops is given)")
    legr.add_argument("--flops", type=float, nargs="+", default=None, help="FLOP budgets, e.g. 0.5 0.3")
    legr.add_argument("--generations", type=int, default=None)
    legr.add_argument("--population", type=int, default=None)
    legr.add_argument("--sample-size", type=int, default=None)
    legr.add_argument("--mutation-rate", type=float, default=None)
    legr.add_argument("--tau", type=int, default=None, help="fine-tune steps per candidate")
    legr.add_argument("--safeguard", type=float, default=None)
    legr.add_argument(
        "--criterion", default=None, choices=list(CRITERIA),
        help="filter importance: l2 (default), l1 or bn; random and uniform are baselines for comparisons",
    )
    legr.add_argument(
        "--search-flops", type=float, nargs="+", default=None,
        help="budget(s) candidates are pruned to (default: the smallest of --flops); several: mean fitness",
    )
    legr.add_argument("--fitness-batches", type=int, default=None)
    legr.add_argument("--finetune-epochs", type=int, default=None)
    legr.add_argument("--dirpath", default=None, help="where LeGR writes its state and pruned models")
    legr.add_argument("--transform", default=None, help="a learned transform to reuse instead of searching")
    return p


def main(argv: Optional[Sequence[str]] = None) -> Optional[dict]:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    L.seed_everything(args.seed, workers=True)
    epochs = args.epochs if args.epochs is not None else (0 if args.flops else 200)
    datamodule = CIFAR10DataModule(
        args.data,
        batch_size=args.batch_size,
        val_size=args.val_size,
        num_workers=args.num_workers,
        seed=args.seed,
        augment=not args.no_augment,
        cache_dir=args.cache_dir,
    )
    model = CIFARClassifier(
        depth=args.depth,
        shortcut=args.shortcut,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        # The schedule follows whichever Trainer runs: this one, or LeGR's fine-tuning of a pruned copy.
        epochs=None,
        weights=args.weights,
    )
    devices = args.devices or (1 if args.flops else "auto")  # LeGRCallback refuses more than one process
    devices = int(devices) if str(devices).isdigit() else devices
    trainer_kwargs = dict(accelerator=args.accelerator, devices=devices)

    if args.test_only:
        trainer = L.Trainer(logger=False, enable_checkpointing=False, **trainer_kwargs)
        (results,) = trainer.test(model, datamodule=datamodule)
        print(f"test_acc {100 * results['test_acc']:.2f}%  test_loss {results['test_loss']:.4f}")
        return results

    if args.flops:
        legr_kwargs = {
            k: getattr(args, k)
            for k in (
                "generations", "population", "sample_size", "mutation_rate", "tau", "safeguard", "criterion",
                "search_flops", "fitness_batches", "finetune_epochs", "dirpath", "transform",
            )
        }
        legr_kwargs["seed"] = args.seed
        run_legr(model, datamodule, args.flops, epochs=epochs, trainer_kwargs=trainer_kwargs, **legr_kwargs)
        return None

    trainer = L.Trainer(max_epochs=epochs, **trainer_kwargs)
    trainer.fit(model, datamodule=datamodule)
    (results,) = trainer.test(model, datamodule=datamodule)
    return results


if __name__ == "__main__":
    main()
