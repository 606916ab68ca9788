"""Latency: a per-layer latency table measured on the target device, with interpolation between widths.

Each conv/linear layer of a :class:`~lightning_legr.core.structure.Structure` is timed *alone*, on
inputs of the shapes it sees in the network (every call of it), at a small grid of widths (input
and output channels as they shrink), on the device, thread count and batch size given. What runs
around the layers (BatchNorm, activations, adds, pooling) is not in the table: the unpruned network is
timed end to end too, and the difference is the cost model's constant. Every figure carries its spread
(IQR). Layers of identical configuration and input shape are timed once.

The ``latency`` kind of budget (``prune(model, x, latency=0.5)``, ``LeGRPruner.prune(latency=0.5)``)
selects channels against the table, then measures the pruned network end to end, side by side with the
unpruned one, and corrects the selection along the same global ranking (:func:`meet_latency`) until the
measured share of the unpruned latency lands within 5% of the budget, or within the measurement's own
spread when that is larger. The share, not a figure in ms, is what is met: a machine's speed drifts
between minutes, a table is cached for days, and two networks timed beside each other drift alike.
"""

import copy
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils import benchmark

from lightning_legr.core._io import PathLike, read_json, write_json
from lightning_legr.core.cost import LayerCost, channel_widths, is_depthwise, register_cost
from lightning_legr.core.errors import ConfigurationError
from lightning_legr.core.structure import ExampleInputs, Structure, batch_of, map_tensors, run_model

__all__ = ["Timing", "BenchmarkTimer", "Beside", "time_side_by_side", "interleaved_rounds", "LatencyTable",
           "LatencyModel", "LatencyFit", "measure_table", "load_or_measure_table", "measure_key", "latency_cost",
           "meet_latency", "latency_floor", "check_latency_budgets"]

FORMAT = "lightning-legr/latency-table"
FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)  # 0 means one channel


@dataclass
class Timing:
    """One latency figure: median over rounds of each round's median, and the IQR over rounds (ms);
    ``values_ms``: each round's figure, when the timer keeps them (rounds of networks timed side by side
    pair up, round by round)."""

    median_ms: float
    iqr_ms: float
    rounds: int
    values_ms: Optional[List[float]] = None

    @classmethod
    def of(cls, values_ms: Sequence[float]) -> "Timing":
        q1, q3 = np.percentile(values_ms, [25, 75])
        return cls(float(statistics.median(values_ms)), float(q3 - q1), len(values_ms), [float(v) for v in values_ms])


Timer = Callable[[nn.Module, ExampleInputs], Timing]


class BenchmarkTimer:
    """Times ``run_model(module, inputs)`` with :mod:`torch.utils.benchmark` (which synchronises CUDA),
    in inference mode: an unmeasured warm-up, then ``rounds`` rounds of ``blocked_autorange``.

    Example::

        >>> t = BenchmarkTimer(rounds=2, min_run_time=0.001, warmup=0.001)(nn.Linear(4, 4), torch.randn(1, 4))
        >>> t.rounds, t.median_ms > 0
        (2, True)
    """

    def __init__(self, threads: int = 1, rounds: int = 5, min_run_time: float = 0.05, warmup: float = 0.05) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigurationError(f"`threads` must be a positive integer, got {threads!r}")
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ConfigurationError(f"`rounds` must be a positive integer, got {rounds!r}")
        self.threads, self.rounds, self.min_run_time, self.warmup = threads, rounds, float(min_run_time), float(warmup)

    def describe(self) -> Dict[str, Any]:
        return {"timer": "torch.utils.benchmark", "threads": self.threads, "rounds": self.rounds,
                "min_run_time": self.min_run_time, "warmup": self.warmup}

    def __call__(self, module: nn.Module, inputs: ExampleInputs) -> Timing:
        return self.side_by_side([module], inputs)[0]

    def side_by_side(self, modules: Sequence[nn.Module], inputs: ExampleInputs) -> List[Timing]:
        """Time several networks interleaved (see :func:`interleaved_rounds`), so that a slow spell of the
        machine slows all of them, not one."""
        rounds = interleaved_rounds([(m, inputs) for m in modules], self.threads, self.rounds, self.min_run_time,
                                    self.warmup)
        return [Timing.of(r) for r in rounds]


def interleaved_rounds(
    calls: Sequence[Tuple[Any, ExampleInputs]], threads: int, rounds: int, min_run_time: float, warmup: float
) -> List[List[float]]:
    """Milliseconds per call of ``run_model(network, inputs)`` for every pair of ``calls``, in inference mode
    with :mod:`torch.utils.benchmark` (which synchronises CUDA): each pair first runs ``warmup`` seconds
    unmeasured (allocations, caches), then ``rounds`` rounds time every pair once (``blocked_autorange``), in
    alternating order. A list of the round figures per pair."""

    def timer(network: Any, inputs: ExampleInputs) -> benchmark.Timer:
        return benchmark.Timer(stmt="run(m, x)", globals={"run": run_model, "m": network, "x": inputs},
                               num_threads=threads)

    times: List[List[float]] = [[] for _ in calls]
    with torch.inference_mode():
        for network, inputs in calls:
            timer(network, inputs).blocked_autorange(min_run_time=warmup)
        for r in range(rounds):
            for i in (range(len(calls)) if r % 2 == 0 else reversed(range(len(calls)))):
                network, inputs = calls[i]
                times[i].append(1000 * timer(network, inputs).blocked_autorange(min_run_time=min_run_time).median)
    return times


def time_side_by_side(timer: Timer, modules: Sequence[nn.Module], inputs: ExampleInputs) -> List[Timing]:
    """``modules`` timed interleaved when ``timer`` can (``timer.side_by_side``, as :class:`BenchmarkTimer`),
    else one after another (a deterministic timer, e.g. in tests, needs nothing more)."""
    compare = getattr(timer, "side_by_side", None)
    return compare(modules, inputs) if compare is not None else [timer(m, inputs) for m in modules]


@dataclass
class Beside:
    """A network timed side by side with the unpruned one: both timings, and the network's share of the
    unpruned latency (``ratio``) with its spread. The machine's speed drifts between minutes (10-20% seen
    on a shared CPU); measured beside each other, both drift alike, so their ratio is what to trust."""

    network: Timing
    unpruned: Timing

    def _paired(self) -> Optional[np.ndarray]:
        mine, theirs = self.network.values_ms, self.unpruned.values_ms
        return np.asarray(mine) / np.asarray(theirs) if mine and theirs and len(mine) == len(theirs) else None

    @property
    def ratio(self) -> float:
        """The median of the round-by-round ratios (a slow spell cancels within a round), or, where the timer
        keeps no rounds, the ratio of the medians."""
        paired = self._paired()
        return float(np.median(paired)) if paired is not None else self.network.median_ms / self.unpruned.median_ms

    @property
    def spread(self) -> float:
        """The IQR of the round-by-round ratios, or, where the timer keeps no rounds, the network's IQR over the
        unpruned median."""
        paired = self._paired()
        if paired is not None:
            q1, q3 = np.percentile(paired, [25, 75])
            return float(q3 - q1)
        return self.network.iqr_ms / self.unpruned.median_ms


class _LayerCalls(nn.Module):
    """A layer called once per recorded input: what one layer costs in one forward of the network."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, *inputs: torch.Tensor) -> List[torch.Tensor]:
        return [self.layer(x) for x in inputs]


def _config(module: nn.Module) -> Dict[str, Any]:
    if isinstance(module, nn.Linear):
        return {"type": "Linear", "in": module.in_features, "out": module.out_features, "bias": module.bias is not None}
    return {"type": type(module).__name__, "in": module.in_channels, "out": module.out_channels,
            "kernel": list(module.kernel_size), "stride": list(module.stride), "padding": str(module.padding),
            "dilation": list(module.dilation), "groups": module.groups, "bias": module.bias is not None}


def _resized(module: nn.Module, c_in: int, c_out: int) -> nn.Module:
    """A fresh layer like ``module`` with ``c_in`` / ``c_out`` channels, as pruning leaves it: a depthwise
    convolution keeps one group per output channel, each with its input channels (its two sides are one channel
    group: the narrower decides); a grouped one keeps its groups, each narrower (widths rounded to whole
    multiples of the groups)."""
    if isinstance(module, nn.Linear):
        return nn.Linear(c_in, c_out, bias=module.bias is not None)
    groups = module.groups
    if is_depthwise(module):  # one group per output channel, each with its input channels
        per_group = module.in_channels // groups
        groups = c_out = max(1, min(round(c_in / per_group), c_out))
        c_in = per_group * c_out
    elif groups > 1:
        c_in, c_out = (max(groups, groups * round(c / groups)) for c in (c_in, c_out))
    layer = copy.deepcopy(module)
    layer.in_channels, layer.out_channels, layer.groups = c_in, c_out, groups
    shape = (c_in, c_out // groups) if module.transposed else (c_out, c_in // groups)
    layer.weight = nn.Parameter(torch.randn(*shape, *module.kernel_size))
    if module.bias is not None:
        layer.bias = nn.Parameter(torch.randn(c_out))
    return layer


def _grid(full: int, shrinks: bool) -> List[int]:
    return sorted({max(1, round(f * full)) for f in FRACTIONS}) if shrinks else [full]


@dataclass
class LatencyTable:
    """Per conv/linear layer (the Structure's ``layer_positions`` order), its latency (ms) on a grid
    of (input, output) channel counts, with the IQR of every figure; ``key`` says what it was measured
    for (layers, input shapes, setting, timer) and must match for the table to be reused."""

    key: Dict[str, Any]
    layers: List[Dict[str, Any]]
    network: Optional[Dict[str, Any]] = None  # the unpruned network end to end: median_ms, iqr_ms, rounds

    def latency(self, row: int, c_in: np.ndarray, c_out: np.ndarray) -> np.ndarray:
        """Bilinear interpolation of row ``row`` at channel counts ``c_in`` / ``c_out`` (clamped to the grid),
        made non-decreasing in both widths first (noise must not make a narrower layer slower)."""
        layer = self.layers[row]
        gi, go = np.asarray(layer["in_widths"], float), np.asarray(layer["out_widths"], float)
        values = np.maximum.accumulate(np.maximum.accumulate(np.asarray(layer["median_ms"], float), 0), 1)
        x, y = np.clip(np.asarray(c_in, float), gi[0], gi[-1]), np.clip(np.asarray(c_out, float), go[0], go[-1])
        along_out = np.stack([np.interp(y, go, values[i]) for i in range(len(gi))], -1)
        if len(gi) == 1:
            return along_out[..., 0]
        i = np.clip(np.searchsorted(gi, x, side="right") - 1, 0, len(gi) - 2)
        w = (x - gi[i]) / (gi[i + 1] - gi[i])
        low = np.take_along_axis(along_out, i[..., None], -1)[..., 0]
        high = np.take_along_axis(along_out, (i + 1)[..., None], -1)[..., 0]
        return (1 - w) * low + w * high

    def to_dict(self) -> Dict[str, Any]:
        return {"format": FORMAT, "version": 1, "key": self.key, "network": self.network, "layers": self.layers}


def _record_inputs(structure: Structure, inputs: ExampleInputs) -> Dict[str, List[tuple]]:
    named = dict(structure.model.named_modules())
    shapes: Dict[str, List[tuple]] = {n: [] for n in structure.layer_positions}
    handles = [named[n].register_forward_hook(lambda m, a, o, n=n: shapes[n].append(tuple(a[0].shape)))
               for n in shapes]
    try:
        with torch.no_grad():
            run_model(structure.model.eval(), inputs)
    finally:
        for h in handles:
            h.remove()
    return shapes


def measure_table(
    structure: Structure, inputs: ExampleInputs, timer: Timer, device: str = "cpu", describe: Optional[dict] = None
) -> LatencyTable:
    """Time every conv/linear layer of ``structure`` at a grid of widths (its input channels shrink if
    a group feeds it, its outputs if a group owns them), on ``inputs`` (already at the batch size)."""
    named = dict(structure.model.named_modules())
    shrinks_in, shrinks_out = set(), set()
    for group in structure.groups:
        for m in group.members:
            (shrinks_out if m.role == "out" else shrinks_in).add(m.target)
    shapes = _record_inputs(structure, inputs)
    done: Dict[str, Timing] = {}
    layers = []
    for name in structure.layer_positions:
        module = named[name]
        config = _config(module)
        depthwise = is_depthwise(module)  # its two sides shrink together
        gi = _grid(config["in"], name in shrinks_in or (depthwise and name in shrinks_out))
        go = _grid(config["out"], name in shrinks_out or (depthwise and name in shrinks_in))
        median, iqr = [], []
        for c_in in gi:
            row_m, row_i = [], []
            for c_out in go:
                layer = _resized(module, c_in, c_out)
                width = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
                key = repr((_config(layer), shapes[name]))  # a depthwise layer's (c_in, c_out) share their min
                if key not in done:
                    xs = tuple(torch.randn(*s[:-1], width) if isinstance(module, nn.Linear)
                               else torch.randn(s[0], width, *s[2:]) for s in shapes[name])
                    done[key] = timer(_LayerCalls(layer).to(device).eval(), tuple(x.to(device) for x in xs))
                row_m.append(done[key].median_ms)
                row_i.append(done[key].iqr_ms)
            median.append(row_m)
            iqr.append(row_i)
        layers.append({"name": name, "config": config, "input_shapes": [list(s) for s in shapes[name]],
                       "in_widths": gi, "out_widths": go, "median_ms": median, "iqr_ms": iqr})
    key = _key([[l["name"], l["config"], l["input_shapes"]] for l in layers], device, describe)
    network = timer(copy.deepcopy(structure.model).to(device).eval(), inputs)
    return LatencyTable(key, layers, {"median_ms": network.median_ms, "iqr_ms": network.iqr_ms, "rounds": network.rounds})


def load_or_measure_table(
    path: Optional[PathLike], structure: Structure, inputs: ExampleInputs, timer: Timer, device: str = "cpu",
    describe: Optional[dict] = None,
) -> LatencyTable:
    """The table cached at ``path`` (strict JSON, written atomically) if it was measured for the same
    layers, shapes and setting; otherwise a fresh measurement, written there."""
    if path is not None:
        try:
            data = read_json(path)
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict) and data.get("format") == FORMAT:
            fresh_key = measure_key(structure, inputs, device, describe)
            if data.get("key") == fresh_key and data.get("network"):
                return LatencyTable(data["key"], data["layers"], data["network"])
    table = measure_table(structure, inputs, timer, device, describe)
    if path is not None:
        write_json(path, table.to_dict())
    return table


def measure_key(structure: Structure, inputs: ExampleInputs, device: str = "cpu", describe: Optional[dict] = None):
    """The ``key`` a table measured now would have, without timing anything."""
    named = dict(structure.model.named_modules())
    shapes = _record_inputs(structure, inputs)
    return _key([[n, _config(named[n]), [list(s) for s in shapes[n]]] for n in structure.layer_positions], device,
                describe)


def _key(rows: List[list], device: str, describe: Optional[dict]) -> Dict[str, Any]:
    # "grid" 2: grouped and depthwise layers are timed at every width too (tables before timed them at full width)
    return {"layers": rows, "device": device, "setting": describe or {}, "fractions": list(FRACTIONS), "grid": 2,
            "torch": torch.__version__}


class LatencyModel(LayerCost):
    """Latency (ms) as a function of the channels removed: the table's interpolated per-layer figures,
    plus the rest of the network measured end to end (``network_ms`` minus the layers at full width) as
    the constant, so ``total`` equals the measured unpruned latency. Selection then works against it
    like against FLOPs; :func:`meet_latency` corrects a selection by measuring the pruned network.

    ``measure_beside(module)`` (set by :func:`latency_cost`) times a network end to end at the table's setting,
    side by side with the unpruned one (a :class:`Beside`)."""

    kind = "latency"
    unit = "latency (as the table predicts it)"

    def __init__(self, structure: Structure, table: LatencyTable, network_ms: float) -> None:
        super().__init__(structure)
        names = [layer["name"] for layer in table.layers]
        if names != self.layer_names:
            raise ConfigurationError("the latency table was measured for other layers; measure it for this model")
        self.table = table
        self.constant = 0.0
        self.constant = float(network_ms) - self.cost(np.zeros(self.in_incidence.shape[1]))
        self._finish()

    def layer_costs(self, inp: np.ndarray, out: np.ndarray) -> np.ndarray:
        inp, out = np.asarray(inp, float), np.asarray(out, float)
        return np.stack([  # the table is by channels; a row's widths count a conv's per-group side divided
            self.table.latency(r, *channel_widths(module, inp[..., r], out[..., r]))
            for r, module in enumerate(self.modules)
        ], -1)

    def meet(self, pruner: Any, budget: float, transform: Any = None):
        """The measured correction of a selection (see :func:`meet_latency`)."""
        return meet_latency(pruner, budget, transform)


def latency_cost(
    structure: Structure,
    batch_size: int = 1,
    threads: int = 1,
    device: Optional[str] = None,
    cache: Optional[PathLike] = None,
    timer: Optional[Timer] = None,
    rounds: int = 5,
    table: Optional[Dict[str, Any]] = None,
) -> LatencyModel:
    """The ``latency`` kind's cost model: the per-layer table of ``structure`` measured (or loaded from
    ``cache``) at ``batch_size`` on ``device`` (default: where the model's parameters are) with ``threads``
    CPU threads, and the unpruned network timed end to end. Options come from
    ``LeGRPruner(cost_options={"latency": {...}})``. ``table``: a table measured elsewhere (its
    ``to_dict()``, e.g. rank 0's in a distributed run), used as it is.

    Example::

        >>> from lightning_legr.core.structure import Structure
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
        >>> fast = BenchmarkTimer(rounds=2, min_run_time=0.001, warmup=0.001)
        >>> model = latency_cost(Structure(net, torch.randn(1, 3, 16, 16)), timer=fast)
        >>> model.setting["batch_size"], model.total > 0
        (1, True)
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError(f"`batch_size` of a latency budget must be a positive integer, got {batch_size!r}")
    if structure.example_inputs is None:
        raise ConfigurationError("A latency budget needs an example input to time the network on; give one.")
    if device is None:
        first = next(structure.model.parameters(), None)
        device = "cpu" if first is None else str(first.device)
    timer = timer or BenchmarkTimer(threads=threads, rounds=rounds)
    inputs = map_tensors(batch_of(structure.example_inputs, batch_size), lambda t: t.detach().to(device))
    describe = getattr(timer, "describe", lambda: {"timer": type(timer).__name__})()
    setting = {"batch_size": batch_size, "device": device, **describe}
    if table is not None:
        table = LatencyTable(table["key"], table["layers"], table["network"])
    else:
        table = load_or_measure_table(cache, structure, inputs, timer, device, setting)
    model = LatencyModel(structure, table, table.network["median_ms"])
    model.setting = setting
    model.unpruned = Timing(table.network["median_ms"], table.network["iqr_ms"], table.network["rounds"])

    reference: List[nn.Module] = []  # the unpruned network, copied once for every measurement beside it

    def measure_beside(module: nn.Module) -> Beside:
        if not reference:
            reference.append(copy.deepcopy(structure.model).to(device).eval())
        unpruned, network = time_side_by_side(timer, [reference[0], copy.deepcopy(module).to(device).eval()], inputs)
        return Beside(network, unpruned)

    model.measure_beside = measure_beside
    return model


register_cost("latency", latency_cost)


@dataclass
class LatencyFit:
    """How a latency budget was met: the target, what the chosen network measured end to end, and how.

    Every network is timed side by side with the unpruned one (interleaved rounds), and the budget is a
    share of the unpruned latency *measured beside it* (``unpruned_ms``): the host's drift between minutes
    cancels. ``ratio`` is that share, the median of the round-by-round ratios; ``within`` says whether it
    landed within 5% of the budget, or within the measurement's own spread (the IQR of those ratios) when
    that is larger (``spread_limited`` then). In ms: ``target_ms`` is the budget times ``unpruned_ms``,
    ``tolerance_ms`` the band times ``unpruned_ms``, ``measured_ms`` the network's median.
    """

    budget: float
    target_ms: float
    measured_ms: float
    iqr_ms: float
    tolerance_ms: float
    within: bool
    spread_limited: bool
    table_budget: float  # the budget against the table that gave the chosen selection
    measurements: int
    unpruned_ms: float  # the unpruned network, timed beside the chosen one
    setting: Dict[str, Any]
    ratio: float  # the network's share of the unpruned latency: the median of the round-by-round ratios
    ratio_iqr: float  # their IQR

    def to_dict(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def meet_latency(pruner: Any, budget: float, transform: Any = None, tolerance: float = 0.05, max_steps: int = 8):
    """``(selection, LatencyFit)`` for a latency budget: the selection against the table, corrected by
    measuring the pruned network end to end, side by side with the unpruned one, and bisecting along the
    same global ranking (a budget against the table, in ``[floor, 1]``) until the measured share of the
    unpruned latency is within ``tolerance`` of ``budget``, or the measurement's spread when larger;
    otherwise the closest one found in ``max_steps`` measurements (``within=False``).

    Raises:
        ConfigurationError: the target is below the reachable floor: the network pruned as far as the
            safeguard allows, measured, is slower than the target by more than the tolerance.
    """
    from lightning_legr.core.selection import check_budget

    budget = check_budget(budget, "latency")
    model = pruner.cost_model("latency")
    lowest = pruner.min_budget("latency")
    cache: Dict[tuple, Beside] = {}

    def measure(table_budget: float):
        selection = pruner.select(transform=transform, latency=table_budget)
        key = tuple(int(w) for w in selection.widths)
        if key not in cache:
            cache[key] = model.measure_beside(pruner.apply(selection))
        return selection, cache[key]

    def band(measured: Beside) -> float:  # in shares of the unpruned latency
        return max(tolerance * budget, measured.spread)

    floor_selection, floor = measure(lowest)
    _check_floor(model, budget, floor, tolerance)
    lo, hi, table_budget = lowest, 1.0, max(budget, lowest)
    best = (abs(floor.ratio - budget), floor_selection, floor, lowest)
    for _ in range(max_steps):
        selection, measured = measure(table_budget)
        miss = abs(measured.ratio - budget)
        if miss < best[0]:
            best = (miss, selection, measured, table_budget)
        if miss <= band(measured):
            break
        if measured.ratio > budget:
            hi = table_budget
        else:
            lo = table_budget
        if hi - lo < 1e-4:
            break
        table_budget = (lo + hi) / 2
    miss, selection, measured, table_budget = best
    unpruned = measured.unpruned.median_ms
    fit = LatencyFit(
        budget=budget, target_ms=budget * unpruned, measured_ms=measured.network.median_ms,
        iqr_ms=measured.network.iqr_ms, tolerance_ms=band(measured) * unpruned, within=miss <= band(measured),
        spread_limited=measured.spread > tolerance * budget, table_budget=float(table_budget),
        measurements=len(cache), unpruned_ms=unpruned, setting=dict(model.setting), ratio=measured.ratio,
        ratio_iqr=measured.spread,
    )
    return selection, fit


def latency_floor(pruner: Any) -> Beside:
    """The network pruned as far as the safeguard allows (the same channels go whatever the ranking),
    measured beside the unpruned one: no latency budget can go below it."""
    lowest = pruner.select(latency=pruner.min_budget("latency"))
    return pruner.cost_model("latency").measure_beside(pruner.apply(lowest))


def check_latency_budgets(pruner: Any, budgets: Sequence[float], tolerance: float = 0.05) -> Beside:
    """Refuse, with the floor in the message, latency budgets below the measured floor (one measurement);
    the floor's measurement."""
    from lightning_legr.core.selection import check_budget

    model, floor = pruner.cost_model("latency"), latency_floor(pruner)
    for budget in budgets:
        _check_floor(model, check_budget(budget, "latency"), floor, tolerance)
    return floor


def _check_floor(model: LatencyModel, budget: float, floor: Beside, tolerance: float) -> None:
    if floor.ratio - max(tolerance * budget, floor.spread) > budget:
        unpruned = floor.unpruned.median_ms
        raise ConfigurationError(
            f"A latency budget of {budget:g} ({budget * unpruned:.3f} ms {_describe_setting(model.setting)}) cannot be"
            f" reached: the network pruned as far as the safeguard allows runs in {floor.network.median_ms:.3f} ms"
            f" (IQR {floor.network.iqr_ms:.3f}), {floor.ratio:.3f} of the unpruned {unpruned:.3f} ms measured beside"
            " it: per-layer overhead that removing channels cannot remove. Raise the budget to"
            f" {floor.ratio:.3f} or more, or lower `safeguard`."
        )


def _describe_setting(setting: Dict[str, Any]) -> str:
    threads = setting.get("threads")
    return (f"at batch {setting.get('batch_size')} on {setting.get('device')}"
            + (f", {threads} thread{'s' if threads != 1 else ''}" if threads else ""))
