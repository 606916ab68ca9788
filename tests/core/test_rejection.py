"""Early rejection: the rule on its own, and in the search (exact best, bounds below the truth, resume)."""

import json
import math
from math import comb

import numpy as np
import pytest
import torch

from lightning_legr import LeGRSearch
from lightning_legr.core.errors import ConfigurationError
from lightning_legr.core.rejection import EarlyRejection, student_quantile, threshold_rank
from tests.models import shared_pruner

SETTINGS = dict(generations=40, population=8, sample_size=4, mutation_rate=0.3, seed=5)
CHUNKS, CHUNK = 16, 4
BATCH = torch.randn(CHUNKS * CHUNK, 3, 32, 32, generator=torch.Generator().manual_seed(2))


class Killed(Exception):
    """Stands for the process being killed in the middle of an evaluation."""


def test_threshold_rank_is_where_tournaments_stop_picking():
    rank = threshold_rank(64, 16, 0.01)
    assert rank == 15  # the paper's population and tournament: the 16th best member
    assert comb(64 - rank, 16) / comb(64, 16) <= 0.01 < comb(64 - rank + 1, 16) / comb(64, 16)
    assert threshold_rank(4, 4, 0.01) == 1  # every member drawn: only the best ever wins


def test_threshold_is_the_member_at_that_rank():
    rule = EarlyRejection([1.0] * 10)
    fitness = [5.0, math.inf, 1.0, 4.0, 2.0, 3.0, 7.0, 6.0]
    assert rule.threshold(fitness, population=8, sample_size=4) == sorted(f for f in fitness if f < 9)[5]
    assert rule.threshold(fitness[:3], population=8, sample_size=4) is None  # too few members to name one


def test_watch_stops_on_the_bound_worked_by_hand():
    rule = EarlyRejection([10.0] * 20, z=2.0, min_share=0.5)
    watch = rule.watch(threshold=1.5)
    values = [2.0, 2.4, 2.2, 2.1, 2.3] * 2
    assert [watch.observe(v, 10) for v in values[:9]] == [False] * 9  # under min_share: never stops
    assert watch.observe(values[9], 10)
    x = np.array(values)
    low = x.mean() - student_quantile(2.0, 9) * x.std(ddof=1) * math.sqrt(1 / 10 + 1 / 10)
    assert watch.bound == pytest.approx((x.mean() * 100 + low * 100) / 200)
    assert watch.rejected and watch.seen == 100.0 and watch.observe(0.0, 10)  # once stopped, stays stopped


def test_student_quantile_is_close_to_the_exact_one():
    exact = {7: 4.785, 19: 3.449, 39: 3.203}  # t quantiles at the normal 3-sigma level (0.99865)
    for dof, value in exact.items():
        assert 0.9 * value < student_quantile(3.0, dof) <= value * 1.001


def test_watch_without_threshold_or_on_few_chunks_never_stops():
    assert not any(EarlyRejection([1.0] * 40).watch(None).observe(100.0, 1) for _ in range(40))
    few = EarlyRejection([1.0] * 8, min_share=0.1).watch(threshold=0.0)
    assert not any(few.observe(5.0 + i, 1) for i in range(8))  # 8 chunks: all scored, the value is exact
    watch = EarlyRejection([1.0] * 40, min_share=0.1).watch(threshold=0.0)
    assert [watch.observe(1.0 + i % 2, 1) for i in range(9)] == [False] * 7 + [True, True]  # from 8 chunks on


def test_a_candidate_better_than_the_threshold_is_not_stopped_in_any_order():
    """Constructed case: a noisy candidate just better than the threshold, its chunks in 300 random orders."""
    rng = np.random.default_rng(0)
    chunks = rng.normal(1.0, 0.5, 40)
    chunks += 1.0 - chunks.mean()  # exactly 1.0 in the end
    rule = EarlyRejection([1.0] * 40)
    stopped_good = stopped_bad = above_truth = 0
    for _ in range(300):
        order = rng.permutation(40)
        good, bad = rule.watch(threshold=1.05), rule.watch(threshold=1.05)
        stopped_good += any(good.observe(v, 1) for v in chunks[order])
        stopped_bad += any(bad.observe(v, 1) for v in chunks[order] + 1.0)  # the same chunks, 1.0 worse
        above_truth += bad.bound > 2.0
    assert stopped_good == 0
    assert stopped_bad == 300
    assert above_truth <= 6  # the bound is under the true value (2.0) but in a few orders (3 standard errors)


def test_paired_watch_stops_sooner_on_chunks_of_shared_difficulty():
    """Constructed case: chunks whose difficulty varies far more than candidates differ (as on real data)."""
    rng = np.random.default_rng(1)
    difficulty = rng.normal(2.0, 1.0, 40)
    reference = difficulty + rng.normal(0.0, 0.01, 40)  # a candidate scored in full
    rule = EarlyRejection([1.0] * 40)
    threshold = reference.mean() + 0.05
    stopped_at, plain_stopped, good_stopped, above_truth = [], 0, 0, 0
    for _ in range(200):
        order = rng.permutation(40)
        worse = difficulty + 0.1 + rng.normal(0.0, 0.01, 40)  # 0.05 worse than the threshold
        better = difficulty + rng.normal(0.0, 0.01, 40)  # 0.05 better than the threshold
        paired, plain = rule.watch(threshold, reference[order]), rule.watch(threshold)
        good = rule.watch(threshold, reference[order])
        stopped_at.append(next((k for k, v in enumerate(worse[order], 1) if paired.observe(v, 1)), None))
        plain_stopped += any(plain.observe(v, 1) for v in worse[order])
        good_stopped += any(good.observe(v, 1) for v in better[order])
        above_truth += paired.bound > worse.mean()
    assert stopped_at == [8] * 200  # at the earliest chunk allowed, in every order
    assert plain_stopped < 100  # the chunks' own spread hides a 0.05 difference from the plain watch, mostly
    assert good_stopped == 0 and above_truth <= 4


def test_paired_watch_needs_a_full_finite_reference():
    rule = EarlyRejection([1.0] * 20)
    assert rule.watch(1.0, [1.0] * 20).reference == [1.0] * 20
    assert rule.watch(1.0, [1.0] * 19).reference is None  # not every chunk: plain
    assert rule.watch(1.0, [1.0] * 19 + [math.nan]).reference is None
    assert EarlyRejection([1.0] * 20, paired=False).watch(1.0, [1.0] * 20).reference is None
    assert "paired" not in EarlyRejection([1.0] * 20, paired=False).settings()


def test_rule_checks_its_arguments():
    for kwargs in ({"sizes": []}, {"sizes": [1, 0]}, {"sizes": [1], "z": 0}, {"sizes": [1], "min_share": 0},
                   {"sizes": [1], "share": 1.0}):
        with pytest.raises(ConfigurationError):
            EarlyRejection(**kwargs)


# ---------------------------------------------------------------------- in the search
@pytest.fixture(scope="module")
def pruner():
    return shared_pruner("bottleneck_resnet")


@pytest.fixture(scope="module")
def reference(pruner):
    with torch.no_grad():
        return pruner.model(BATCH)


def chunked_fitness(reference, search_of, exact, kill_at=None):
    """Mean squared distance to the unpruned outputs over 16 chunks, reported one by one; ``exact`` gets
    every candidate's value over all of them (what a full scoring gives)."""

    def fitness(pruned):
        search = search_of()
        if kill_at is not None and search.evaluating == kill_at:
            raise Killed(f"killed in generation {kill_at}")
        with torch.no_grad():
            errors = (pruned.eval()(BATCH) - reference).pow(2).flatten(1).mean(1).view(CHUNKS, CHUNK).mean(1)
        exact.setdefault(search.evaluating, []).append(errors.mean().item())
        for value in errors.tolist():
            if search.observe(value, CHUNK):
                return math.nan  # ignored: the search records its bound
        return errors.mean().item()

    return fitness


def rejecting_search(pruner, reference, budgets=0.5, state_path=None, kill_at=None, **overrides):
    holder, exact = {}, {}
    search = LeGRSearch(
        pruner, chunked_fitness(reference, lambda: holder["search"], exact, kill_at), budgets, state_path=state_path,
        early_rejection=EarlyRejection([CHUNK] * CHUNKS), **dict(SETTINGS, **overrides),
    )
    holder["search"] = search
    return search, exact


@pytest.fixture(scope="module")
def rejecting(pruner, reference):
    search, exact = rejecting_search(pruner, reference)
    generations = []
    transform = search.run(generations.append)
    return search, exact, generations, transform


def test_rejected_candidates_are_bounded_and_the_best_is_exact(rejecting):
    search, exact, generations, transform = rejecting
    rejected = [g for g in generations if g.rejected]
    assert search.rejections == len(rejected) >= 5
    best = min(generations, key=lambda g: g.fitness)
    assert not best.rejected and best.fitness == exact[best.generation][0] == transform.info["fitness"]
    for gen in rejected:
        record = search.records[gen.generation]
        assert record["rejected"] and 0 < record["seen"] < 1
        assert record["saved"] == pytest.approx((1 - record["seen"]) * CHUNKS * CHUNK, abs=1e-4)
        assert gen.fitness > record["threshold"] >= best.fitness  # stopped as worse than the threshold member
        assert exact[gen.generation][0] > record["threshold"]  # and it was: its full score is worse too
    assert search.saved == sum(search.records[g.generation]["saved"] for g in rejected) > 0
    full = [g for g in generations if not g.rejected]  # the paired reference: the best of those scored in full
    assert search.reference["fitness"] == min(g.fitness for g in full) == best.fitness
    assert np.mean(search.reference["chunks"]) == pytest.approx(best.fitness, rel=1e-6)
    assert search.state_dict()["rejection_reference"]["chunks"] == search.reference["chunks"]
    assert not any(g.rejected for g in generations[: SETTINGS["population"] - 2])  # too few members for a threshold


def test_candidates_are_scored_in_full_without_the_rule(pruner, reference):
    exact = {}
    holder = {}
    search = LeGRSearch(pruner, chunked_fitness(reference, lambda: holder["s"], exact), 0.5, **dict(SETTINGS, generations=12))
    holder["s"] = search
    generations = []
    search.run(generations.append)
    assert not any(g.rejected for g in generations) and search.rejections == 0
    assert [g.fitness for g in generations] == [exact[g.generation][0] for g in generations]


@pytest.mark.parametrize("kill_at", [9, 23, 37])
def test_killed_search_with_rejection_resumes_exactly(rejecting, pruner, reference, tmp_path, kill_at):
    path = tmp_path / "state.json"
    search, _ = rejecting_search(pruner, reference, state_path=path, kill_at=kill_at)
    with pytest.raises(Killed):
        search.run()
    resumed, _ = rejecting_search(pruner, reference, state_path=path)
    assert resumed.evolution.generation == kill_at
    transform = resumed.run()
    done, _, _, expected = rejecting
    assert transform.to_dict() == expected.to_dict()
    mine, theirs = json.loads(path.read_text()), done.state_dict()
    strip = lambda records: [{k: v for k, v in r.items() if k not in ("seconds", "split")} for r in records]  # noqa: E731
    assert strip(mine["generations"]) == strip(theirs["generations"])
    assert mine["evolution"] == json.loads(json.dumps(theirs["evolution"]))
    assert mine["rejection_reference"] == json.loads(json.dumps(theirs["rejection_reference"]))


def test_resume_with_another_rule_is_refused(pruner, reference, tmp_path):
    path = tmp_path / "state.json"
    search, _ = rejecting_search(pruner, reference, state_path=path, generations=3)
    search.run()
    with pytest.raises(ConfigurationError, match="early rejection"):
        LeGRSearch(pruner, lambda m: 0.0, 0.5, state_path=path, **dict(SETTINGS, generations=3))


def test_with_two_budgets_only_the_last_is_cut_short(pruner, reference):
    search, exact = rejecting_search(pruner, reference, budgets=[0.4, 0.6], generations=30)
    generations = []
    search.run(generations.append)
    rejected = [g for g in generations if g.rejected]
    assert rejected
    for gen in rejected:
        assert len(exact[gen.generation]) == 2 and search.records[gen.generation]["seen"] < 1
        assert gen.fitness <= np.mean(exact[gen.generation])  # a bound of the mean over both budgets
    best = min(generations, key=lambda g: g.fitness)
    assert best.fitness == pytest.approx(np.mean(exact[best.generation]), rel=1e-12)


def test_cached_repeats_of_a_rejected_candidate_stay_marked(pruner, reference):
    search, _ = rejecting_search(pruner, reference, reuse_fitness=True, generations=60, mutation_rate=0.05)
    generations = []
    search.run(generations.append)
    bounds = set(search.bounds)
    assert bounds and bounds <= set(search.cache)
    for gen, record in zip(generations, search.records):
        assert gen.rejected == bool(record.get("rejected"))
        if gen.cached and gen.rejected:
            assert "seen" not in record  # stopped the first time; this one was not scored at all
    state = search.state_dict()
    assert sum(1 for e in state["fitness_cache"] if e.get("bound")) == len(bounds)


@pytest.mark.parametrize("chunks, can", [(8, False), (9, True), (40, True)])
def test_a_rule_can_stop_only_with_chunks_left_after_its_minimum(chunks, can):
    rule = EarlyRejection([10] * chunks)
    assert rule.can_stop is can
    watch = rule.watch(threshold=0.0)  # every candidate far worse than the threshold
    assert any(watch.observe(5.0 + (i % 2), 10) for i in range(chunks)) is can
