"""Loading a checkpoint never runs code: a hostile file is refused on every path a user's file takes."""

import os
import shutil

import pytest
import torch

from lightning_legr import LeGRCallback, load_pruned
from lightning_legr.checkpoint import save_module_checkpoint
from lightning_legr.cli import main
from lightning_legr.core.errors import ConfigurationError
from lightning_legr.demos import DEMO_CONFIG
from lightning_legr.demos.digits import DigitsClassifier
from tests.lightning_helpers import SMALL_SEARCH, tiny_data, tiny_module, trainer


class _RunsACommand:
    """Pickles to a call of os.system: loading it with weights_only=False would run the command."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path, marker, checkpoint=None):
    """A checkpoint that looks genuine (a real state dict) with a payload beside it."""
    checkpoint = dict(checkpoint or {"state_dict": tiny_module().state_dict()})
    checkpoint["payload"] = _RunsACommand(str(marker))
    torch.save(checkpoint, path)
    assert not os.path.exists(marker)
    return path


def test_the_planted_payload_would_run_without_weights_only(tmp_path):
    """The test's own premise: an unsafe load of the planted file runs the command."""
    path = plant(tmp_path / "evil.ckpt", tmp_path / "ran")
    torch.load(path, weights_only=False)
    assert (tmp_path / "ran").exists()


def test_load_pruned_refuses_a_hostile_checkpoint(tmp_path):
    genuine = save_module_checkpoint(tiny_module(), tmp_path / "genuine.ckpt")
    path = plant(tmp_path / "evil.ckpt", tmp_path / "ran", torch.load(genuine, weights_only=True))
    with pytest.raises(ConfigurationError, match=r"evil.ckpt is not a plain checkpoint: it holds Python objects .*posix.system"):
        load_pruned(path, DigitsClassifier)
    assert not (tmp_path / "ran").exists()


def test_a_hostile_base_checkpoint_in_the_run_directory_is_refused_before_training(tmp_path):
    settings = dict(SMALL_SEARCH, generations=3, population=2, sample_size=1, finetune_epochs=0)
    dirpath = tmp_path / "legr"
    trainer(tmp_path, [LeGRCallback(flops=[0.5], dirpath=str(dirpath), **settings)], max_epochs=0).fit(
        tiny_module(), datamodule=tiny_data()
    )
    base = dirpath / "base.ckpt"
    plant(base, tmp_path / "ran", torch.load(base, weights_only=True))
    with pytest.raises(ConfigurationError, match=r"base.ckpt is not a plain checkpoint"):
        trainer(tmp_path, [LeGRCallback(flops=[0.5], dirpath=str(dirpath), **settings)], max_epochs=0).fit(
            tiny_module(), datamodule=tiny_data()
        )
    assert not (tmp_path / "ran").exists()


def test_the_prune_subcommand_refuses_a_hostile_ckpt_path(tmp_path, capsys):
    module = tiny_module()
    path = plant(tmp_path / "evil.ckpt", tmp_path / "ran", {"state_dict": module.state_dict()})
    transform = tmp_path / "identity.json"
    from lightning_legr import LeGRPruner

    LeGRPruner(module, module.example_input_array).identity().save(transform)
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "--config", DEMO_CONFIG, "--model.init_args.width=8", "--trainer.logger=false",
              f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={path}", f"--legr.transform={transform}",
              f"--legr.dirpath={tmp_path / 'run'}", "--legr.flops=[0.5]", "--legr.latency=false"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "evil.ckpt is not a plain checkpoint" in err[0]
    assert not (tmp_path / "ran").exists()
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_genuine_checkpoints_of_a_run_load_safely(finished_run, tmp_path):
    """Every file a run writes loads with weights_only=True, the Trainer's own checkpoints included."""
    for path in sorted(finished_run.dirpath.rglob("*.ckpt")):
        torch.load(path, weights_only=True)
    copy = shutil.copy(finished_run.dirpath / "flops_0.40" / "last.ckpt", tmp_path / "last.ckpt")
    assert load_pruned(copy, DigitsClassifier) is not None


def test_a_hostile_last_checkpoint_is_refused_before_the_fine_tune_resumes(finished_run, tmp_path):
    from tests.conftest import FINISHED_SETTINGS

    copied = tmp_path / "legr"
    shutil.copytree(finished_run.dirpath, copied)
    (copied / "budgets.json").unlink()  # as if the run had died while fine-tuning
    last = copied / "flops_0.70" / "last.ckpt"
    plant(last, tmp_path / "ran", torch.load(last, weights_only=True))
    with pytest.raises(ConfigurationError, match=r"last.ckpt is not a plain checkpoint"):
        trainer(tmp_path, [LeGRCallback(dirpath=str(copied), **dict(FINISHED_SETTINGS, latency=False))], max_epochs=2,
                logger=False).fit(tiny_module(), datamodule=tiny_data())
    assert not (tmp_path / "ran").exists()
