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
