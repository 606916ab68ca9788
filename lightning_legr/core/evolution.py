"""Regularized ("aging") evolution of the per-group affine transform, as an ask/tell loop.

numpy only: no torch, no model. The caller turns each candidate into a pruned network, measures
its fitness (lower is better) and tells it back.
"""

import hashlib
import math
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lightning_legr.core.errors import ConfigurationError

__all__ = ["RegularizedEvolution"]


class RegularizedEvolution:
    """LeGR's evolutionary search over ``(alpha, kappa)``, one candidate per generation.

    - Generations ``0 .. population-1`` fill the population: the identity ``(alpha=1, kappa=0)``
      first, then random members ``alpha = exp(N(0, sigma))``, ``kappa = N(0, kappa_scale)``.
    - Later generations draw ``sample_size`` members, mutate the fittest on ``mutation_rate`` of the
      groups (``alpha *= exp(N(0, sigma * step))``, ``kappa += N(0, kappa_scale)``), and the child
      replaces the oldest member. ``step`` is annealed from 1 toward ``min_step`` over the run.

    As in the paper's code, ``generations`` counts every candidate evaluated, the initial
    population included.

    Args:
        kappa_scale: per group, the spread of its base scores (the standard deviation of its norms).
        generations: candidates to evaluate in all.
        population: population size.
        sample_size: tournament size.
        mutation_rate: share of groups mutated in a child (at least one).
        sigma: standard deviation of log-alpha mutations.
        min_step: where the mutation step ends after ``generations``.
        seed: seed of the run (an integer >= 0); the same seed gives the same candidates.

    Raises:
        ConfigurationError: for a setting out of range. A warning says when ``generations`` does not
            exceed ``population``: then every candidate is a random one and nothing evolves.

    Example::

        >>> evo = RegularizedEvolution(kappa_scale=[0.1, 0.1], generations=40, population=8, sample_size=4)
        >>> while not evo.done:
        ...     alpha, kappa = evo.ask()
        ...     evo.tell(float(((alpha - 2) ** 2).sum() + (kappa ** 2).sum()))
        >>> evo.history[0][0], evo.best_fitness < 0.5  # the identity scores 2.0
        (2.0, True)
    """

    def __init__(
        self,
        kappa_scale: Sequence[float],
        generations: int = 400,
        population: int = 64,
        sample_size: int = 16,
        mutation_rate: float = 0.1,
        sigma: float = 1.0,
        min_step: float = 0.2,
        seed: int = 0,
    ) -> None:
        _check_int("generations", generations, 1)
        _check_int("population", population, 1)
        _check_int("sample_size", sample_size, 1)
        _check_int("seed", seed, 0)
        if sample_size > population:
            raise ConfigurationError(f"`sample_size` ({sample_size}) cannot exceed `population` ({population})")
        if not _is_real(mutation_rate) or not 0 < mutation_rate <= 1:
            raise ConfigurationError(f"`mutation_rate` must be in (0, 1] (share of groups mutated), got {mutation_rate!r}")
        if not _is_real(sigma) or not math.isfinite(sigma) or sigma <= 0:
            raise ConfigurationError(f"`sigma` must be a finite number > 0 (the spread of log-alpha mutations), got {sigma!r}")
        if not _is_real(min_step) or not 0 <= min_step <= 1:
            raise ConfigurationError(f"`min_step` must be in [0, 1], got {min_step!r}")
        if generations <= population:
            warnings.warn(
                f"`generations` ({generations}) <= `population` ({population}): every candidate is a random member of"
                " the initial population and nothing evolves. Raise `generations` (the paper uses 400 with a"
                " population of 64) or lower `population`.",
                UserWarning,
                stacklevel=2,
            )
        self.kappa_scale = np.asarray(kappa_scale, dtype=np.float64)
        self.num_groups = len(self.kappa_scale)
        self.generations = generations
        self.population = population
        self.sample_size = sample_size
        self.mutation_rate = mutation_rate
        self.sigma = sigma
        self.min_step = min_step
        self.seed = seed
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.generation = 0
        self.alphas = np.zeros((0, self.num_groups))
        self.kappas = np.zeros((0, self.num_groups))
        self.fitness = np.zeros(0)
        self.born = np.zeros(0, dtype=np.int64)
        self.best: Optional[Tuple[np.ndarray, np.ndarray, float, int]] = None
        self.history = []  # per generation: (candidate fitness, best so far, population mean)
        self._pending: Optional[List[Tuple[np.ndarray, np.ndarray]]] = None

    # ------------------------------------------------------------------ ask / tell
    @property
    def done(self) -> bool:
        return self.generation >= self.generations

    @property
    def step_size(self) -> float:
        """Mutation step of the current generation: 1 at the start, ``min_step`` at the end."""
        return 1.0 - (1.0 - self.min_step) * self.generation / self.generations

    def ask(self) -> Tuple[np.ndarray, np.ndarray]:
        """The next candidate ``(alpha, kappa)``; asking again before :meth:`tell` returns the same one."""
        return self.ask_batch(1)[0]

    def ask_batch(self, count: int) -> List[Tuple[np.ndarray, np.ndarray]]:
        """The next ``count`` candidates (fewer at the end of the run), all made from the population as it
        is now, for workers that evaluate them at the same time: the identity, then random members until
        the population is full, then mutated tournament winners. ``count=1`` is the sequential algorithm.

        Asking again before :meth:`tell_batch` returns the same candidates.
        """
        if self.done:
            raise RuntimeError(f"The search has finished its {self.generations} generations.")
        _check_int("count", count, 1)
        count = min(count, self.generations - self.generation)
        if self._pending is None:
            self._rng_before_ask = self.rng.bit_generator.state
            pending = []
            for i in range(count):
                if self.generation + i == 0:
                    pending.append((np.ones(self.num_groups), np.zeros(self.num_groups)))
                elif len(self.fitness) + i < self.population:
                    pending.append((
                        np.exp(self.rng.normal(0.0, self.sigma, self.num_groups)),
                        self.rng.normal(0.0, 1.0, self.num_groups) * self.kappa_scale,
                    ))
                else:
                    pending.append(self._mutate(self._tournament(), self.generation + i))
            self._pending = pending
        elif len(self._pending) != count:
            raise RuntimeError(f"{len(self._pending)} candidates are waiting for `tell`; asked for {count}.")
        return [(alpha.copy(), kappa.copy()) for alpha, kappa in self._pending]

    def _tournament(self) -> int:
        sampled = self.rng.choice(len(self.fitness), self.sample_size, replace=False)
        return int(sampled[np.argmin(self.fitness[sampled])])

    def _mutate(self, parent: int, generation: int) -> Tuple[np.ndarray, np.ndarray]:
        alpha, kappa = self.alphas[parent].copy(), self.kappas[parent].copy()
        count = min(self.num_groups, max(1, int(round(self.mutation_rate * self.num_groups))))
        groups = self.rng.choice(self.num_groups, count, replace=False)
        step = 1.0 - (1.0 - self.min_step) * generation / self.generations
        alpha[groups] *= np.exp(self.rng.normal(0.0, self.sigma * step, count))
        kappa[groups] += self.rng.normal(0.0, 1.0, count) * self.kappa_scale[groups]
        return alpha, kappa

    def tell(self, fitness: float) -> None:
        """Report the fitness (lower is better) of the last asked candidate. NaN or infinite (either sign)
        counts as the worst: a broken metric must never win."""
        if self._pending is not None and len(self._pending) != 1:
            raise RuntimeError(f"{len(self._pending)} candidates are waiting: use `tell_batch`.")
        self.tell_batch([fitness])

    def tell_batch(self, fitnesses: Sequence[float]) -> None:
        """Report the fitness of every candidate of the last :meth:`ask_batch`, in order: each child in turn
        joins the population (or replaces its oldest member)."""
        if self._pending is None:
            raise RuntimeError("`tell` needs a candidate from `ask` first.")
        if len(fitnesses) != len(self._pending):
            raise RuntimeError(f"{len(self._pending)} candidates are waiting for their fitness, got {len(fitnesses)}.")
        for (alpha, kappa), fitness in zip(self._pending, fitnesses):
            self._add(alpha, kappa, float(fitness))
        self._pending = None

    def _add(self, alpha: np.ndarray, kappa: np.ndarray, fitness: float) -> None:
        if not math.isfinite(fitness):
            fitness = math.inf
        if len(self.fitness) < self.population:
            self.alphas = np.vstack([self.alphas, alpha])
            self.kappas = np.vstack([self.kappas, kappa])
            self.fitness = np.append(self.fitness, fitness)
            self.born = np.append(self.born, self.generation)
        else:
            oldest = int(np.argmin(self.born))
            self.alphas[oldest], self.kappas[oldest] = alpha, kappa
            self.fitness[oldest], self.born[oldest] = fitness, self.generation
        if self.best is None or fitness < self.best[2]:
            self.best = (alpha, kappa, fitness, self.generation)
        finite = self.fitness[np.isfinite(self.fitness)]
        self.history.append((fitness, self.best[2], float(finite.mean()) if len(finite) else math.inf))
        self.generation += 1

    def digest(self) -> str:
        """A short fingerprint of the whole state (population, ages, fitness, RNG, generation): equal on
        workers that agree, cheap enough to compare every step."""
        h = hashlib.sha1()
        for array in (self.alphas, self.kappas, self.fitness, self.born):
            h.update(np.ascontiguousarray(array).tobytes())
        h.update(repr((self.generation, self.rng.bit_generator.state, self._pending is not None)).encode())
        return h.hexdigest()[:16]

    @property
    def best_fitness(self) -> float:
        return math.inf if self.best is None else self.best[2]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume exactly: settings, population, ages, fitness, RNG, generation.

        Strict JSON: a non-finite fitness (a candidate whose metric was NaN or infinite, the worst) is
        ``null``. A candidate asked but not yet told is not saved: after a restore, ``ask`` draws the
        very same candidate again from the restored RNG.
        """
        state = {
            "settings": self._settings(),
            "generation": self.generation,
            "rng": self.rng.bit_generator.state if self._pending is None else self._rng_before_ask,
            "alphas": self.alphas.tolist(),
            "kappas": self.kappas.tolist(),
            "fitness": [_json_float(f) for f in self.fitness],
            "born": self.born.tolist(),
            "best": None
            if self.best is None
            else {
                "alpha": self.best[0].tolist(),
                "kappa": self.best[1].tolist(),
                "fitness": _json_float(self.best[2]),
                "generation": self.best[3],
            },
            "history": [[_json_float(v) for v in h] for h in self.history],
        }
        if not (np.isfinite(self.fitness).all() and all(math.isfinite(v) for h in self.history for v in h)):
            state["note"] = "a null fitness was NaN or infinite: that candidate counts as the worst"
        return state

    def _settings(self) -> Dict[str, Any]:
        return {
            "kappa_scale": self.kappa_scale.tolist(),
            "generations": self.generations,
            "population": self.population,
            "sample_size": self.sample_size,
            "mutation_rate": self.mutation_rate,
            "sigma": self.sigma,
            "min_step": self.min_step,
            "seed": self.seed,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`. Refuses a state saved with other settings."""
        saved = state["settings"]
        mine = self._settings()
        if saved != mine:
            diff = [k for k in mine if saved.get(k) != mine[k]]
            raise ConfigurationError(f"The saved search state was made with different settings ({', '.join(diff)}).")
        self.generation = int(state["generation"])
        self.rng.bit_generator.state = state["rng"]
        self.alphas = np.asarray(state["alphas"], dtype=np.float64).reshape(-1, self.num_groups)
        self.kappas = np.asarray(state["kappas"], dtype=np.float64).reshape(-1, self.num_groups)
        self.fitness = np.asarray([_float(f) for f in state["fitness"]], dtype=np.float64)
        self.born = np.asarray(state["born"], dtype=np.int64)
        best = state["best"]
        self.best = (
            None
            if best is None
            else (np.asarray(best["alpha"]), np.asarray(best["kappa"]), _float(best["fitness"]), int(best["generation"]))
        )
        self.history = [tuple(_float(v) for v in h) for h in state["history"]]
        self._pending = None


def _json_float(value: float) -> Optional[float]:
    """JSON has no NaN or infinity: a non-finite fitness (always counted as the worst) is stored as null."""
    value = float(value)
    return value if math.isfinite(value) else None


def _float(value: Any) -> float:
    """Read back :func:`_json_float` (and the strings "inf" earlier versions wrote)."""
    return math.inf if value is None else float(value)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigurationError(f"`{name}` must be an integer >= {minimum}, got {value!r}")
