"""Latency you can believe (torch.utils.benchmark, one thread, interleaved rounds) and the results table."""

import torch
from torch import nn

from lightning_legr.report import Latency, format_table, measure_latencies, measure_latency


class Recorder(nn.Module):
    """Records, at every call, its name and the number of threads torch runs with."""

    calls = []

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        Recorder.calls.append((self.name, torch.get_num_threads()))
        return self.conv(x)


def test_latency_runs_on_one_thread_unless_asked(monkeypatch):
    torch.set_num_threads(2)
    Recorder.calls = []
    result = measure_latency(Recorder("a"), torch.randn(1, 3, 8, 8), rounds=2)
    assert {threads for _, threads in Recorder.calls} == {1}
    assert isinstance(result, Latency) and result.threads == 1 and result.rounds == 2 and result.batch_size == 1
    assert result.median_ms > 0 and result.iqr_ms >= 0
    Recorder.calls = []
    measure_latencies({"a": Recorder("a")}, torch.randn(1, 3, 8, 8), [1], threads=2, rounds=1, min_run_time=0.01, warmup=0.01)
    assert {threads for _, threads in Recorder.calls} == {2}
    assert torch.get_num_threads() == 2  # the caller's setting is left alone


def test_networks_are_interleaved_in_rounds():
    Recorder.calls = []
    times = measure_latencies({"a": Recorder("a"), "b": Recorder("b")}, torch.randn(1, 3, 8, 8), [1, 4], rounds=3,
                              min_run_time=0.01, warmup=0.01)
    runs = [name for i, (name, _) in enumerate(Recorder.calls) if i == 0 or Recorder.calls[i - 1][0] != name]
    assert runs == ["a", "b", "b", "a", "a", "b"][:1] + runs[1:] and len(runs) >= 4  # a b | b a | a b, merged
    assert set(times) == {"a", "b"} and set(times["a"]) == {1, 4}
    assert all(t.rounds == 3 for per_batch in times.values() for t in per_batch.values())


def test_the_model_is_timed_on_a_copy():
    model = Recorder("a").train()
    weight = model.conv.weight.detach().clone()
    measure_latency(model, torch.randn(1, 3, 8, 8), rounds=1)
    assert model.training and torch.equal(model.conv.weight, weight)


def test_table_without_latency_or_folder():
    rows = [{"budget": 1.0, "flops": 2e6, "flops_ratio": 1.0, "params": 1000, "params_ratio": 1.0, "metric_before": 0.5,
             "checkpoint": "base.ckpt"}]
    lines = format_table(rows, "val_loss").splitlines()
    assert lines[0].startswith("budget: share of the FLOPs kept") and lines[1].startswith("pruned / tuned: val_loss")
    assert lines[2].startswith("budget")
    assert lines[4].split() == ["1.00", "2.00", "100.0%", "1.0", "100.0%", "0.5000", "-", "-", "-", "base.ckpt"]
    rows[0]["kind"] = "params"
    assert format_table(rows, "val_loss").splitlines()[0].startswith("budget: share of the parameters kept")


def test_table_says_how_each_latency_budget_landed():
    rows = [
        {"budget": 1.0, "kind": "latency", "flops": 2e6, "latency_ms": 10.0, "latency_iqr_ms": 0.2},
        {"budget": 0.5, "kind": "latency", "flops": 1e6, "latency_ms": 5.1, "latency_iqr_ms": 0.1,
         "latency_target_ms": 5.0, "latency_within": True, "latency_spread_limited": False},
        {"budget": 0.3, "kind": "latency", "flops": 6e5, "latency_ms": 4.0, "latency_iqr_ms": 0.9,
         "latency_target_ms": 3.0, "latency_within": False, "latency_spread_limited": True},
    ]
    lines = format_table(rows, "val_loss").splitlines()
    assert lines[0].startswith("budget: share of the measured latency kept")
    assert "latency 0.50: 5.100 ms (IQR 0.100) measured, target 5.000 ms, within 5%" in lines
    assert "latency 0.30: 4.000 ms (IQR 0.900) measured, target 3.000 ms, NOT within its spread" in lines
