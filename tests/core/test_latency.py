"""The per-layer latency table: grid, interpolation, strict-JSON cache reused when the setting matches."""

import json

import numpy as np
import torch
from torch import nn

from lightning_legr.core.latency import BenchmarkTimer, Timing, load_or_measure_table
from lightning_legr.core.structure import Structure
from tests.models import vgg_small


class FakeTimer:
    """Deterministic: 0.01 ms per call plus 1e-6 ms per MAC of every conv/linear call."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, module, inputs) -> Timing:
        self.calls += 1
        total = [0.0]

        def hook(m, a, o):
            per = m.weight.numel() if isinstance(m, nn.Linear) else m.weight[0].numel()
            total[0] += 0.01 + 1e-6 * per * o.numel()

        hs = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        with torch.no_grad():
            module(*inputs) if isinstance(inputs, tuple) else module(inputs)
        for h in hs:
            h.remove()
        return Timing(total[0], 0.0, 1)


def test_table_interpolates_and_is_reused(tmp_path):
    x = torch.randn(1, 3, 32, 32)
    structure = Structure(vgg_small(), x)
    timer, path = FakeTimer(), tmp_path / "latency_table.json"
    table = load_or_measure_table(path, structure, x, timer)
    assert timer.calls > 0
    json.loads(path.read_text())  # strict JSON
    rows = list(structure.layer_positions)
    second = rows.index("features.1.0")  # 30 -> 48 channels: both sides shrink
    layer = table.layers[second]
    assert layer["in_widths"] == [1, 8, 15, 22, 30] and layer["out_widths"] == [1, 12, 24, 36, 48]
    full = table.latency(second, np.array(30.0), np.array(48.0))
    mid = table.latency(second, np.array(20.0), np.array(48.0))
    assert np.isclose(full, 0.01 + 1e-6 * 30 * 9 * 48 * 32 * 32)
    assert table.latency(second, np.array(1.0), np.array(1.0)) < mid < full
    calls = timer.calls
    again = load_or_measure_table(path, structure, x, timer)
    assert timer.calls == calls and again.layers == json.loads(path.read_text())["layers"]
    load_or_measure_table(path, structure, torch.randn(2, 3, 32, 32), timer)  # other batch: measured again
    assert timer.calls > calls


def test_real_timer_small():
    t = BenchmarkTimer(rounds=3, min_run_time=0.002, warmup=0.002)(nn.Conv2d(4, 4, 3), torch.randn(1, 4, 8, 8))
    assert t.rounds == 3 and t.median_ms > 0 and t.iqr_ms >= 0


def test_latency_model_totals_the_measured_network(tmp_path):
    from lightning_legr.core.latency import LatencyModel

    x = torch.randn(1, 3, 32, 32)
    structure = Structure(vgg_small(), x)
    model = LatencyModel(structure, load_or_measure_table(None, structure, x, FakeTimer()), network_ms=5.0)
    assert np.isclose(model.total, 5.0)
    removed = np.zeros(structure.num_channels)
    removed[: structure.groups[1].width // 2 + structure.offsets[1]] = 1
    assert model.cost(removed) < model.total
