"""LeGRSearch: a killed search resumes from its state file and ends where an uninterrupted one does."""

import json

import numpy as np
import pytest
import torch

from lightning_legr import LeGRSearch, Transform, learn_transform, pruning_record
from tests.models import build, example_input, shared_pruner

SETTINGS = dict(generations=9, population=4, sample_size=2, mutation_rate=0.3, seed=3)
class Killed(Exception):
    """Stands for the process being killed in the middle of an evaluation."""


BATCH = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def pruner():
    return shared_pruner("custom_scale")


@pytest.fixture(scope="module")
def reference(pruner):
    with torch.no_grad():
        return pruner.model(BATCH)


def make_fitness(reference, kill_at=None):
    calls = []

    def fitness(pruned):
        if kill_at is not None and len(calls) == kill_at:
            raise Killed(f"killed in generation {len(calls)}")
        calls.append(1)
        with torch.no_grad():
            return (pruned.eval()(BATCH) - reference).pow(2).mean().item()

    return fitness


@pytest.fixture(scope="module")
def uninterrupted(pruner, reference):
    search = LeGRSearch(pruner, make_fitness(reference), 0.5, **SETTINGS)
    generations = []
    transform = search.run(generations.append)
    return search, transform, generations


def test_search_runs_and_reports(uninterrupted, pruner):
    search, transform, generations = uninterrupted
    assert [g.generation for g in generations] == list(range(9))
    assert all(g.ratio <= 0.5 * (1 + 1e-9) for g in generations)
    assert generations[0].widths.tolist() == pruner.select(0.5).widths.tolist()  # candidate 0: identity
    assert generations[-1].best_fitness == min(g.fitness for g in generations) == transform.info["fitness"]
    assert transform.groups == pruner.structure.signature()
    assert transform.info["search_flops"] == 0.5 and transform.info["generations"] == 9
    best = min(range(9), key=lambda i: generations[i].fitness)
    assert transform.info["generation"] == best
    # the returned transform reproduces the best candidate's selection
    assert pruner.select(0.5, transform).widths.tolist() == generations[best].widths.tolist()


@pytest.mark.parametrize("kill_at", [1, 5, 8])
def test_killed_search_resumes_from_its_state_file(uninterrupted, pruner, reference, tmp_path, kill_at):
    expected_search, expected, _ = uninterrupted
    state_path = tmp_path / "search.json"
    search = LeGRSearch(pruner, make_fitness(reference, kill_at=kill_at), 0.5, state_path=state_path, **SETTINGS)
    with pytest.raises(Killed):
        search.run()
    state = json.loads(state_path.read_text())
    assert state["evolution"]["generation"] == kill_at
    assert [p.name for p in tmp_path.iterdir()] == ["search.json"]  # written atomically, nothing left over

    resumed = LeGRSearch(pruner, make_fitness(reference), 0.5, state_path=state_path, **SETTINGS)
    assert resumed.evolution.generation == kill_at
    transform = resumed.run()
    assert transform == expected
    assert transform.info == expected.info
    assert resumed.evolution.history == expected_search.evolution.history
    # a finished search resumed again has nothing left to do
    again = LeGRSearch(pruner, make_fitness(reference, kill_at=0), 0.5, state_path=state_path, **SETTINGS)
    assert again.done and again.run() == expected


def test_state_from_another_search_is_refused(pruner, reference, tmp_path):
    state_path = tmp_path / "search.json"
    LeGRSearch(pruner, make_fitness(reference), 0.5, state_path=state_path, **{**SETTINGS, "generations": 2}).run()
    with pytest.raises(ValueError, match=r"belongs to another search \(different budgets\)") as err:
        LeGRSearch(pruner, make_fitness(reference), 0.6, state_path=state_path, **SETTINGS)
    assert str(state_path) in str(err.value)
    with pytest.raises(ValueError, match="belongs to another search.*seed"):
        LeGRSearch(pruner, make_fitness(reference), 0.5, state_path=state_path, **{**SETTINGS, "seed": 4})
    other_model = shared_pruner("vgg_small")
    with pytest.raises(ValueError, match=r"different groups"):
        LeGRSearch(other_model, make_fitness(reference), 0.5, state_path=state_path, **SETTINGS)
    not_a_state = tmp_path / "other.json"
    not_a_state.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a lightning-legr search state"):
        LeGRSearch(pruner, make_fitness(reference), 0.5, state_path=not_a_state, **SETTINGS)


def test_best_transform_before_any_generation_is_the_identity(pruner, reference):
    search = LeGRSearch(pruner, make_fitness(reference), 0.5, **SETTINGS)
    assert search.best_transform() == pruner.identity()


def test_search_checks_its_arguments(pruner, reference):
    with pytest.raises(TypeError, match="`fitness` must be a callable"):
        LeGRSearch(pruner, 0.5, 0.5)
    with pytest.raises(ValueError, match=r"`flops` must be in \(0, 1\]"):
        LeGRSearch(pruner, make_fitness(reference), 1.5)
    with pytest.raises(ValueError, match="cannot be reached"):
        LeGRSearch(pruner, make_fitness(reference), pruner.min_flops / 2)


def test_learn_transform(tmp_path):
    model, x = build("vgg_small"), example_input()
    with torch.no_grad():
        target = model(BATCH)

    def fitness(pruned):
        with torch.no_grad():
            return (pruned.eval()(BATCH) - target).pow(2).mean().item()

    seen = []
    transform = learn_transform(
        model, x, [0.7, 0.4], fitness, state_path=tmp_path / "s.json", on_generation=seen.append,
        generations=5, population=3, sample_size=2, seed=0,
    )
    assert isinstance(transform, Transform) and transform.info["search_flops"] == 0.4  # the smallest budget
    assert len(seen) == 5 and all(g.ratio <= 0.4 * (1 + 1e-9) for g in seen)
    assert (tmp_path / "s.json").exists()
    with pytest.raises(ValueError, match=r"lists \[0\.4\] more than once"):
        learn_transform(model, x, [0.4, 0.4], fitness)
    with pytest.raises(ValueError, match="`flops` is empty"):
        learn_transform(model, x, [], fitness)
    with pytest.raises(ValueError, match="cannot be reached"):
        learn_transform(model, x, [0.5, 0.001], fitness)
    assert np.isfinite(transform.alpha).all()


def test_several_search_budgets_average_the_fitness():
    pruner = shared_pruner("resnet56_B")
    seen = []

    def fitness(pruned):
        ratio = pruning_record(pruned)["steps"][-1]["flops"] / pruning_record(pruned)["steps"][-1]["original_flops"]
        seen.append(ratio)
        return ratio

    search = LeGRSearch(pruner, fitness, flops=[0.7, 0.3], generations=2, population=2, sample_size=1)
    search.run()
    assert search.budgets == [0.3, 0.7]
    assert len(seen) == 4  # two pruned copies per candidate
    assert search.evolution.history[0][0] == pytest.approx((seen[0] + seen[1]) / 2)
    assert search.best_transform().info["search_flops"] == [0.3, 0.7]


class ReversedWorkers:
    """Evaluates a step's candidates in reverse order, as parallel workers may finish, and records digests."""

    def __init__(self, size):
        self.size, self.digests, self.counts = size, [], []

    def map(self, evaluate, count, digest):
        self.digests.append(digest)
        self.counts.append(count)
        values = {i: evaluate(i) for i in reversed(range(count))}
        return [values[i] for i in range(count)]


def test_one_worker_is_the_sequential_search(uninterrupted, pruner, reference):
    search, transform, _ = uninterrupted
    workers = ReversedWorkers(1)
    again = LeGRSearch(pruner, make_fitness(reference), 0.5, workers=workers, **SETTINGS)
    assert again.run() == transform
    assert again.evolution.history == search.evolution.history and workers.counts == [1] * 9


def test_several_candidates_per_step_are_deterministic_and_resume(pruner, reference, tmp_path):
    workers = ReversedWorkers(4)
    search = LeGRSearch(pruner, make_fitness(reference), 0.5, workers=workers, **SETTINGS)
    transform = search.run()
    assert workers.counts == [4, 4, 1]  # 9 generations: the last step has one candidate left
    assert len(set(workers.digests)) == 3
    assert LeGRSearch(pruner, make_fitness(reference), 0.5, workers=ReversedWorkers(4), **SETTINGS).run() == transform

    path = tmp_path / "state.json"
    with pytest.raises(Killed):  # dies in the second step, after its first candidate
        LeGRSearch(pruner, make_fitness(reference, kill_at=5), 0.5, state_path=path, workers=ReversedWorkers(4),
                   **SETTINGS).run()
    assert json.loads(path.read_text())["evolution"]["generation"] == 4  # the whole first step, nothing of the second
    resumed = LeGRSearch(pruner, make_fitness(reference), 0.5, state_path=path, workers=ReversedWorkers(4), **SETTINGS)
    assert resumed.run() == transform and resumed.evolution.history == search.evolution.history


# ---------------------------------------------------------------- fitness reuse and the per-generation records
REUSE = dict(generations=30, population=4, sample_size=2, mutation_rate=0.3, seed=3)


def counting_fitness(reference, kill_at=None, calls=None):
    calls = [] if calls is None else calls

    def fitness(pruned):
        if kill_at is not None and len(calls) == kill_at:
            raise Killed(f"killed at evaluation {len(calls)}")
        calls.append(1)
        with torch.no_grad():
            return (pruned.eval()(BATCH) - reference).pow(2).mean().item()

    return fitness, calls


@pytest.fixture(scope="module")
def reuse_runs(pruner, reference):
    """The same search with and without reuse: (search, generations, evaluations) for each."""
    runs = {}
    for reuse in (True, False):
        fitness, calls = counting_fitness(reference)
        search = LeGRSearch(pruner, fitness, 0.5, reuse_fitness=reuse, **REUSE)
        generations = []
        search.run(generations.append)
        runs[reuse] = search, generations, len(calls)
    return runs


def without_times(records):
    return [{k: v for k, v in r.items() if k not in ("seconds", "split")} for r in records]


def test_reused_fitness_equals_a_fresh_evaluation(reuse_runs):
    (cached, cached_gens, cached_calls), (fresh, fresh_gens, fresh_calls) = reuse_runs[True], reuse_runs[False]
    hits = [g.generation for g in cached_gens if g.cached]
    assert 0 < len(hits) < 30 and cached.cache_hits == len(hits)
    assert cached_calls == 30 - len(hits) and fresh_calls == 30  # a reused candidate is never evaluated
    for g in hits:  # the same selection was evaluated before, and a fresh evaluation gives the same value
        earlier = [e for e in cached_gens[:g] if e.widths.tolist() == cached_gens[g].widths.tolist()]
        assert earlier and not earlier[0].cached and cached_gens[g].fitness == earlier[0].fitness
        assert fresh_gens[g].fitness == cached_gens[g].fitness and not fresh_gens[g].cached
    assert cached.evolution.state_dict() == fresh.evolution.state_dict()
    assert cached.best_transform() == fresh.best_transform()
    assert len(cached.cache) == 30 - len(hits) and fresh.cache == {}
    assert [r["cached"] for r in cached.records] == [g.cached for g in cached_gens]
    assert not any(r["cached"] for r in fresh.records)


def test_no_reuse_when_turned_off(reuse_runs, pruner, reference, tmp_path):
    fresh, _, _ = reuse_runs[False]
    assert fresh.cache_hits == 0 and fresh.state_dict()["fitness_cache"] == []
    with pytest.raises(ValueError, match="`reuse_fitness` must be True .* or False, got 'yes'"):
        LeGRSearch(pruner, make_fitness(reference), 0.5, reuse_fitness="yes", **REUSE)


@pytest.mark.parametrize("kill_at", [1, 4, 6])
def test_resumed_search_keeps_its_cache_and_records(reuse_runs, pruner, reference, tmp_path, kill_at):
    expected, _, _ = reuse_runs[True]
    path = tmp_path / "search.json"
    fitness, _ = counting_fitness(reference, kill_at=kill_at)
    killed = LeGRSearch(pruner, fitness, 0.5, state_path=path, reuse_fitness=True, **REUSE)
    with pytest.raises(Killed):
        killed.run()
    saved = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    done = saved["evolution"]["generation"]
    assert len(saved["generations"]) == done and len(saved["fitness_cache"]) == kill_at

    fitness, calls = counting_fitness(reference)
    resumed = LeGRSearch(pruner, fitness, 0.5, state_path=path, reuse_fitness=True, **REUSE)
    assert resumed.cache == {k: v for k, v in list(killed.cache.items())}
    assert resumed.records == saved["generations"]  # the wall times of the first run are kept as written
    resumed.run()
    assert len(calls) == len(expected.cache) - kill_at  # nothing the first run evaluated is evaluated again
    assert resumed.best_transform() == expected.best_transform()
    assert resumed.best_transform().info == expected.best_transform().info
    assert resumed.evolution.state_dict() == expected.evolution.state_dict()
    assert resumed.cache == expected.cache and list(resumed.cache) == list(expected.cache)
    assert without_times(resumed.records) == without_times(expected.records)
    final = json.loads(path.read_text())
    assert final["generations"][:done] == saved["generations"]
    assert final["fitness_cache"] == expected.state_dict()["fitness_cache"]


def test_repeats_within_one_step_are_evaluated_once(reuse_runs, pruner, reference):
    expected, _, _ = reuse_runs[False]
    fitness, calls = counting_fitness(reference)
    workers = ReversedWorkers(4)
    search = LeGRSearch(pruner, fitness, 0.5, workers=workers, reuse_fitness=True, **REUSE)
    generations = []
    search.run(generations.append)
    plain = LeGRSearch(pruner, make_fitness(reference), 0.5, workers=ReversedWorkers(4), **REUSE)
    plain.run()
    assert search.evolution.state_dict() == plain.evolution.state_dict()
    assert sum(workers.counts) == len(calls) == 30 - search.cache_hits
    assert any(c < 4 for c in workers.counts[1:-1])  # some steps sent fewer candidates to the workers
    for step in range(0, 30, 4):  # a repeat inside a step takes the value of the first of its kind
        batch = generations[step : step + 4]
        widths = [g.widths.tolist() for g in batch]
        for j, g in enumerate(batch):
            if widths[j] in widths[:j]:
                assert g.cached and g.fitness == batch[widths.index(widths[j])].fitness


def test_records_hold_the_wall_time_and_its_split(pruner, reference, tmp_path):
    path = tmp_path / "search.json"
    holder = {}

    def fitness(pruned):
        holder["search"].add_split("bn", 0.0)
        holder["search"].add_split("bn", 0.001)
        return make_fitness(reference)(pruned)

    search = LeGRSearch(pruner, fitness, [0.5, 0.7], state_path=path, **SETTINGS)
    holder["search"] = search
    generations = []
    search.run(generations.append)
    records = json.loads(path.read_text())["generations"]
    assert [r["generation"] for r in records] == list(range(9)) == [g.generation for g in generations]
    for record, gen in zip(records, generations):
        assert record["seconds"] == round(gen.seconds, 6) > 0 and record["cached"] is False
        split = record["split"]
        assert sorted(split) == ["bn", "evaluate", "prune", "select"] and split["bn"] == 0.002  # two budgets
        assert gen.split["bn"] == pytest.approx(0.002) and gen.split["select"] > 0
        assert gen.split["prune"] > 0 and gen.split["evaluate"] >= 0
        assert sum(gen.split.values()) <= gen.seconds
    with pytest.raises(ValueError, match="'prune' is measured by the search itself"):
        search.add_split("prune", 1.0)
