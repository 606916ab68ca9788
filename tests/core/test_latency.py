"""The per-layer latency table: grid, interpolation, strict-JSON cache reused when the setting matches."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from lightning_legr import LeGRPruner, prune
from lightning_legr.core.errors import ConfigurationError
from lightning_legr.core.latency import BenchmarkTimer, Beside, Timing, _LayerCalls, load_or_measure_table
from lightning_legr.core.surgery import pruning_record
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


class NetworkTimer(FakeTimer):
    """Deterministic, and unlike the table on purpose: a whole network costs ``overhead`` ms plus ``scale``
    times its layers (a layer timed alone costs what FakeTimer says), so the table's prediction of a
    pruned network is off and only the end-to-end correction can meet a budget."""

    def __init__(self, overhead: float = 0.5, scale: float = 1.3) -> None:
        super().__init__()
        self.overhead, self.scale, self.networks = overhead, scale, 0

    def __call__(self, module, inputs) -> Timing:
        timing = super().__call__(module, inputs)
        if isinstance(module, _LayerCalls):
            return timing
        self.networks += 1
        return Timing(self.overhead + self.scale * timing.median_ms, 0.0, 1)


def _true_ms(timer: NetworkTimer, module, x) -> float:
    return NetworkTimer(timer.overhead, timer.scale)(module.eval(), x).median_ms


def test_a_latency_budget_is_corrected_to_within_5_percent_of_the_measured_target():
    x = torch.randn(1, 3, 32, 32)
    model = vgg_small()
    timer = NetworkTimer()
    pruner = LeGRPruner(model, x, cost_options={"latency": {"timer": timer}})
    unpruned = _true_ms(timer, model, x)
    assert np.isclose(pruner.cost_model("latency").total, unpruned)
    table_only = pruner.apply(pruner.select(latency=0.6))
    assert abs(_true_ms(timer, table_only, x) / unpruned - 0.6) > 0.05 * 0.6  # the table alone misses
    small = pruner.prune(latency=0.6)
    measured = _true_ms(timer, small, x)
    assert abs(measured - 0.6 * unpruned) <= 0.05 * 0.6 * unpruned
    fit = pruning_record(small)["steps"][-1]["fit"]
    assert fit["within"] and not fit["spread_limited"] and np.isclose(fit["measured_ms"], measured)
    assert fit["setting"]["batch_size"] == 1 and fit["setting"]["device"] == "cpu"
    assert fit["table_budget"] != 0.6 and fit["measurements"] >= 2
    # the same through the one-call API, with a batch size of the user's
    small = prune(model, x, latency=0.6, cost_options={"latency": {"timer": NetworkTimer(), "batch_size": 4}})
    fit = pruning_record(small)["steps"][-1]["fit"]
    assert fit["within"] and fit["setting"]["batch_size"] == 4


class DriftingTimer(NetworkTimer):
    """The machine slows down by ``factor`` once the table is measured (its last timing is the unpruned
    network's): every later network takes ``factor`` times as long."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def __call__(self, module, inputs) -> Timing:
        timing = super().__call__(module, inputs)
        if isinstance(module, _LayerCalls) or self.networks == 1:
            return timing
        return Timing(self.factor * timing.median_ms, 0.0, 1)


def test_side_by_side_rounds_pair_up_so_the_machine_drift_cancels():
    drifting = Beside(Timing.of([5.0, 6.0, 7.0, 8.0, 30.0]), Timing.of([10.0, 12.0, 14.0, 16.0, 60.0]))
    assert drifting.network.iqr_ms == 2.0 and drifting.ratio == 0.5 and drifting.spread == 0.0
    noisy = Beside(Timing.of([5.0, 5.5, 6.0]), Timing.of([10.0, 10.0, 10.0]))
    assert noisy.ratio == 0.55 and noisy.spread == pytest.approx(0.05)
    unpaired = Beside(Timing(6.0, 1.0, 5), Timing(12.0, 2.0, 5))  # a timer that keeps no rounds
    assert unpaired.ratio == 0.5 and unpaired.spread == pytest.approx(1.0 / 12.0)


def test_a_latency_budget_is_a_share_of_the_unpruned_latency_measured_beside_it():
    """A cached table's unpruned figure goes stale when the machine's speed drifts; the target does not."""
    x = torch.randn(1, 3, 32, 32)
    timer = DriftingTimer(factor=1.4)
    pruner = LeGRPruner(vgg_small(), x, cost_options={"latency": {"timer": timer}})
    table_ms = pruner.cost_model("latency").total
    small = pruner.prune(latency=0.6)
    fit = pruning_record(small)["steps"][-1]["fit"]
    assert fit["unpruned_ms"] == pytest.approx(1.4 * table_ms)  # timed beside the pruned network, slowed alike
    assert fit["within"] and abs(fit["ratio"] - 0.6) <= 0.05 * 0.6
    true_ratio = _true_ms(NetworkTimer(), small, x) / _true_ms(NetworkTimer(), vgg_small(), x)
    assert abs(true_ratio - 0.6) <= 0.05 * 0.6  # measured against the stale 1.0x figure it would be 0.6 / 1.4


class RoundDriftTimer(NetworkTimer):
    """Times networks side by side in rounds, and the machine's speed changes from round to round (x1 to x3),
    alike for every network of a round: only the paired rounds show how the networks compare."""

    factors = (1.0, 3.0, 1.5, 2.5, 1.2)

    def side_by_side(self, modules, inputs):
        return [Timing.of([self(m, inputs).median_ms * f for f in self.factors]) for m in modules]


def test_a_latency_budget_is_judged_on_the_paired_rounds():
    x = torch.randn(1, 3, 32, 32)
    pruner = LeGRPruner(vgg_small(), x, cost_options={"latency": {"timer": RoundDriftTimer()}})
    small = pruner.prune(latency=0.6)
    fit = pruning_record(small)["steps"][-1]["fit"]
    assert fit["iqr_ms"] > 0.5 * fit["measured_ms"]  # each network's rounds spread widely ...
    assert fit["ratio_iqr"] == pytest.approx(0.0, abs=1e-12)  # ... their ratios do not
    assert fit["within"] and not fit["spread_limited"] and abs(fit["ratio"] - 0.6) <= 0.05 * 0.6
    true_ratio = _true_ms(NetworkTimer(), small, x) / _true_ms(NetworkTimer(), vgg_small(), x)
    assert abs(true_ratio - 0.6) <= 0.05 * 0.6


def test_a_latency_target_below_the_floor_is_refused_with_the_floor():
    x = torch.randn(1, 3, 32, 32)
    timer = NetworkTimer(overhead=100.0, scale=1.0)  # per-network overhead no pruning removes
    pruner = LeGRPruner(vgg_small(), x, cost_options={"latency": {"timer": timer}})
    with pytest.raises(ConfigurationError, match=r"A latency budget of 0\.5 \(.* ms at batch 1 on cpu\) cannot be"
                       r" reached: the network pruned as far as the safeguard allows runs in .* ms .* Raise the budget"
                       r" to 0\.\d+ or more"):
        pruner.prune(latency=0.5)


def test_latency_budget_inputs_are_checked_before_any_timing():
    x = torch.randn(1, 3, 32, 32)
    timer = NetworkTimer()
    with pytest.raises(ConfigurationError, match="Give one kind of budget, got `flops` and `latency`"):
        prune(vgg_small(), x, flops=0.5, latency=0.5, cost_options={"latency": {"timer": timer}})
    with pytest.raises(ConfigurationError, match="`batch_size` of a latency budget must be a positive integer"):
        LeGRPruner(vgg_small(), x, cost_options={"latency": {"timer": timer, "batch_size": 0}}).select(latency=0.5)
    with pytest.raises(ConfigurationError, match=r"`latency` must be in \(0, 1\]"):
        LeGRPruner(vgg_small(), x, cost_options={"latency": {"timer": timer}}).prune(latency=1.5)
    assert timer.calls == 0


def _three_layers() -> nn.Module:
    """A network small enough that the real timer's rounds take milliseconds."""
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def test_latency_budget_with_the_real_timer_on_a_tiny_net(tmp_path):
    x, net = torch.randn(1, 3, 16, 16), _three_layers()
    fast = BenchmarkTimer(rounds=3, min_run_time=0.005, warmup=0.005)
    cache = tmp_path / "latency_table.json"
    pruner = LeGRPruner(net, x, cost_options={"latency": {"timer": fast, "cache": cache}})
    small = pruner.prune(latency=0.9)
    fit = pruning_record(small)["steps"][-1]["fit"]
    assert fit["measured_ms"] > 0 and fit["tolerance_ms"] >= 0.05 * fit["target_ms"]
    assert fit["unpruned_ms"] > 0 and fit["target_ms"] == pytest.approx(0.9 * fit["unpruned_ms"])
    band = max(0.05 * 0.9, fit["ratio_iqr"])  # the paired rounds' ratio, against 5% or its own spread
    assert fit["within"] == (abs(fit["ratio"] - 0.9) <= band) and fit["tolerance_ms"] == pytest.approx(band * fit["unpruned_ms"])
    table = json.loads(cache.read_text())
    assert table["network"]["median_ms"] > 0
    assert table["key"]["setting"]["threads"] == 1 and table["key"]["setting"]["batch_size"] == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on the CPU machines)")
def test_latency_budget_on_cuda_is_timed_and_met_on_cuda(tmp_path):
    x, net = torch.randn(1, 3, 16, 16, device="cuda"), _three_layers().cuda()
    fast = BenchmarkTimer(rounds=3, min_run_time=0.005, warmup=0.005)
    cache = tmp_path / "latency_table.json"
    small = LeGRPruner(net, x, cost_options={"latency": {"timer": fast, "cache": cache}}).prune(latency=0.9)
    assert {p.device.type for p in small.parameters()} == {"cuda"}
    fit = pruning_record(small)["steps"][-1]["fit"]
    assert fit["setting"]["device"].startswith("cuda") and fit["unpruned_ms"] > 0 and fit["measured_ms"] > 0
    assert json.loads(cache.read_text())["key"]["device"].startswith("cuda")
    assert small(x).shape == (1, 10)


@pytest.mark.parametrize("name, kind", [("mobilenet_v2_small", "depthwise"), ("resnext_c4", "grouped")])
def test_grouped_and_depthwise_layers_are_timed_at_the_widths_pruning_leaves(name, kind):
    """A depthwise layer shrinks on both sides at once (one group per channel); a grouped one keeps its groups,
    each narrower: the table times them so, at every width of the grid, not at full width only."""
    from tests.models import build
    from tests.zoo import build_zoo

    model = build(name) if name in ("mobilenet_v2_small",) else build_zoo(name)
    x = torch.randn(1, 3, 32, 32)
    structure = Structure(model, x)
    table = load_or_measure_table(None, structure, x, FakeTimer())
    named = dict(model.named_modules())
    rows = [(r, layer) for r, layer in enumerate(table.layers) if getattr(named[layer["name"]], "groups", 1) > 1]
    assert rows
    for r, layer in rows:
        module = named[layer["name"]]
        depthwise = module.groups == module.in_channels == module.out_channels
        assert depthwise == (kind == "depthwise") and len(layer["in_widths"]) == len(layer["out_widths"]) == 5
        full = table.latency(r, np.array(float(module.in_channels)), np.array(float(module.out_channels)))
        half_in, half_out = module.in_channels // 2, module.out_channels // 2
        half = table.latency(r, np.array(float(half_in)), np.array(float(half_out)))
        assert half < full
        if depthwise:  # exactly a depthwise conv of that many channels
            out = module(torch.randn(*layer["input_shapes"][0])).shape[-2:].numel()
            c = layer["in_widths"][2]
            assert np.isclose(table.latency(r, np.array(float(c)), np.array(float(c))), 0.01 + 1e-6 * 9 * c * out)


@pytest.mark.parametrize("name", ["mobilenet_v2_small", "resnext_c4"])
def test_the_latency_model_reads_grouped_and_depthwise_rows_by_channels(name):
    """The cost model's rows count a conv's per-group side divided by its groups; the table counts channels.
    Removing channels that feed a grouped or depthwise layer must cost what the table says for that layer at
    the channels left, and less than at full width."""
    from lightning_legr.core.latency import LatencyModel
    from tests.models import build
    from tests.zoo import build_zoo

    model = build(name) if name == "mobilenet_v2_small" else build_zoo(name)
    x = torch.randn(1, 3, 32, 32)
    structure = Structure(model, x)
    latency = LatencyModel(structure, load_or_measure_table(None, structure, x, FakeTimer()), network_ms=100.0)
    named = dict(model.named_modules())
    full = latency.layer_costs(*latency.widths(np.zeros(structure.num_channels)))
    checked = 0
    for group in structure.groups:
        grouped = {m.target for m in group.members if getattr(named[m.target], "groups", 1) > 1}
        half = (group.width // 2) // group.step * group.step
        if not grouped or half == 0:
            continue
        removed = np.zeros(structure.num_channels)
        removed[structure.offsets[group.index] + np.arange(half)] = 1
        costs = latency.layer_costs(*latency.widths(removed))
        for target in grouped:
            module, roles = named[target], {m.role for m in group.members if m.target == target}
            depthwise = module.groups == module.out_channels
            c_in = module.in_channels - (half if "in" in roles or depthwise else 0)
            c_out = module.out_channels - (half if "out" in roles or depthwise else 0)
            r = latency.layer_names.index(target)
            assert np.isclose(costs[r], latency.table.latency(r, np.array(float(c_in)), np.array(float(c_out)))), target
            assert costs[r] < full[r], target
            checked += 1
    assert checked
