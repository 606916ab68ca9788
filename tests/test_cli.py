"""The command line: LightningCLI flags, the lightning-legr command, its prune subcommand and the demo config."""

import json
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from lightning.pytorch.cli import LightningCLI

import lightning_legr.callback  # noqa: F401 - makes the short class name known to LightningCLI
from lightning_legr import LeGRCallback, LeGRPruner, Transform
from lightning_legr.checkpoint import save_module_checkpoint
from lightning_legr.cli import DEMO_CONFIG, main
from lightning_legr.demos.digits import DigitsClassifier, DigitsDataModule
from tests.lightning_helpers import tiny_data, trainer

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


USER_SCRIPT = textwrap.dedent(
    """
    import torch
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI
    from torch import nn
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset

    import lightning_legr  # noqa: F401


    class Net(LightningModule):
        def __init__(self, width: int = 4):
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                nn.Linear(width, 2),
            )
            self.example_input_array = torch.zeros(1, 1, 8, 8)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)


    class Data(LightningDataModule):
        def train_dataloader(self):
            return self.val_dataloader()

        def val_dataloader(self):
            g = torch.Generator().manual_seed(0)
            data = TensorDataset(torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 2, (32,), generator=g))
            return DataLoader(data, batch_size=16)


    LightningCLI(Net, Data)
    """
)


@pytest.mark.slow
def test_short_callback_name_in_a_user_script_after_import_lightning_legr(tmp_path):
    """A fresh process, so that no import made by the tests registers the class."""
    dirpath = tmp_path / "legr"
    args = [
        "fit", "--trainer.callbacks+=LeGRCallback", "--trainer.callbacks.flops=[0.5]",
        "--trainer.callbacks.generations=2", "--trainer.callbacks.population=2", "--trainer.callbacks.sample_size=1",
        "--trainer.callbacks.finetune_epochs=0", "--trainer.callbacks.latency=false",
        f"--trainer.callbacks.dirpath={dirpath}", "--trainer.max_epochs=1", "--trainer.logger=false",
        "--trainer.enable_progress_bar=false", "--trainer.enable_checkpointing=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    script = tmp_path / "user_cli.py"
    script.write_text(USER_SCRIPT)
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((dirpath / "results.json").read_text())["results"]
    assert [r["budget"] for r in results] == [1.0, 0.5]


def test_lightning_cli_rejects_a_bad_budget():
    with pytest.raises(ValueError, match=r"`flops` must be in \(0, 1\]"):
        LightningCLI(DigitsClassifier, DigitsDataModule, run=False,
                     args=["--trainer.callbacks+=LeGRCallback", "--trainer.callbacks.flops=[1.5]"])


def test_console_command_fit_then_prune_with_the_saved_transform(tmp_path, capsys):
    run = tmp_path / "run"
    main(["fit", "--config", DEMO_CONFIG, *FAST, f"--trainer.default_root_dir={tmp_path}",
          f"--legr.dirpath={run}", "--legr.flops=[0.4,0.7]"])
    results = json.loads((run / "results.json").read_text())["results"]
    assert [r["budget"] for r in results] == [1.0, 0.7, 0.4]
    transform = Transform.load(run / "transform.json")

    # the same command with another recipe is another run: refused, naming what differs, not "resumed"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", DEMO_CONFIG, *FAST, f"--trainer.default_root_dir={tmp_path}",
              f"--legr.dirpath={run}", "--legr.flops=[0.4,0.7]", "--model.init_args.lr=0.5", "--trainer.max_epochs=3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "module.hparams.lr: 0.05 there, 0.5 here; trainer.max_epochs: 1 there, 3 here" in err

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


@pytest.mark.parametrize("saver", ["save_module_checkpoint", "trainer.save_checkpoint"])
def test_prune_a_checkpoint_saved_from_python(tmp_path, saver):
    """Its hyperparameters have no class path, which LightningCLI cannot parse in subclass mode."""
    torch.manual_seed(1)  # other weights than the module the command builds (seed_everything: 0)
    module = DigitsClassifier(width=8)
    path = tmp_path / "python.ckpt"
    if saver == "save_module_checkpoint":
        save_module_checkpoint(module, path)
    else:
        t = trainer(tmp_path, [], max_epochs=0, logger=False)
        t.fit(module, datamodule=tiny_data())
        t.save_checkpoint(path)
    transform = tmp_path / "identity.json"
    LeGRPruner(module, module.example_input_array).identity().save(transform)

    main(["prune", "--config", DEMO_CONFIG, *FAST, f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={path}",
          f"--legr.transform={transform}", f"--legr.dirpath={tmp_path / 'run'}", "--legr.flops=[0.5]"])
    base = torch.load(tmp_path / "run" / "base.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(base[k], v) for k, v in module.state_dict().items())  # the checkpoint's weights
    assert json.loads((tmp_path / "run" / "results.json").read_text())["results"][1]["budget"] == 0.5


@pytest.mark.parametrize(
    "args, message",
    [
        (["--legr.flops", "[0.3, 2]"], r"`flops` must be in \(0, 1\], a fraction of the original FLOPs .* got 2\.0"),
        (["--legr.mode", "foo"], "`mode` can be min or max, got 'foo'"),
        (["--legr.generations", "0"], "`generations` must be an integer >= 1, got 0"),
        (["--legr.transform", "no/such/transform.json"], "No transform file at no/such/transform.json"),
        (["--legr.flops", "[0.5, 1.0]"], r"`flops` lists 1\.0, the unpruned model"),
    ],
    ids=["flops", "mode", "generations", "transform", "unpruned"],
)
def test_a_bad_value_is_one_line_and_exit_status_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", DEMO_CONFIG, *FAST, f"--trainer.default_root_dir={tmp_path}", *args])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lightning-legr: error: "), captured.err
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "legr").exists() and "Epoch" not in captured.out  # nothing ran, nothing written


def test_prune_subcommand_needs_a_transform(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "--config", DEMO_CONFIG, *FAST, f"--trainer.default_root_dir={tmp_path}",
              f"--legr.dirpath={tmp_path / 'x'}"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "lightning-legr: error: `prune` needs a LeGRCallback with a saved transform: pass --legr.transform"
        " path/to/transform.json"
    ]


def test_demo_config_parses_with_the_documented_defaults():
    cli_args = ["fit", "--config", DEMO_CONFIG, "--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args)
    assert exit_info.value.code == 0
