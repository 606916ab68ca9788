"""The command line: LightningCLI flags, the lightning-legr command, its prune subcommand and the demo config."""

import json

import pytest
from lightning.pytorch.cli import LightningCLI

import lightning_legr.callback  # noqa: F401 - makes the short class name known to LightningCLI
from lightning_legr import LeGRCallback, Transform
from lightning_legr.cli import DEMO_CONFIG, main
from lightning_legr.demo import DigitsClassifier, DigitsDataModule

FAST = [
    "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false", "--trainer.logger=false",
    "--model.init_args.width=8", "--legr.generations=3", "--legr.population=2", "--legr.sample_size=1",
    "--legr.finetune_epochs=0", "--legr.latency=false",
]


def test_lightning_cli_callback_flags(tmp_path):
    cli = LightningCLI(
        DigitsClassifier, DigitsDataModule, run=False,
        args=[
            "--trainer.callbacks+=LeGRCallback", "--trainer.callbacks.flops=[0.3,0.5]",
            "--trainer.callbacks.generations=7", f"--trainer.default_root_dir={tmp_path}",
        ],
    )
    callbacks = [c for c in cli.trainer.callbacks if isinstance(c, LeGRCallback)]
    assert len(callbacks) == 1
    assert callbacks[0].flops == [0.3, 0.5] and callbacks[0].generations == 7


def test_lightning_cli_rejects_a_bad_budget():
    with pytest.raises(ValueError, match=r"`flops` must be in \(0, 1\]"):
        LightningCLI(DigitsClassifier, DigitsDataModule, run=False,
                     args=["--trainer.callbacks+=LeGRCallback", "--trainer.callbacks.flops=[1.5]"])


def test_console_command_fit_then_prune_with_the_saved_transform(tmp_path):
    run = tmp_path / "run"
    main(["fit", "--config", DEMO_CONFIG, *FAST, f"--trainer.default_root_dir={tmp_path}",
          f"--legr.dirpath={run}", "--legr.flops=[0.4,0.7]"])
    results = json.loads((run / "results.json").read_text())["results"]
    assert [r["budget"] for r in results] == [1.0, 0.7, 0.4]
    transform = Transform.load(run / "transform.json")

    again = tmp_path / "again"
    main(["prune", "--config", DEMO_CONFIG, *FAST, f"--trainer.default_root_dir={again}",
          f"--ckpt_path={run / 'base.ckpt'}", f"--legr.transform={run / 'transform.json'}",
          f"--legr.dirpath={again}", "--legr.flops=[0.2]"])
    results = json.loads((again / "results.json").read_text())["results"]
    assert [r["budget"] for r in results] == [1.0, 0.2]
    assert not (again / "search_state.json").exists()  # no new search
    assert results[0]["metric_before"] == pytest.approx(
        json.loads((run / "results.json").read_text())["results"][0]["metric_before"]
    )  # the same trained weights
    assert Transform.from_dict(json.loads((again / "results.json").read_text())["transform"]) == transform


def test_prune_subcommand_needs_a_transform(tmp_path):
    with pytest.raises(ValueError, match="--legr.transform"):
        main(["prune", "--config", DEMO_CONFIG, *FAST, f"--trainer.default_root_dir={tmp_path}",
              f"--legr.dirpath={tmp_path / 'x'}"])


def test_demo_config_parses_with_the_documented_defaults():
    cli_args = ["fit", "--config", DEMO_CONFIG, "--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args)
    assert exit_info.value.code == 0
