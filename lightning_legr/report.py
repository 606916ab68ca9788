"""Results of a LeGR run: CPU latency, a printed table, CSV/JSON files and PNG plots."""

import copy
import csv
import io
import statistics
import time
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from lightning_legr.core._io import atomic_path, write_json
from lightning_legr.core.structure import ExampleInputs, map_tensors, run_model

__all__ = ["measure_latency", "batch_of", "format_table", "write_results", "plot_metric", "plot_widths"]

COLUMNS = [
    ("budget", "budget", "{:.2f}"),
    ("flops", "MFLOPs", "{:.2f}"),
    ("flops_ratio", "FLOPs", "{:.1%}"),
    ("params", "params (K)", "{:.1f}"),
    ("metric_before", "{monitor} pruned", "{:.4f}"),
    ("metric_after", "{monitor} tuned", "{:.4f}"),
    ("latency_b1_ms", "ms @1", "{:.2f}"),
    ("latency_b64_ms", "ms @64", "{:.1f}"),
    ("checkpoint", "checkpoint", "{}"),
]
_SCALE = {"flops": 1e-6, "params": 1e-3}


def batch_of(example_inputs: ExampleInputs, batch_size: int) -> ExampleInputs:
    """The example input repeated along the batch dimension to ``batch_size`` samples."""

    def grow(x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0:
            return x
        reps = -(-batch_size // x.shape[0])
        return x.repeat(reps, *([1] * (x.dim() - 1)))[:batch_size]

    return map_tensors(example_inputs, grow)


@torch.inference_mode()
def measure_latency(
    model: nn.Module, example_inputs: ExampleInputs, batch_size: int = 1, min_seconds: float = 0.5, warmup: int = 2
) -> float:
    """Median wall time of one forward pass on the CPU, in milliseconds (on a copy, in eval mode)."""
    model = copy.deepcopy(model).cpu().eval()
    inputs = batch_of(map_tensors(example_inputs, torch.Tensor.cpu), batch_size)
    for _ in range(warmup):
        run_model(model, inputs)
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < min_seconds and len(times) < 200):
        t0 = time.perf_counter()
        run_model(model, inputs)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _cell(row: Dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if key in _SCALE:
        value = value * _SCALE[key]
    return fmt.format(value)


def format_table(rows: Sequence[Dict[str, Any]], monitor: str) -> str:
    """A plain-text table of the results, one row per budget."""
    headers = [h.format(monitor=monitor) for _, h, _ in COLUMNS]
    cells = [[_cell(r, k, f) for k, _, f in COLUMNS] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda items: "  ".join(s.rjust(w) if i < len(items) - 1 else s for i, (s, w) in enumerate(zip(items, widths)))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(c) for c in cells)])


def write_results(rows: Sequence[Dict[str, Any]], csv_path: str, json_path: str, extra: Optional[dict] = None) -> None:
    """Write the rows as CSV and JSON (atomically)."""
    keys = [k for k, _, _ in COLUMNS]
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


def plot_metric(rows: Sequence[Dict[str, Any]], monitor: str, path: str, title: str = "LeGR") -> None:
    """The monitored metric against FLOPs, before and after fine-tuning; the unpruned model as a star."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    pruned = sorted((r for r in rows if r["budget"] < 1.0), key=lambda r: r["flops"])
    for key, label, style in (("metric_before", "pruned", "o--"), ("metric_after", "fine-tuned", "o-")):
        points = [(r["flops"] / 1e6, r[key]) for r in pruned if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), style, label=label)
    for r in rows:
        if r["budget"] >= 1.0 and r.get("metric_before") is not None:
            ax.plot(r["flops"] / 1e6, r["metric_before"], "k*", markersize=12, label="unpruned")
    ax.set_xlabel("MFLOPs (MACs, ptflops)")
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
