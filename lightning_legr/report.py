"""Results of a LeGR run: CPU latency you can believe, a printed table, CSV/JSON files and PNG plots."""

import copy
import csv
import io
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
from torch import nn

from lightning_legr.core._io import atomic_path, write_json
from lightning_legr.core.latency import Timing, interleaved_rounds
from lightning_legr.core.structure import ExampleInputs, batch_of, map_tensors

__all__ = ["Latency", "measure_latency", "measure_latencies", "batch_of", "format_table", "write_results", "plot_metric",
           "plot_widths"]

COLUMNS = [
    ("budget", "budget", "{:.2f}"),
    ("flops", "MFLOPs", "{:.2f}"),
    ("flops_ratio", "FLOPs", "{:.1%}"),
    ("params", "kparams", "{:.1f}"),
    ("params_ratio", "params", "{:.1%}"),
    ("metric_before", "pruned", "{:.4f}"),
    ("metric_after", "tuned", "{:.4f}"),
    ("latency_b1_ms", "ms @1", None),
    ("latency_b64_ms", "ms @64", None),
    ("checkpoint", "checkpoint", "{}"),
]
_SCALE = {"flops": 1e-6, "params": 1e-3}
LATENCY_BATCHES = (1, 64)


@dataclass
class Latency:
    """Wall time of one forward pass: the median over rounds of each round's median, and the
    interquartile range over the rounds (the spread to read a difference against)."""

    median_ms: float
    iqr_ms: float
    rounds: int
    batch_size: int
    threads: int
    device: str = "cpu"

    def __str__(self) -> str:
        digits = 2 if self.median_ms < 100 else 1
        return f"{self.median_ms:.{digits}f}\u00b1{self.iqr_ms:.{digits}f}"


def measure_latencies(
    models: Mapping[Any, Any],
    example_inputs: ExampleInputs,
    batch_sizes: Sequence[int] = LATENCY_BATCHES,
    threads: int = 1,
    rounds: int = 5,
    min_run_time: float = 0.1,
    warmup: float = 0.2,
) -> Dict[str, Dict[int, Latency]]:
    """CPU latency of several networks, measured side by side.

    Each network runs on a copy in eval mode, contiguous memory and inference mode, with ``threads``
    threads (a network that is not a module, such as an
    :class:`~lightning_legr.core.export.OnnxRunner`, is called as it is, with its own threads), timed by :mod:`torch.utils.benchmark` (warm-up, then ``blocked_autorange``). The networks
    are first run for ``warmup`` seconds each, unmeasured, then interleaved in ``rounds`` (in alternating
    order), so that a busy spell of the machine slows all
    of them rather than one: compare them by their medians, against their IQRs.

    Example::

        >>> from lightning_legr import prune
        >>> from lightning_legr.models import cifar_resnet
        >>> model, x = cifar_resnet(20), torch.randn(1, 3, 32, 32)
        >>> times = measure_latencies({"full": model, "half": prune(model, x, flops=0.5)}, x, [1], rounds=2,
        ...                           min_run_time=0.01, warmup=0.01)
        >>> times["half"][1].threads, times["half"][1].rounds
        (1, 2)
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"`threads` must be a positive integer, got {threads!r}")
    prepared = {name: _prepared(m) for name, m in models.items()}
    example = map_tensors(example_inputs, lambda t: t.detach().cpu().contiguous())
    inputs = {b: batch_of(example, b) for b in batch_sizes}
    pairs = [(n, b) for n in prepared for b in batch_sizes]
    times = interleaved_rounds([(prepared[n], inputs[b]) for n, b in pairs], threads, rounds, min_run_time, warmup)
    result: Dict[str, Dict[int, Latency]] = {}
    for (name, b), figures in zip(pairs, times):
        timing = Timing.of(figures)
        result.setdefault(name, {})[b] = Latency(timing.median_ms, timing.iqr_ms, rounds, b, threads)
    return result


def _prepared(model: Any) -> Any:
    """A network ready to time: a module as a copy in eval mode on the CPU; any other callable (e.g. an
    :class:`~lightning_legr.core.export.OnnxRunner`) as it is."""
    if not isinstance(model, nn.Module):
        return model
    return copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)


def measure_latency(
    model: nn.Module, example_inputs: ExampleInputs, batch_size: int = 1, threads: int = 1, rounds: int = 5
) -> Latency:
    """CPU latency of one network (see :func:`measure_latencies`, which compares several fairly)."""
    return measure_latencies({"model": model}, example_inputs, [batch_size], threads, rounds)["model"][batch_size]


def latency_columns(latencies: Mapping[int, Latency], prefix: str = "latency") -> Dict[str, Any]:
    """The results-row entries of one network's latencies (``prefix="onnx"``: of its ONNX model)."""
    row: Dict[str, Any] = {}
    for b, lat in latencies.items():
        row[f"{prefix}_b{b}_ms"] = lat.median_ms
        row[f"{prefix}_b{b}_iqr_ms"] = lat.iqr_ms
        if prefix == "latency":
            row["latency_threads"] = lat.threads
            row["latency_rounds"] = lat.rounds
    return row


def _ms(value: float) -> str:
    return f"{value:.{2 if value < 100 else 1}f}"


def _cell(row: Dict[str, Any], key: str, fmt: Optional[str], onnx: bool = False) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if fmt is None and onnx:  # PyTorch's median and onnxruntime's, side by side (the IQRs are in the files)
        other = row.get(key.replace("latency_", "onnx_"))
        return _ms(value) + "/" + ("-" if other is None else _ms(other))
    if fmt is None:  # a latency: median and interquartile range
        spread = row.get(key.replace("_ms", "_iqr_ms"))
        digits = 2 if value < 100 else 1
        return f"{value:.{digits}f}" + ("" if spread is None else f"\u00b1{spread:.{digits}f}")
    if key in _SCALE:
        value = value * _SCALE[key]
    return fmt.format(value)


def format_table(rows: Sequence[Dict[str, Any]], monitor: str, where: Optional[str] = None) -> str:
    """A plain-text table of the results, one row per budget, under a line that says what the columns are.

    ``where``: the folder the checkpoint paths are relative to.
    """
    headers = [h for _, h, _ in COLUMNS]
    onnx = any(r.get("onnx_b1_ms") is not None or r.get("onnx_b64_ms") is not None for r in rows)
    cells = [[_cell(r, k, f, onnx) for k, _, f in COLUMNS] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda items: "  ".join(s.rjust(w) if i < len(items) - 1 else s for i, (s, w) in enumerate(zip(items, widths)))  # noqa: E731
    kind = next((r["kind"] for r in rows if r.get("kind")), "flops")
    what = {"params": "parameters", "latency": "measured latency"}.get(kind, "FLOPs")
    notes = [
        f"budget: share of the {what} kept; FLOPs / params: shares measured on the pruned model",
        f"pruned / tuned: {monitor} after pruning (BatchNorm re-estimated) / after fine-tuning",
    ]
    for r in rows:  # latency budgets: what each network measured end to end against its target
        if r.get("latency_target_ms") is not None:
            how = "within" if r.get("latency_within") else "NOT within"
            share = ""
            if r.get("latency_unpruned_ms") is not None:  # rows of runs before shares were judged side by side lack it
                share = (f", {r['latency_ratio']:.3f} of the unpruned {r['latency_unpruned_ms']:.3f} ms timed beside it"
                         f" (IQR {r['latency_ratio_iqr']:.3f})")
            notes.append(
                f"latency {r['budget']:.2f}: {r['latency_ms']:.3f} ms (IQR {r.get('latency_iqr_ms', 0):.3f}) measured"
                f"{share}, target {r['latency_target_ms']:.3f} ms, {how}"
                f" {'its spread' if r.get('latency_spread_limited') else '5%'}"
            )
    timed = next((r for r in rows if r.get("latency_threads")), None)
    if timed is not None:
        threads = timed["latency_threads"]
        notes.append(
            f"ms @1 / @64: CPU latency at batch 1 / 64, {threads} thread{'s' if threads > 1 else ''},"
            + (" PyTorch/onnxruntime medians" if onnx else " median\u00b1IQR") + f" of {timed['latency_rounds']} rounds"
        )
    diffs = [r["onnx_max_abs_diff"] for r in rows if r.get("onnx_max_abs_diff") is not None]
    if diffs:
        notes.append(
            f"ONNX: base.onnx, <budget>/model.onnx, within {max(diffs):.1e} of PyTorch"
            + ("; latency IQRs in results.csv" if onnx else "")
        )
    if where:
        notes.append(f"checkpoints in {where}")
    return "\n".join([*notes, line(headers), line(["-" * w for w in widths]), *(line(c) for c in cells)])


def write_results(rows: Sequence[Dict[str, Any]], csv_path: str, json_path: str, extra: Optional[dict] = None) -> None:
    """Write the rows as CSV and JSON (atomically)."""
    keys = [k for k, _, _ in COLUMNS if k != "checkpoint"]
    for key in ("latency_b1_ms", "latency_b64_ms"):  # each median followed by its spread
        keys.insert(keys.index(key) + 1, key.replace("_ms", "_iqr_ms"))
    keys += ["latency_threads", "latency_rounds", "checkpoint"]
    for row in rows:
        keys += [k for k in row if k not in keys]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows([{k: ("" if r.get(k) is None else r.get(k)) for k in keys} for r in rows])
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        f.write(buffer.getvalue())
    write_json(json_path, {"results": list(rows), **(extra or {})})


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


_AXIS = {  # kind: (row key, scale, axis label)
    "flops": ("flops", 1e-6, "MFLOPs (MACs, ptflops)"),
    "params": ("params", 1e-3, "thousands of parameters"),
    "latency": ("latency_ms", 1.0, "latency (ms, measured end to end at the budgets' setting)"),
}


def plot_metric(
    rows: Sequence[Dict[str, Any]], monitor: str, path: str, title: str = "LeGR", kind: str = "flops"
) -> None:
    """The monitored metric against the FLOPs (``kind="params"``: the parameters, ``"latency"``: the
    measured latency), before and after fine-tuning; the unpruned model as a star."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    column, scale, label_x = _AXIS[kind]
    pruned = sorted((r for r in rows if r["budget"] < 1.0), key=lambda r: r[column])
    for key, label, style in (("metric_before", "pruned", "o--"), ("metric_after", "fine-tuned", "o-")):
        points = [(r[column] * scale, r[key]) for r in pruned if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), style, label=label)
    for r in rows:
        if r["budget"] >= 1.0 and r.get("metric_before") is not None:
            ax.plot(r[column] * scale, r["metric_before"], "k*", markersize=12, label="unpruned")
    ax.set_xlabel(label_x)
    ax.set_ylabel(monitor)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def plot_widths(names: Sequence[str], original: Sequence[int], kept: Sequence[int], path: str, title: str) -> None:
    """Per channel group: original width and the width kept at one budget."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(names) + 2), 4))
    x = range(len(names))
    ax.bar(x, original, color="#d0d7e1", label="original")
    ax.bar(x, kept, color="#3b6fb6", label="kept")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_ylabel("channels")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
