"""The run directory: relocatable, resumable to the same result, refusing another run, cleaning only its own."""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

import lightning_legr.callback as callback_module
from lightning_legr import LeGRCallback
from lightning_legr.core._io import atomic_path, remove_stale_temporaries
from lightning_legr.core.errors import ConfigurationError
from lightning_legr.demos.digits import DigitsClassifier
from lightning_legr.rundir import RunDirectory
from tests.conftest import FINISHED_SETTINGS
from tests.lightning_helpers import SMALL_SEARCH, tiny_data, tiny_module, trainer


class DyingClassifier(DigitsClassifier):
    """Dropout on the features (so that fine-tuning draws random numbers), and a crash on demand: at the
    start of fine-tuning epoch ``die_at`` of the ``die_in``-th fine-tune."""

    die_in, die_at = None, None
    fine_tunes = 0
    epochs = []  # (fine-tune, epoch) of every epoch started

    def forward(self, x):
        features = F.adaptive_avg_pool2d(self.model.features(x), 1).flatten(1)
        return self.model.classifier(F.dropout(features, 0.2, self.training))

    def on_train_start(self):
        DyingClassifier.fine_tunes += 1

    def on_train_epoch_start(self):
        DyingClassifier.epochs.append((DyingClassifier.fine_tunes, self.current_epoch))
        if (DyingClassifier.fine_tunes, self.current_epoch) == (DyingClassifier.die_in, DyingClassifier.die_at):
            raise RuntimeError("killed")

    @classmethod
    def reset(cls, die_in=None, die_at=None):
        cls.die_in, cls.die_at, cls.fine_tunes, cls.epochs = die_in, die_at, 0, []


RESUME = dict(SMALL_SEARCH, generations=4, population=3, finetune_epochs=3)


def run_legr(dirpath, **kwargs):
    callback = LeGRCallback(flops=[0.4, 0.7], dirpath=str(dirpath), **dict(RESUME, **kwargs))
    torch.manual_seed(len(str(dirpath)))  # each process starts from another global random state
    trainer(dirpath.parent / "logs", [callback], max_epochs=0, logger=False).fit(
        tiny_module(DyingClassifier), datamodule=tiny_data()
    )
    return callback


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    DyingClassifier.reset()
    dirpath = tmp_path_factory.mktemp("uninterrupted") / "legr"
    callback = run_legr(dirpath)
    assert DyingClassifier.epochs == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    return dirpath, callback


def test_a_fine_tune_killed_after_epoch_k_resumes_at_epoch_k_plus_1(uninterrupted, tmp_path):
    dirpath = tmp_path / "legr"
    DyingClassifier.reset(die_in=2, die_at=2)  # the second budget dies after its epochs 0 and 1
    with pytest.raises(RuntimeError, match="killed"):
        run_legr(dirpath, finetune_epochs=3)
    last = torch.load(dirpath / "flops_0.40" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1  # the last epoch, not the best one
    DyingClassifier.reset()
    run_legr(dirpath, finetune_epochs=3)
    assert DyingClassifier.epochs == [(1, 2)]  # epoch 2 only: nothing repeated, nothing skipped
    assert sorted(os.listdir(dirpath / "flops_0.40")) == ["best.ckpt", "last.ckpt", "pruned.ckpt"]


def test_interrupted_and_moved_run_ends_exactly_as_an_uninterrupted_one(uninterrupted, tmp_path):
    reference, _ = uninterrupted
    first = tmp_path / "first" / "legr"
    DyingClassifier.reset(die_in=2, die_at=1)  # in the middle of the second budget's fine-tune
    with pytest.raises(RuntimeError, match="killed"):
        run_legr(first)
    moved = tmp_path / "elsewhere" / "legr"
    moved.parent.mkdir()
    shutil.move(str(first), str(moved))
    DyingClassifier.reset()
    callback = run_legr(moved)
    assert DyingClassifier.epochs == [(1, 1), (1, 2)]  # only the rest of the interrupted fine-tune
    assert read(moved / "results.csv") == read(reference / "results.csv")
    assert [r["checkpoint"] for r in callback.results] == [
        str(moved / "base.ckpt"), str(moved / "flops_0.70" / "best.ckpt"), str(moved / "flops_0.40" / "best.ckpt")
    ]
    assert not [p.name for p in moved.rglob("*-v*.ckpt")]  # no best-v1.ckpt, last-v1.ckpt
    best = torch.load(moved / "flops_0.40" / "best.ckpt", weights_only=True)
    reference_best = torch.load(reference / "flops_0.40" / "best.ckpt", weights_only=True)
    assert best["epoch"] == reference_best["epoch"]
    assert all(torch.equal(best["state_dict"][k], v) for k, v in reference_best["state_dict"].items()
               if isinstance(v, torch.Tensor))


def test_a_copied_finished_run_is_reused_where_it_now_is(finished_run, tmp_path, monkeypatch):
    copied = tmp_path / "copy" / "legr"
    shutil.copytree(finished_run.dirpath, copied)
    monkeypatch.setattr(callback_module, "finetune", lambda *a, **k: pytest.fail("a finished budget was fine-tuned again"))
    callback = LeGRCallback(dirpath=str(copied), **dict(FINISHED_SETTINGS, latency=False))
    trainer(tmp_path, [callback], max_epochs=2, logger=False).fit(tiny_module(), datamodule=tiny_data())
    assert [r["checkpoint"] for r in callback.results] == [
        str(copied / "base.ckpt"), str(copied / "flops_0.70" / "best.ckpt"), str(copied / "flops_0.40" / "best.ckpt")
    ]
    assert [r["metric_after"] for r in callback.results] == [r["metric_after"] for r in finished_run.callback.results]
    assert sorted(p.name for p in copied.rglob("*.ckpt")) == sorted(p.name for p in finished_run.dirpath.rglob("*.ckpt"))


def test_another_recipe_is_another_run(finished_run, tmp_path):
    copied = tmp_path / "legr"
    shutil.copytree(finished_run.dirpath, copied)
    with pytest.raises(ConfigurationError) as err:
        callback = LeGRCallback(dirpath=str(copied), **FINISHED_SETTINGS)
        data = tiny_data()
        data.hparams.batch_size = 64  # as `--data.init_args.batch_size 64` would
        trainer(tmp_path, [callback], max_epochs=30, logger=False).fit(tiny_module(lr=0.5), datamodule=data)
    message = str(err.value)
    for differs in ("module.hparams.lr: 0.05 there, 0.5 here", "datamodule.hparams.batch_size: 128 there, 64 here",
                    "trainer.max_epochs: 2 there, 30 here"):
        assert differs in message
    assert "legr." not in message  # the callback's own settings are the same


class Thing:
    pass


def test_lightning_cli_bookkeeping_hyperparameters_do_not_make_another_run(finished_run, tmp_path):
    copied = tmp_path / "legr"
    shutil.copytree(finished_run.dirpath, copied)
    module = tiny_module()
    module.hparams["_class_path"] = "lightning_legr.demos.digits.DigitsClassifier"  # as LightningCLI adds
    module.hparams["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
    callback = LeGRCallback(dirpath=str(copied), **dict(FINISHED_SETTINGS, latency=False))
    trainer(tmp_path, [callback], max_epochs=2, logger=False).fit(module, datamodule=tiny_data())
    assert [r["metric_after"] for r in callback.results] == [r["metric_after"] for r in finished_run.callback.results]


def test_the_settings_are_recorded_without_addresses():
    from lightning_legr.rundir import describe

    described = describe({"a": Thing(), "b": [1, 2.5, "x", None], "c": torch.tensor(3)})
    assert described == {"a": "<tests.test_rundir.Thing>", "b": [1, 2.5, "x", None], "c": 3}
    assert describe(Thing()) == described["a"] and "0x" not in json.dumps(described)


def test_dirpath_must_be_a_path():
    with pytest.raises(ConfigurationError, match="`dirpath` must be a path"):
        RunDirectory(["legr"])


# ---------------------------------------------------------------------- temporaries
def _temporary_of(pid, directory, name="state.json"):
    with atomic_path(directory / name) as tmp:
        pass  # the file the block would have written
    fd_path = directory / os.path.basename(tmp).replace(f"-{os.getpid()}-", f"-{pid}-", 1)
    fd_path.write_text("half a file")
    return fd_path


def test_stale_temporaries_of_dead_processes_go_and_live_ones_stay(tmp_path):
    (tmp_path / "flops_0.50").mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        mine = _temporary_of(os.getpid(), tmp_path)
        alive = _temporary_of(live.pid, tmp_path / "flops_0.50", "last.ckpt")
        stale = _temporary_of(dead.pid, tmp_path / "flops_0.50", "results.json")
        other_host = tmp_path / f".tmp-legr-{dead.pid}-00000000-abc.json"
        other_host.write_text("another machine's")
        foreign = tmp_path / ".tmp-something-else.json"
        foreign.write_text("not ours")
        assert remove_stale_temporaries(tmp_path) == [str(stale)]
        assert mine.exists() and alive.exists() and other_host.exists() and foreign.exists() and not stale.exists()
    finally:
        live.kill()
        live.wait()


def test_an_interrupted_write_leaves_no_temporary(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.json") as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError
    assert os.listdir(tmp_path) == []
