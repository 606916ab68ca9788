"""The CIFAR-10 example (examples/cifar10.py) on a tiny fake dataset: loading, caching, splits, batches, a fit."""

import importlib.util
import io
import os
import pickle
import tarfile
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cifar10.py"
# Created in this order on disk, so that alphabetical order (the labels) differs from creation order.
CLASSES = ["truck", "airplane", "ship", "bird", "horse", "cat", "frog", "deer", "dog", "automobile"]
LABELS = sorted(CLASSES)
PER_SPLIT = {"train": 4, "test": 2}


def _import_example():
    spec = importlib.util.spec_from_file_location("cifar10_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cifar10 = _import_example()


def _value(label: int) -> int:
    """Every image of a class is one flat gray, which JPEG keeps to within a step or two."""
    return 20 * label + 15


def _jpeg(value: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    for split, n in PER_SPLIT.items():
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                (root / split / c / f"{i:04d}.jpg").write_bytes(_jpeg(_value(LABELS.index(c))))
    return root


@pytest.fixture(scope="module")
def tarxz(tree, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tar") / "fake-cifar.tar.xz"
    files = sorted(tree.rglob("*.jpg"))
    np.random.default_rng(0).shuffle(files)  # archive order must not matter
    with tarfile.open(path, "w:xz") as archive:
        for file in files:
            archive.add(file, arcname="fake-cifar/" + file.relative_to(tree).as_posix())
    return path


def _check_split(images: np.ndarray, labels: np.ndarray, split: str) -> None:
    n = PER_SPLIT[split]
    assert images.shape == (10 * n, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, np.repeat(np.arange(10), n))
    means = images.reshape(len(images), -1).mean(1)
    np.testing.assert_allclose(means, [_value(label) for label in labels], atol=3)


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("source", ["tree", "tarxz"])
def test_load_image_folder(source, request, tmp_path):
    data, cache = request.getfixturevalue(source), tmp_path / "cache"
    for split in ("train", "test"):
        _check_split(*cifar10.load_image_folder(data, split, cache_dir=cache), split)
    assert len(list(cache.glob("*.npy"))) == 4 and _no_temp_files(cache)


def test_tar_and_folder_agree(tree, tarxz, tmp_path):
    for split in ("train", "test"):
        a = cifar10.load_image_folder(tree, split, cache_dir=tmp_path / "a")
        b = cifar10.load_image_folder(tarxz, split, cache_dir=tmp_path / "b")
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_tar_decoded_once_for_both_splits_then_cached(tarxz, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    calls = []
    decode_tar = cifar10._decode_tar
    monkeypatch.setattr(cifar10, "_decode_tar", lambda path: calls.append(path) or decode_tar(path))
    first = cifar10.load_image_folder(tarxz, "train", cache_dir=cache)
    test = cifar10.load_image_folder(tarxz, "test", cache_dir=cache)
    again = cifar10.load_image_folder(tarxz, "train", cache_dir=cache)
    assert len(calls) == 1
    _check_split(*test, "test")
    np.testing.assert_array_equal(first[0], again[0])


def test_folder_cache_reused(tree, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = cifar10.load_image_folder(tree, "test", cache_dir=cache)

    def fail(*args):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(cifar10, "_decode_folder", fail)
    np.testing.assert_array_equal(cifar10.load_image_folder(tree, "test", cache_dir=cache)[0], first[0])


def test_interrupted_cache_write_leaves_nothing(tarxz, tmp_path, monkeypatch):
    cache = tmp_path / "cache"

    def save_half(file, array):
        file.write(b"\x93NUMPY half")
        raise KeyboardInterrupt

    monkeypatch.setattr(cifar10.np, "save", save_half)
    with pytest.raises(KeyboardInterrupt):
        cifar10.load_image_folder(tarxz, "test", cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_load_errors(tree, tmp_path):
    with pytest.raises(ValueError, match="`split` can be train or test, got 'val'"):
        cifar10.load_image_folder(tree, "val", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError):
        cifar10.load_image_folder(tmp_path / "missing", "train", cache_dir=tmp_path)
    (tmp_path / "bad" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "bad" / "train" / "dog").mkdir(parents=True)
    (tmp_path / "bad" / "train" / "dog" / "0.jpg").write_bytes(_jpeg(0))
    with pytest.raises(ValueError, match="without images: \\['cat'\\]"):
        cifar10.load_image_folder(tmp_path / "bad", "train", cache_dir=tmp_path / "cache")


def test_torchvision_format(tmp_path):
    pytest.importorskip("PIL")
    try:
        import torchvision  # noqa: F401

        pytest.skip("torchvision checks the real files' md5 sums; this fake batch is for the fallback reader")
    except ImportError:
        pass
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    expected = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (3, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, 10, 3).tolist()
        expected[name] = (data.reshape(3, 3, 32, 32).transpose(0, 2, 3, 1), labels)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
    images, labels = cifar10.load_image_folder(tmp_path, "test")
    np.testing.assert_array_equal(images, expected["test_batch"][0])
    assert labels.tolist() == expected["test_batch"][1]
    assert cifar10.load_image_folder(folder, "train")[0].shape == (15, 32, 32, 3)


def test_validation_split_disjoint_and_deterministic(tarxz, tmp_path):
    def split(seed):
        dm = cifar10.CIFAR10DataModule(tarxz, val_size=10, seed=seed, cache_dir=tmp_path)
        dm.setup("fit")
        return dm.train_indices.tolist(), dm.val_indices.tolist()

    train, val = split(0)
    assert len(val) == 10 and len(train) == 30
    assert not set(train) & set(val) and sorted(train + val) == list(range(40))
    assert split(0) == (train, val)
    assert split(1) != (train, val)


def test_no_validation_set(tarxz, tmp_path):
    dm = cifar10.CIFAR10DataModule(tarxz, val_size=0, cache_dir=tmp_path)
    dm.setup("fit")
    assert len(dm.train_set) == 40
    with pytest.raises(ValueError, match="val_size=0"):
        dm.val_dataloader()
    with pytest.raises(ValueError, match="`val_size` must be less than the 40 train images, got 40"):
        cifar10.CIFAR10DataModule(tarxz, val_size=40, cache_dir=tmp_path).setup("fit")
    with pytest.raises(ValueError, match="`val_size` must be 0 or more"):
        cifar10.CIFAR10DataModule(tarxz, val_size=-1)


def test_batches(tarxz, tmp_path):
    dm = cifar10.CIFAR10DataModule(tarxz, batch_size=8, val_size=10, cache_dir=tmp_path)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    x, y = next(iter(dm.test_dataloader()))
    mean, std = torch.tensor(cifar10.MEAN).view(1, 3, 1, 1), torch.tensor(cifar10.STD).view(1, 3, 1, 1)
    expected = torch.tensor([_value(label) for label in y.tolist()], dtype=torch.float32).view(-1, 1, 1, 1) / 255
    assert torch.allclose(x * std + mean, expected.expand_as(x), atol=3 / 255)


def test_augmentation_crops_and_flips():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8)
    out = cifar10.BatchTransform(augment=True).crop_and_flip(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images.permute(0, 3, 1, 2), (4, 4, 4, 4)).permute(0, 2, 3, 1)
    shifts, flips = set(), 0
    for image, pad in zip(out, padded):
        # every output is one 32x32 window of the padded image, mirrored or not
        windows = {(top, left): pad[top : top + 32, left : left + 32] for top in range(9) for left in range(9)}
        found = [
            (top, left, flip)
            for (top, left), window in windows.items()
            for flip in (False, True)
            if torch.equal(image, window.flip(1) if flip else window)
        ]
        assert found, "not a crop of the padded image"
        shifts.add(found[0][:2])
        flips += found[0][2]
    assert len(shifts) > 10 and 10 < flips < 54
    x, _ = cifar10.BatchTransform(augment=True)((images, torch.zeros(64, dtype=torch.int64)))
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32 and x.is_contiguous()


def test_weights_with_module_prefix(tmp_path):
    net = cifar10.cifar_resnet(8)
    path = tmp_path / "w.th"
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}, "best_prec1": 1.0}, path)
    model = cifar10.CIFARClassifier(depth=8, weights=str(path))
    for k, v in net.state_dict().items():
        assert torch.equal(model.model.state_dict()[k], v)


def test_accuracy_is_fraction_of_images_right():
    model = cifar10.CIFARClassifier(depth=8)
    labels = torch.tensor([0, 0, 0, 1])  # unbalanced: a per-class mean ("macro") would give 0.5
    logits = torch.nn.functional.one_hot(torch.tensor([0, 0, 0, 0]), 10).float()
    assert model.val_acc(logits, labels).item() == 0.75
    assert model.test_acc(logits, labels).item() == 0.75


def test_fast_dev_run_fit_and_test(tarxz, tmp_path):
    L.seed_everything(0)
    dm = cifar10.CIFAR10DataModule(tarxz, batch_size=8, val_size=10, cache_dir=tmp_path / "cache")
    model = cifar10.CIFARClassifier(depth=8, epochs=1)
    assert model.hparams.depth == 8 and isinstance(model.model, torch.nn.Module)
    trainer = L.Trainer(
        fast_dev_run=True,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    assert {"train_loss", "val_loss", "val_acc"} <= set(trainer.callback_metrics)
    (results,) = trainer.test(model, datamodule=dm, verbose=False)
    assert {"test_loss", "test_acc"} <= set(results)


def test_run_legr_wiring(tarxz, tmp_path, monkeypatch):
    """The Trainer and callback run_legr builds; a stand-in callback, so this does not test LeGR itself."""
    import lightning_legr

    seen = {}

    class FakeLeGRCallback(L.Callback):
        def __init__(self, flops, **kwargs):
            seen.update(flops=flops, kwargs=kwargs)

        def on_fit_end(self, trainer, pl_module):
            seen["fit_ended"] = True

    monkeypatch.setattr(lightning_legr, "LeGRCallback", FakeLeGRCallback, raising=False)
    dm = cifar10.CIFAR10DataModule(tarxz, batch_size=8, val_size=10, cache_dir=tmp_path)
    quiet = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer, callback = cifar10.run_legr(
        cifar10.CIFARClassifier(depth=8), dm, (0.5, 0.3), generations=2, tau=None, trainer_kwargs=quiet
    )
    assert isinstance(callback, FakeLeGRCallback) and callback in trainer.callbacks
    assert seen == {"flops": [0.5, 0.3], "kwargs": {"generations": 2}, "fit_ended": True}
    assert "test_acc" in trainer.callback_metrics
    with pytest.raises(ValueError, match="validation set"):
        cifar10.run_legr(cifar10.CIFARClassifier(depth=8), cifar10.CIFAR10DataModule(tarxz, val_size=0), [0.5])


def test_cli_test_only(tarxz, tmp_path):
    net = cifar10.cifar_resnet(8)
    torch.save({"state_dict": net.state_dict()}, tmp_path / "w.pt")
    results = cifar10.main(
        ["--data", str(tarxz), "--depth", "8", "--weights", str(tmp_path / "w.pt"), "--test-only"]
        + ["--cache-dir", str(tmp_path / "cache"), "--accelerator", "cpu"]
    )
    assert 0 <= results["test_acc"] <= 1
    assert not os.listdir(tmp_path / "cache") or _no_temp_files(tmp_path / "cache")


def test_cli_legr_options(tarxz, tmp_path, monkeypatch):
    """With --flops, one device by default (LeGR runs in one process) and several search budgets."""
    seen = {}
    monkeypatch.setattr(cifar10, "run_legr", lambda model, dm, flops, **kwargs: seen.update(flops=flops, **kwargs))
    common = ["--data", str(tarxz), "--depth", "8", "--cache-dir", str(tmp_path), "--accelerator", "cpu"]
    cifar10.main(common + ["--flops", "0.5", "0.3", "--search-flops", "0.3", "0.5", "--criterion", "uniform"])
    assert seen["flops"] == [0.5, 0.3] and seen["search_flops"] == [0.3, 0.5] and seen["criterion"] == "uniform"
    assert seen["trainer_kwargs"]["devices"] == 1
    cifar10.main(common + ["--flops", "0.5", "--devices", "2"])
    assert seen["trainer_kwargs"]["devices"] == 2
    with pytest.raises(SystemExit):
        cifar10.main(common + ["--flops", "0.5", "--criterion", "l3"])
