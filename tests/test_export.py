"""ONNX export: round trips of pruned networks, what a failing export says, the missing extra, and the callback."""

import builtins
import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from lightning_legr import prune
from lightning_legr.core.errors import ConfigurationError
from lightning_legr.core.export import INSTALL, ExportError, check_onnx, export_onnx, require_onnx
from lightning_legr.models import cifar_resnet
from tests.lightning_helpers import tiny_module
from tests.models import akamaster_resnet

onnx_extra = pytest.mark.skipif(
    any(__import__("importlib").util.find_spec(name) is None for name in ("onnx", "onnxruntime", "onnxscript")),
    reason=f"the onnx extra is not installed ({INSTALL})",
)


def run_onnx(path, x):
    from lightning_legr.core.export import OnnxRunner

    return OnnxRunner(path)(x)[0]


@onnx_extra
@pytest.mark.parametrize("batch", [1, 5])
def test_pruned_digits_module_round_trip(tmp_path, batch):
    module = tiny_module()
    x = module.example_input_array
    pruned = prune(module, x, flops=0.5)
    report = export_onnx(pruned, x, tmp_path / "model.onnx")
    assert report.max_abs_diff <= 1e-4 and report.check_batch == 8 and report.opset > 0
    assert os.listdir(tmp_path) == ["model.onnx"]  # one file, weights inside, no temporaries left
    inputs = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = pruned.eval()(inputs).numpy()
    got = run_onnx(tmp_path / "model.onnx", inputs)
    assert got.shape == (batch, 10) and np.abs(got - expected).max() <= 1e-4


@onnx_extra
@pytest.mark.parametrize("build", [cifar_resnet, akamaster_resnet], ids=["ZeroPadShortcut", "F.pad-replayed"])
def test_pruned_cifar_resnet20_round_trip_at_batch_1_and_5(tmp_path, build):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    pruned = prune(build(20), x, flops=0.5).eval()
    report = export_onnx(pruned, x, tmp_path / "model.onnx")
    assert report.max_abs_diff <= 1e-4
    for batch in (1, 5):
        inputs = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            expected = pruned(inputs).numpy()
        assert np.abs(run_onnx(tmp_path / "model.onnx", inputs) - expected).max() <= 1e-4
    assert check_onnx(pruned, x, tmp_path / "model.onnx").max_abs_diff == report.max_abs_diff  # the same batch


class _Branchy(nn.Module):
    def forward(self, x):
        return x if x.mean() > 0 else -x  # a Python branch on a tensor's value: torch.export cannot trace it


class _Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.gate = _Branchy()

    def forward(self, x):
        return self.gate(self.conv(x)).flatten(1)


@onnx_extra
def test_a_failing_export_names_the_module_and_leaves_no_file(tmp_path):
    with pytest.raises(ExportError, match=r"ONNX export failed in module 'gate' \(_Branchy\): .*traceable by torch\.export"):
        export_onnx(_Gated(), torch.randn(1, 1, 8, 8), tmp_path / "model.onnx")
    assert os.listdir(tmp_path) == []


class _Drifting(nn.Module):
    """Exports fine, but its weights change after the export: the check sees the difference."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x):
        return self.linear(x)


@onnx_extra
def test_a_file_that_differs_from_pytorch_is_refused_with_the_figure(tmp_path):
    model, x = _Drifting(), torch.randn(1, 4)
    export_onnx(model, x, tmp_path / "model.onnx")
    with torch.no_grad():
        model.linear.bias += 0.5
    with pytest.raises(ExportError, match=r"differs from PyTorch by up to 0\.5 on a batch of 8 \(more than 0\.0001\)"):
        check_onnx(model, x, tmp_path / "model.onnx")


@pytest.mark.parametrize("missing", ["onnxruntime", "onnxscript"])
def test_without_the_extra_the_message_says_what_to_install(monkeypatch, missing):
    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name.split(".")[0] == missing:
            raise ImportError(f"No module named {missing!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing_import)
    with pytest.raises(ConfigurationError, match=rf"\(missing: {missing}\): pip install \"lightning-legr\[onnx\]\""):
        require_onnx()
    from lightning_legr import LeGRCallback

    with pytest.raises(ConfigurationError, match=r"export_onnx=True.*pip install \"lightning-legr\[onnx\]\""):
        LeGRCallback(flops=[0.5], export_onnx=True)
    LeGRCallback(flops=[0.5])  # without export nothing is asked for


# ---------------------------------------------------------------------- the callback and the command line
@pytest.fixture(scope="module")
def onnx_run(tmp_path_factory):
    """One budget, fine-tuned, exported and timed; then the same command again (a resumed run)."""
    from lightning_legr import LeGRCallback
    from tests.lightning_helpers import SMALL_SEARCH, tiny_data, trainer

    root = tmp_path_factory.mktemp("onnx")
    settings = dict(SMALL_SEARCH, flops=[0.5], latency=True, export_onnx=True, dirpath=str(root / "legr"))
    first = LeGRCallback(**settings)
    trainer(root, [first]).fit(tiny_module(), datamodule=tiny_data())
    stamps = {p: os.path.getmtime(p) for p in (root / "legr").rglob("*.onnx")}
    again = LeGRCallback(**settings)
    trainer(root, [again]).fit(tiny_module(), datamodule=tiny_data())
    return first, again, root / "legr", stamps


@onnx_extra
def test_the_callback_exports_every_network_and_reports_it(onnx_run):
    from lightning_legr.report import format_table

    first, _, dirpath, _ = onnx_run
    base, half = first.results
    assert base["onnx"] == str(dirpath / "base.onnx") and half["onnx"] == str(dirpath / "flops_0.50" / "model.onnx")
    for row in first.results:
        assert 0 <= row["onnx_max_abs_diff"] <= 1e-4
        for b in (1, 64):
            assert row[f"onnx_b{b}_ms"] > 0 and row[f"onnx_b{b}_iqr_ms"] >= 0
    files = json.loads((dirpath / "results.json").read_text())["results"]
    assert [r["onnx"] for r in files] == ["base.onnx", "flops_0.50/model.onnx"]  # relative in the run's files
    assert json.loads((dirpath / "budgets.json").read_text())["rows"][0]["onnx"] == "flops_0.50/model.onnx"
    header = (dirpath / "results.csv").read_text().splitlines()[0].split(",")
    assert {"onnx", "onnx_max_abs_diff", "onnx_b1_ms", "onnx_b1_iqr_ms", "onnx_b64_ms", "onnx_b64_iqr_ms"} <= set(header)

    table = format_table(first.run.portable(first.results), first.monitor, first.run.path).splitlines()
    assert max(len(line) for line in table) <= 100, "\n".join(table)
    assert table[2] == "ms @1 / @64: CPU latency at batch 1 / 64, 1 thread, PyTorch/onnxruntime medians of 5 rounds"
    assert table[3].startswith("ONNX: base.onnx, <budget>/model.onnx, within ") and table[3].endswith(
        " of PyTorch; latency IQRs in results.csv"
    )
    cell = f"{half['latency_b1_ms']:.2f}/{half['onnx_b1_ms']:.2f}"
    assert cell in table[-1].split()


@onnx_extra
def test_a_resumed_run_does_not_export_again(onnx_run):
    first, again, dirpath, stamps = onnx_run
    assert len(stamps) == 2 and all(os.path.getmtime(p) == t for p, t in stamps.items())
    assert [r["onnx"] for r in again.results] == [r["onnx"] for r in first.results]
    assert [r["onnx_max_abs_diff"] for r in again.results] == [r["onnx_max_abs_diff"] for r in first.results]


@onnx_extra
def test_an_unexportable_module_is_refused_before_training(tmp_path):
    from lightning_legr import LeGRCallback
    from tests.lightning_helpers import SMALL_SEARCH, CountingClassifier, tiny_data, trainer

    class Unexportable(CountingClassifier):
        def forward(self, x):
            out = super().forward(x)
            return out if out.mean() > 0 else -out

    CountingClassifier.steps = 0
    callback = LeGRCallback(flops=[0.5], export_onnx=True, dirpath=str(tmp_path / "legr"), **SMALL_SEARCH)
    with pytest.raises(ConfigurationError, match=r"export_onnx=True\): ONNX export failed in the forward of Unexportable"):
        trainer(tmp_path, [callback]).fit(tiny_module(Unexportable), datamodule=tiny_data())
    assert CountingClassifier.steps == 0


@onnx_extra
def test_prune_subcommand_exports(tmp_path):
    from lightning_legr import LeGRPruner
    from lightning_legr.cli import DEMO_CONFIG, main
    from tests.test_cli import FAST

    module = tiny_module()
    transform = tmp_path / "identity.json"
    LeGRPruner(module, module.example_input_array).identity().save(transform)
    main(["prune", "--config", DEMO_CONFIG, *FAST, f"--trainer.default_root_dir={tmp_path}",
          f"--legr.transform={transform}", f"--legr.dirpath={tmp_path / 'run'}", "--legr.flops=[0.5]",
          "--legr.export_onnx=true"])
    rows = json.loads((tmp_path / "run" / "results.json").read_text())["results"]
    assert [r["onnx"] for r in rows] == ["base.onnx", "flops_0.50/model.onnx"]
    assert all(r["onnx_max_abs_diff"] <= 1e-4 for r in rows) and "onnx_b1_ms" not in rows[0]  # --legr.latency=false
    assert (tmp_path / "run" / "flops_0.50" / "model.onnx").stat().st_size > 0
