"""Regularized evolution: determinism, aging, mutation, annealing, NaN handling, exact resume."""

import json
import math
import warnings

import numpy as np
import pytest

from lightning_legr import RegularizedEvolution
from lightning_legr.core.errors import ConfigurationError

SCALE = np.linspace(0.5, 2.0, 20)


def objective(alpha, kappa):
    return float(((np.log(alpha) - 0.3) ** 2).sum() + ((kappa - 0.1) ** 2).sum())


def run(evo, generations=None, fitness=objective):
    asked = []
    for _ in range(generations if generations is not None else evo.generations - evo.generation):
        alpha, kappa = evo.ask()
        asked.append((alpha, kappa))
        evo.tell(fitness(alpha, kappa))
    return asked


def same_candidates(a, b):
    return len(a) == len(b) and all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))


def make(**kwargs):
    settings = dict(kappa_scale=SCALE, generations=30, population=8, sample_size=3, mutation_rate=0.2, seed=5)
    settings.update(kwargs)
    return RegularizedEvolution(**settings)


def test_same_seed_same_candidates_other_seed_others():
    a, b, c = make(), make(), make(seed=6)
    ca, cb, cc = run(a), run(b), run(c)
    assert same_candidates(ca, cb)
    assert a.history == b.history and a.best_fitness == b.best_fitness
    assert not same_candidates(ca, cc)


def test_identity_is_candidate_zero_then_random_members():
    evo = make()
    alpha, kappa = evo.ask()
    assert alpha.tolist() == [1.0] * 20 and kappa.tolist() == [0.0] * 20
    again = evo.ask()  # asking twice before tell gives the same candidate
    assert np.array_equal(again[0], alpha) and np.array_equal(again[1], kappa)
    evo.tell(1.0)
    alpha, kappa = evo.ask()
    assert (alpha != 1.0).all() and (kappa != 0.0).all() and (alpha > 0).all()


def test_population_fills_then_the_oldest_is_replaced():
    evo = make(population=6, sample_size=2)
    run(evo, 6)
    assert evo.born.tolist() == list(range(6))
    assert len(evo.fitness) == 6
    for generation in range(6, 20):
        alpha, kappa = evo.ask()
        oldest = int(np.argmin(evo.born))
        before = evo.born.copy()
        evo.tell(objective(alpha, kappa))
        assert len(evo.fitness) == 6
        assert evo.born[oldest] == generation
        assert np.array_equal(np.delete(evo.born, oldest), np.delete(before, oldest))  # the others stay
        assert np.array_equal(evo.alphas[oldest], alpha) and np.array_equal(evo.kappas[oldest], kappa)
    assert sorted(evo.born.tolist()) == list(range(14, 20))


def test_the_best_member_also_ages_out():
    """Regularized evolution: even the best member is removed once it is the oldest."""
    evo = make(population=4, sample_size=2, generations=10)
    evo.ask()
    evo.tell(-100.0)  # the identity is by far the best
    run(evo, 4)
    assert evo.best_fitness == -100.0 and evo.best[3] == 0  # still remembered as the best ever...
    assert -100.0 not in evo.fitness.tolist()  # ...but no longer in the population


@pytest.mark.parametrize("rate, groups", [(0.01, 20), (0.1, 20), (0.25, 20), (0.5, 20), (0.5, 5), (0.3, 5), (0.9, 3)])
def test_number_of_mutated_groups(rate, groups):
    evo = RegularizedEvolution(np.ones(groups), generations=40, population=5, sample_size=5, mutation_rate=rate, seed=1)
    # fill the population with known fitness; with sample_size == population the parent is the best member
    for i in range(5):
        evo.ask()
        evo.tell(float(i))
    expected = max(1, round(rate * groups))
    for _ in range(10):
        parent = int(np.argmin(evo.fitness))
        p_alpha, p_kappa = evo.alphas[parent].copy(), evo.kappas[parent].copy()
        alpha, kappa = evo.ask()
        changed_alpha, changed_kappa = alpha != p_alpha, kappa != p_kappa
        assert changed_alpha.sum() == expected
        assert np.array_equal(changed_alpha, changed_kappa)  # alpha and kappa of the same groups
        evo.tell(-1.0 - evo.generation)  # each child is the new best: next parent is known


def test_step_size_anneals_from_one_to_min_step():
    evo = make(generations=10, min_step=0.2)
    steps = []
    while not evo.done:
        steps.append(evo.step_size)
        evo.ask()
        evo.tell(0.0)
    assert steps[0] == 1.0
    assert np.all(np.diff(steps) < 0)
    np.testing.assert_allclose(np.diff(steps), -0.08)
    assert evo.step_size == pytest.approx(0.2)


def test_step_size_scales_the_alpha_mutations():
    """With min_step = 0 the last mutations of log-alpha are far smaller than the first ones."""
    evo = RegularizedEvolution(
        np.ones(50), generations=400, population=2, sample_size=1, mutation_rate=1.0, min_step=0.0
    )
    spreads = []
    for _ in range(400):
        parent_alphas = evo.alphas.copy()
        alpha, kappa = evo.ask()
        if len(parent_alphas) == 2:
            spreads.append(min(np.abs(np.log(alpha) - np.log(p)).mean() for p in parent_alphas))
        evo.tell(0.0)
    assert np.mean(spreads[:20]) > 10 * np.mean(spreads[-20:])


def test_nan_fitness_is_the_worst():
    evo = make(population=4, sample_size=4, generations=12)
    fitnesses = [float("nan"), 3.0, float("nan"), 2.0]
    for f in fitnesses:
        evo.ask()
        evo.tell(f)
    assert evo.fitness.tolist() == [math.inf, 3.0, math.inf, 2.0]
    assert evo.best_fitness == 2.0 and evo.best[3] == 3
    assert evo.history[-1] == (2.0, 2.0, 2.5)  # the mean ignores the non-finite
    assert evo.history[0] == (math.inf, math.inf, math.inf)
    # the tournament (the whole population here) picks the best, never a NaN member
    alpha, _ = evo.ask()
    assert (alpha != evo.alphas[3]).sum() == max(1, round(0.2 * 20))
    evo.tell(float("nan"))
    state = json.loads(json.dumps(evo.state_dict()))  # infinities survive JSON
    fresh = make(population=4, sample_size=4, generations=12)
    fresh.load_state_dict(state)
    assert fresh.fitness.tolist() == evo.fitness.tolist() and fresh.history == evo.history


@pytest.mark.parametrize("k", [0, 1, 7, 8, 19])
def test_resume_is_exact(k):
    uninterrupted = make()
    expected = run(uninterrupted)
    first = make()
    got = run(first, k)
    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    got += run(resumed)
    assert same_candidates(got, expected)
    assert resumed.history == uninterrupted.history
    assert resumed.best_fitness == uninterrupted.best_fitness and resumed.best[3] == uninterrupted.best[3]
    assert np.array_equal(resumed.best[0], uninterrupted.best[0])
    assert np.array_equal(resumed.best[1], uninterrupted.best[1])
    assert resumed.born.tolist() == uninterrupted.born.tolist()


@pytest.mark.parametrize("k", [0, 3, 8, 15])
def test_resume_from_a_state_taken_between_ask_and_tell(k):
    uninterrupted = make()
    expected = run(uninterrupted)
    first = make()
    got = run(first, k)
    first.ask()  # the process is killed while evaluating this candidate
    state = json.dumps(first.state_dict())
    resumed = make()
    resumed.load_state_dict(json.loads(state))
    assert resumed.generation == k
    got += run(resumed)
    assert same_candidates(got, expected)
    assert resumed.history == uninterrupted.history
    # and the interrupted instance itself can carry on too
    first.tell(objective(*expected[k]))
    assert same_candidates(run(first), expected[k + 1 :])


def test_refuses_a_state_with_other_settings():
    evo = make()
    run(evo, 3)
    state = evo.state_dict()
    with pytest.raises(ValueError, match="different settings.*seed"):
        make(seed=9).load_state_dict(state)
    with pytest.raises(ValueError, match="different settings.*population"):
        make(population=9).load_state_dict(state)


def test_ask_after_done_and_tell_without_ask():
    evo = make(generations=2)
    with pytest.raises(RuntimeError, match="from `ask` first"):
        evo.tell(1.0)
    run(evo)
    assert evo.done
    with pytest.raises(RuntimeError, match="finished its 2 generations"):
        evo.ask()


def test_finds_a_better_candidate_than_the_identity():
    def fitness(alpha, kappa):
        return float(((np.log(alpha) - 0.5) ** 2).sum() + (kappa ** 2).sum())

    evo = make(kappa_scale=np.full(20, 0.01), generations=200, population=16, sample_size=4)
    run(evo, fitness=fitness)
    assert evo.history[0][0] == 5.0  # the identity
    assert evo.best_fitness < 0.5 * evo.history[0][0]
    best_so_far = [h[1] for h in evo.history]
    assert all(b <= a for a, b in zip(best_so_far, best_so_far[1:]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(generations=0), "`generations` must be an integer >= 1, got 0"),
        (dict(generations=2.5), "`generations` must be an integer"),
        (dict(population=0, sample_size=1), "`population` must be an integer >= 1"),
        (dict(sample_size=9), r"`sample_size` \(9\) cannot exceed `population` \(8\)"),
        (dict(mutation_rate=0.0), r"`mutation_rate` must be in \(0, 1\]"),
        (dict(mutation_rate=1.5), r"`mutation_rate` must be in \(0, 1\]"),
        (dict(sigma=0.0), r"`sigma` must be a finite number > 0 .*got 0\.0"),
        (dict(sigma=float("nan")), r"`sigma` must be a finite number > 0 .*got nan"),
        (dict(sigma=float("inf")), r"`sigma` must be a finite number > 0 .*got inf"),
        (dict(sigma="1"), r"`sigma` must be a finite number > 0 .*got '1'"),
        (dict(min_step=1.5), r"`min_step` must be in \[0, 1\]"),
        (dict(seed=-1), "`seed` must be an integer >= 0, got -1"),
        (dict(seed=1.5), "`seed` must be an integer >= 0, got 1.5"),
        (dict(seed=True), "`seed` must be an integer >= 0, got True"),
    ],
)
def test_invalid_settings(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        make(**kwargs)


def test_no_evolution_without_more_generations_than_population_is_warned():
    with pytest.warns(UserWarning, match=r"`generations` \(8\) <= `population` \(8\): .* nothing evolves"):
        make(generations=8, population=8, sample_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(generations=9, population=8, sample_size=2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_fitness_is_the_worst_and_the_state_is_strict_json(bad):
    evo = make(generations=12, population=4, sample_size=4)
    alpha, _ = evo.ask()
    evo.tell(bad)  # the identity, but its metric is broken
    for _ in range(3):
        evo.ask()
        evo.tell(1.0)
    assert evo.fitness[0] == np.inf and evo.best_fitness == 1.0 and evo.best[3] == 1
    text = json.dumps(evo.state_dict(), allow_nan=False)  # raises on NaN or Infinity
    state = json.loads(text)
    assert state["fitness"][0] is None and state["history"][0][0] is None and "NaN or infinite" in state["note"]
    again = make(generations=12, population=4, sample_size=4)
    again.load_state_dict(state)
    assert again.fitness[0] == np.inf
    assert np.array_equal(again.ask()[0], evo.ask()[0])  # the tournament never picks the broken member first


def test_a_batch_of_one_is_the_sequential_algorithm():
    one, batch = make(), make()
    while not one.done:
        alpha, kappa = one.ask()
        (b_alpha, b_kappa), = batch.ask_batch(1)
        assert np.array_equal(alpha, b_alpha) and np.array_equal(kappa, b_kappa)
        one.tell(objective(alpha, kappa))
        batch.tell_batch([objective(b_alpha, b_kappa)])
    assert one.state_dict() == batch.state_dict()


def test_a_batch_is_made_from_one_population_and_told_in_order():
    evo = make(generations=20, population=6, sample_size=3)
    first = evo.ask_batch(4)
    assert np.array_equal(first[0][0], np.ones(20)) and np.array_equal(first[0][1], np.zeros(20))  # the identity
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(evo.ask_batch(4), first))  # asked again: the same
    with pytest.raises(RuntimeError, match="4 candidates are waiting for `tell`; asked for 2"):
        evo.ask_batch(2)
    with pytest.raises(RuntimeError, match="use `tell_batch`"):
        evo.tell(1.0)
    evo.tell_batch([objective(a, k) for a, k in first])
    assert evo.generation == 4 and len(evo.fitness) == 4
    state = evo.state_dict()
    second = evo.ask_batch(4)  # two random members fill the population, two children of tournaments
    assert evo.digest() != make(generations=20, population=6, sample_size=3).digest()
    restored = make(generations=20, population=6, sample_size=3)
    restored.load_state_dict(state)
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(restored.ask_batch(4), second))
    assert restored.digest() == evo.digest()
    evo.tell_batch([5.0, 4.0, 3.0, 2.0])
    assert [h[0] for h in evo.history[4:]] == [5.0, 4.0, 3.0, 2.0] and evo.best_fitness <= 2.0
    assert len(evo.ask_batch(100)) == 12  # the rest of the run, no more
