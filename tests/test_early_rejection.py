"""LeGRCallback(early_rejection=True): hopeless candidates stopped early, the best one scored in full."""

import csv
import itertools
import json

import pytest
import torch

from lightning_legr import LeGRCallback, LeGRPruner, Transform
from lightning_legr.demos.digits import DigitsClassifier, DigitsDataModule
from lightning_legr.evaluation import DataSources, Evaluator
from tests.lightning_helpers import trainer

SETTINGS = dict(flops=[0.3], generations=30, population=8, sample_size=4, fitness_batches=20, finetune_epochs=0,
                latency=False, memory_format="contiguous", early_rejection=True)


def data():
    return DigitsDataModule(batch_size=16)  # 20 fitness batches of the 360 validation images


@pytest.fixture(scope="module")
def rejecting_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("rejecting")
    callback = LeGRCallback(dirpath=str(root / "legr"), **SETTINGS)
    t = trainer(root, [callback], max_epochs=3)
    torch.manual_seed(0)
    module = DigitsClassifier(width=8)
    t.fit(module, datamodule=data())
    return root, callback, module, t


def test_hopeless_candidates_are_stopped_and_logged(rejecting_run):
    root, callback, _, _ = rejecting_run
    state = json.loads((root / "legr" / "search_state.json").read_text())
    bounds = [r for r in state["generations"] if r.get("rejected")]  # stopped, or a cached repeat of one stopped
    rejected = [r for r in bounds if not r["cached"]]
    assert len(rejected) >= 3
    for record in rejected:
        assert 8 / 20 <= record["seen"] < 1 and record["saved"] > 0  # at least 8 of the 20 batches
    assert state["early_rejection"]["sizes"] == [16.0] * 20
    with open(root / "logs" / "version_0" / "metrics.csv") as f:
        metrics = list(csv.DictReader(f))
    assert max(float(m["legr/rejections"]) for m in metrics if m.get("legr/rejections")) == len(rejected)
    assert sum(float(m["legr/rejected"]) for m in metrics if m.get("legr/rejected")) == len(bounds)
    assert max(float(m["legr/saved"]) for m in metrics if m.get("legr/saved")) == pytest.approx(
        sum(r["saved"] for r in rejected))


def test_the_best_candidate_was_scored_in_full(rejecting_run):
    """Its fitness equals a plain validation of the model its transform prunes, on the 20 fitness batches."""
    root, callback, module, t = rejecting_run
    transform = Transform.load(str(root / "legr" / "transform.json"))
    state = json.loads((root / "legr" / "search_state.json").read_text())
    assert not state["generations"][transform.info["generation"]].get("rejected")
    pruned = LeGRPruner(module, module.example_input_array).prune(0.3, transform=transform)
    plain = Evaluator(t, DataSources(t), "val_loss", batches=20, bn_batches=4, seed=0)  # the loader's own order
    assert transform.info["best_metric"] == pytest.approx(plain(pruned), rel=1e-5)


def test_fitness_batches_are_one_fixed_random_order_of_the_first_ones(rejecting_run):
    _, _, module, t = rejecting_run
    sources = DataSources(t)
    first = list(itertools.islice(sources.loader("val"), 20))
    chunks = [Evaluator(t, sources, "val_loss", batches=20, seed=0, chunked=True).chunks() for _ in range(2)]
    order = [next(i for i, b in enumerate(first) if torch.equal(b[0], c[0])) for c in chunks[0]]
    assert sorted(order) == list(range(20)) and order != list(range(20))  # a permutation, not the loader order
    assert all(torch.equal(a[0], b[0]) for a, b in zip(*chunks))  # the same order every time
    assert Evaluator(t, sources, "val_loss", batches=20, seed=0, chunked=True).chunk_sizes() == [16] * 20


def test_a_monitor_not_logged_batch_by_batch_is_scored_in_full_and_said(tmp_path):
    callback = LeGRCallback(dirpath=str(tmp_path / "legr"), monitor="val_acc", mode="max",
                            **dict(SETTINGS, generations=10))
    with pytest.warns(UserWarning, match="`monitor='val_acc'` is not logged batch by batch"):
        trainer(tmp_path, [callback], max_epochs=1).fit(DigitsClassifier(width=8), datamodule=data())
    state = json.loads((tmp_path / "legr" / "search_state.json").read_text())
    assert not any(r.get("rejected") for r in state["generations"])


def test_too_few_fitness_batches_for_a_stop_are_reported_not_ignored(tmp_path):
    """20 fitness batches asked for, but the validation loader gives 6 (360 images at 64): no candidate could
    be stopped, and the user is told so instead of early rejection silently doing nothing."""
    settings = dict(SETTINGS, generations=6, population=4, sample_size=2)
    callback = LeGRCallback(dirpath=str(tmp_path / "legr"), **settings)
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"gives 6 fitness batches of the 20 asked for.*every candidate will be scored"):
        trainer(tmp_path, [callback], max_epochs=1).fit(DigitsClassifier(width=8), datamodule=DigitsDataModule(batch_size=64))
    state = json.loads((tmp_path / "legr" / "search_state.json").read_text())
    assert len(state["early_rejection"]["sizes"]) == 6 and not any(r.get("rejected") for r in state["generations"])
