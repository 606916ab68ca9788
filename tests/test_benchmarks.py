"""The benchmarks' smoke modes run (on generated data when ../shared is absent) and print their figures."""

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_core_speed_smoke(capsys):
    assert load("core_speed").main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "select channels for one budget: median" in out and "one candidate" in out
    assert "ptflops vs budget, worst relative error" in out
    assert "ResNet-56" in out and "ResNeXt-29-style (8 groups, random init): 22 groups (steps of 1, 8 channels)" in out


def test_fpad_resnet56_smoke(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    args = ["--smoke", "--data", str(tmp_path / "none.tar.xz"), "--weights", str(tmp_path / "none.pt")]
    assert load("fpad_resnet56").main(args) == 0  # as on a machine without ../shared
    out = capsys.readouterr().out
    assert "ResNet-14 from random weights; 200 test images" in out
    assert "same channels removed: True; identical outputs on 64 images: True" in out


@pytest.mark.slow
@pytest.mark.parametrize("shared", [True, False])
def test_cifar10_benchmark_smoke(tmp_path, capsys, shared):
    args = ["--smoke", "--out", str(tmp_path), "--plot", str(tmp_path / "plot.png")]
    if not shared:
        args += ["--data", str(tmp_path / "no-such-data.tar.xz")]  # as on a machine without ../shared
    assert load("legr_cifar10").main(args) == 0
    out = capsys.readouterr().out
    if not shared:
        assert "generated random images" in out
    record = json.loads((tmp_path / "smoke.json").read_text())
    methods = {r["method"] for r in record["summary"]}
    assert methods == {"legr", "legr_tau", "uniform", "l2", "tp_global", "random"}
    for row in record["summary"]:
        assert row["flops"] <= row["budget"] * record["rows"][0]["flops"] * (1 + 1e-9)
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert "| budget | method |" in out


def test_cifar10_fast_fitness_reports_every_chunk_from_whole_forward_batches():
    """The fast search's fitness forwards about ``FORWARD_IMAGES`` at a time but reports chunks of ``chunk``
    images, in order, each the chunk's own mean loss; a stop inside a batch ends the scoring there."""
    import torch
    from torch.nn import functional as F

    from lightning_legr.core.fastpath import FastPath

    bench = load("legr_cifar10")
    train, val, _, _ = bench.load_data(True, os.path.join(ROOT, "no-such-data.tar.xz"))  # generated data
    val = val.head(180)
    torch.manual_seed(0)
    model = bench.cifar_resnet(8, shortcut="A").eval()
    reference = bench.recalibrate(bench.copy.deepcopy(model), train, 64).eval()
    with torch.no_grad():  # every chunk of 25 on its own, the plain network
        expected = [F.cross_entropy(reference(x), y).item() for x, y in val.batches(25)]
    assert len(expected) == 8  # 7 of 25 and one of 5

    class Search:
        def __init__(self, stop_at=None):
            self.seen, self.stop_at = [], stop_at

        def observe(self, value, weight):
            self.seen.append((value, weight))
            return len(self.seen) == self.stop_at

    fitness = bench.fitness_function(val, train, 0, 0.0, 0, 64, FastPath("channels_last"), chunk=25)
    fitness.search = Search()
    value = fitness(bench.copy.deepcopy(model))
    assert [w for _, w in fitness.search.seen] == [25] * 7 + [5] and fitness.forwarded == 180  # batches 100, 80
    assert max(abs(v - e) for (v, _), e in zip(fitness.search.seen, expected)) < 1e-5
    assert abs(value - sum(e * n for e, n in zip(expected, [25] * 7 + [5])) / 180) < 1e-5

    fitness.search, fitness.forwarded = Search(stop_at=3), 0
    fitness(bench.copy.deepcopy(model))
    assert len(fitness.search.seen) == 3 and fitness.forwarded == 100  # stopped inside the first batch


def test_bn_recalibration_smoke(capsys, monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    assert load("bn_recalibration").main(["--smoke", "--images", "128", "--budgets", "0.5"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| l2 |")]
    assert len(rows) == 1


@pytest.mark.slow
def test_cifar10_benchmark_resumes_an_interrupted_run(tmp_path, capsys):
    bench = load("legr_cifar10")
    common = ["--smoke", "--out", str(tmp_path), "--data", str(tmp_path / "none.tar.xz"), "--budgets", "0.5", "0.3"]
    assert bench.main(common + ["--methods", "legr", "uniform"]) == 0  # stands for a run stopped after two methods
    first = json.loads((tmp_path / "smoke.json").read_text())
    assert first["complete"] and not list(tmp_path.glob(".tmp-*"))  # no stray temporary file
    assert not list(tmp_path.glob("*-search.json"))  # the search's own state goes once its result is recorded
    capsys.readouterr()

    assert bench.main(common + ["--methods", "legr", "uniform", "l2", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "legr search" not in out  # neither the search nor the done rows run again
    assert [line.split("@")[0].strip() for line in out.splitlines() if " tuned (seed" in line] == ["l2", "l2"]
    second = json.loads((tmp_path / "smoke.json").read_text())
    assert second["rows"][: len(first["rows"])] == first["rows"]
    assert second["searches"]["legr"]["transform"] == first["searches"]["legr"]["transform"]
    assert {r["method"] for r in second["summary"]} == {"legr", "uniform", "l2"}

    assert bench.main(["--latency", str(tmp_path / "smoke.json"), "--repeats", "2"]) == 0  # rebuilds every network
    third = json.loads((tmp_path / "smoke.json").read_text())
    assert "median of 2 rounds" in third["latency"] and third["rows"][1:] != second["rows"][1:]
    assert all(r["latency_b1_ms"] > 0 for r in third["rows"])

    with pytest.raises(SystemExit, match="other settings"):  # refused before any data is loaded
        bench.main(common + ["--methods", "l2", "--resume", "--tau-lr", "0.1"])


def test_latency_spread_smoke(capsys):
    assert load("latency_spread").main(["--smoke", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("spread (max - min)") == 2 and "side by side" in out
    assert len([line for line in out.splitlines() if "% FLOPs" in line]) == 3


@pytest.mark.slow
def test_ddp_search_smoke(tmp_path, capsys):
    assert load("ddp_search").main(["--smoke", "--generations", "6", "--out", str(tmp_path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2 and rows[0].split("|")[4].strip() == "1.00x"
    timings = [json.loads((tmp_path / "ranks2" / f"timing{r}.json").read_text()) for r in range(2)]
    assert [t["rank"] for t in timings] == [0, 1] and all(t["generations"] == 6 for t in timings)


def test_latency_budgets_smoke(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    args = ["--smoke", "--data", str(tmp_path / "none.tar.xz"), "--targets", "0.7", "--out", str(tmp_path)]
    assert load("latency_budgets").main(args) == 0
    out = capsys.readouterr().out
    assert "ResNet-14 (generated random images" in out and "latency 0.70: target" in out
    assert "FLOP budget of equal measured latency" in out and "target 0.70: latency budget" in out
    record = json.loads((tmp_path / "latency_budgets_resnet14.json").read_text())
    assert [r["name"].split()[0] for r in record["rows"]] == ["unpruned", "latency", "flops"]
    assert (tmp_path / "latency_table_resnet14.json").exists()


def test_search_speed_smoke(capsys):
    """In smoke mode "the old code" is today's tree: the same candidates, fitnesses and transform."""
    assert load("search_speed").main(["--smoke", "--quality", "1", "--quality-seeds", "0", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("old code  ", "today, "))]
    assert len(rows) == 3 + 4 and rows[0][5] == "1.00x" and sum("(whole)" in line for line in out.splitlines()) == 4
    assert "whole search, seed 1 (24 generations" in out and "whole searches, seeds [0, 1]" in out
    assert all(" 0 of them above the exact value" in line for line in out.splitlines() if "whole search," in line)
    assert "largest fitness difference over the 16 candidates 0.00e+00" in out and "difference 0.0e+00" in out
    assert "one epoch of the unpruned network" in out and "today's whole search: 12 generations in" in out
    assert "s before these searches" in out and "s after" in out and "generations at the old code's rate" in out


@pytest.mark.parametrize("only, epochs", [("benchmark", 3), ("own", 2)])
def test_search_speed_smoke_benchmark_setting_only(capsys, only, epochs):
    """``--only benchmark`` runs the two-epoch target's runs alone (an epoch timed before, between and after its
    two whole searches), ``--only own`` the CIFAR-10 benchmark's own search alone: no paper-setting run."""
    assert load("search_speed").main(["--smoke", "--only", only]) == 0
    out = capsys.readouterr().out
    assert "paper:full" not in out and "Paper setting" not in out
    assert out.count("train:steps") == epochs and out.count("one epoch of the unpruned network") == epochs - 1
    assert ("today's whole search: 12 generations in" in out) == (only == "benchmark")
    assert "The CIFAR-10 benchmark's own search" in out and "today (the fast search): 12 generations in" in out
