"""Latency budgets through the Lightning glue: LeGRCallback(latency_budgets=...), measured end to end and
corrected, the table cached in the run directory, and a target below the floor refused before training."""

import json

import pytest

import lightning_legr.core.latency as latency_module
from lightning_legr import LeGRCallback
from lightning_legr.core.errors import ConfigurationError
from tests.core.test_latency import NetworkTimer
from tests.lightning_helpers import SMALL_SEARCH, CountingClassifier, tiny_data, tiny_module, trainer


@pytest.fixture
def fake_timer(monkeypatch):
    """Every latency the callback measures comes from one deterministic NetworkTimer."""
    timers = []

    def make(threads=1, rounds=5, overhead=0.02, scale=1.5):
        timers.append(NetworkTimer(overhead=overhead, scale=scale))
        return timers[-1]

    monkeypatch.setattr(latency_module, "BenchmarkTimer", make)
    return timers


def test_a_run_on_latency_budgets_lands_within_5_percent(tmp_path, fake_timer):
    dirpath = tmp_path / "legr"
    callback = LeGRCallback(latency_budgets=[0.6, 0.8], dirpath=str(dirpath), **SMALL_SEARCH)
    assert callback.latency_budgets == [0.6, 0.8] and callback.flops is None
    trainer(tmp_path, [callback]).fit(tiny_module(), datamodule=tiny_data())
    base, *rows = callback.results
    assert base["kind"] == "latency" and base["latency_ratio"] == 1.0
    for row in rows:
        assert row["latency_within"] and not row["latency_spread_limited"]
        assert row["latency_target_ms"] == pytest.approx(row["budget"] * base["latency_ms"])
        # deterministic timer: the network beside it measures as the table's; the share is the judged one
        assert row["latency_unpruned_ms"] == pytest.approx(base["latency_ms"]) and row["latency_ratio_iqr"] == 0
        assert row["latency_ratio"] == pytest.approx(row["latency_ms"] / row["latency_unpruned_ms"])
        assert abs(row["latency_ratio"] - row["budget"]) <= 0.05 * row["budget"]
        assert abs(row["latency_ms"] - row["latency_target_ms"]) <= 0.05 * row["latency_target_ms"]
        assert row["checkpoint"].startswith(str(dirpath / f"latency_{row['budget']:.2f}"))
    table = json.loads((dirpath / "latency_table.json").read_text())
    assert table["key"]["setting"]["batch_size"] == 1 and table["network"]["median_ms"] == base["latency_ms"]
    assert json.loads((dirpath / "run.json").read_text())["settings"]["legr"]["latency_budgets"] == [0.6, 0.8]
    assert (dirpath / "metric_vs_latency.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((dirpath / "results.json").read_text())["results"]
    assert [r["latency_within"] for r in results[1:]] == [True, True]


def test_a_latency_target_below_the_floor_is_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(latency_module, "BenchmarkTimer", lambda threads=1, rounds=5: NetworkTimer(overhead=100.0))
    CountingClassifier.steps = 0
    callback = LeGRCallback(latency_budgets=[0.5], dirpath=str(tmp_path / "legr"), **SMALL_SEARCH)
    with pytest.raises(ConfigurationError, match=r"A latency budget of 0\.5 .* cannot be reached: .* Raise the budget to"):
        trainer(tmp_path, [callback]).fit(tiny_module(CountingClassifier), datamodule=tiny_data())
    assert CountingClassifier.steps == 0 and not (tmp_path / "legr" / "base.ckpt").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(flops=[0.5], latency_budgets=[0.5]), "Give one kind of budgets, not `flops` and `latency_budgets`"),
        (dict(latency_budgets=[0.5], search_flops=0.3), "`search_flops` was given with budgets of the measured latency"),
        (dict(latency_budgets=[0.5, 1.0]), r"`latency_budgets` lists 1\.0"),
        (dict(latency_budgets=[0.5], latency_batch_size=0), "`latency_batch_size` must be an integer >= 1, got 0"),
    ],
)
def test_bad_latency_budgets_are_refused_at_construction(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        LeGRCallback(**kwargs)
