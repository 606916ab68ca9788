"""Early rejection: stop scoring a candidate once it is, with high confidence, too poor to matter.

numpy only. A candidate's fitness is a weighted mean over fixed chunks (batches) of the fitness data;
the fitness reports each chunk as it goes, and the search stops it when even a low estimate of its final
value is worse than the population member a tournament almost never passes over.

The rule, with the population of ``P`` members and tournaments of ``s`` drawn without replacement:

- **Who does not matter.** The winner of a tournament ranks ``r`` or worse only when all ``s`` members it
  draws do, which has probability ``C(P - r, s) / C(P, s)``. ``r*`` is the smallest rank where that is at
  most ``share`` (1%: ``r* = 15`` for the paper's 64 and 16). A candidate worse than the member at rank
  ``r*`` would join the ranks that, all together, give under 1% of the parents; it is not the best either,
  since the best ranks 0. The threshold ``T`` is the fitness at rank ``r*`` of the members so far (while the
  population fills, a higher, more cautious value than the full population's).
- **With high confidence.** After ``k`` of the ``N`` chunks (in an order that is a random permutation of
  the fitness batches: the glue shuffles them once, with the search's seed), the chunks seen are a simple
  random sample of the ``N``; the mean of the ``N - k`` left differs from the seen mean by a standard
  error ``S * sqrt(1/k + 1/(N - k))``. The candidate is stopped when the final fitness, with the remaining
  chunks ``t`` standard errors below the seen mean, is still above ``T``, and at least ``min_share`` (20%)
  of the chunks, and at least 8, are seen (a fitness of 8 chunks or fewer is never cut short). ``t`` is
  Student's quantile with ``k - 1`` degrees of freedom at the one-sided level of ``z`` (3: 0.13%), since
  ``S`` is itself estimated from the ``k`` chunks: 4.4 at ``k = 8``, 3.4 at ``k = 20``. That low estimate
  is recorded, and told to the evolution, in place of the exact value: it is a bound, above ``T``, and
  marked as such in the state and the logs.
- **Paired with a reference.** Most of a chunk's loss is the chunk's own difficulty, the same for every
  candidate: with the chunk values of a candidate scored in full (the ``reference``: the search passes its
  best one), the watch estimates the remaining chunks of the *difference* to the reference, whose mean over
  all chunks the reference gives exactly. The rule is the same (a simple random sample of the chunks of a
  fixed list of numbers); ``S`` is the spread of the differences, several times smaller on a search's close
  candidates, so hopeless ones are stopped sooner and more of them.

A candidate that could be the best is never stopped by a correct bound, since ``T`` is at least the best
fitness; stopping a candidate better than ``T`` takes an error of more than ``z`` standard errors.
"""

import math
from math import comb
from typing import Optional, Sequence

import numpy as np

from lightning_legr.core.errors import ConfigurationError

__all__ = ["EarlyRejection", "Watch", "student_quantile", "threshold_rank"]

MIN_CHUNKS = 8  # a candidate is never stopped on fewer chunks: the spread of fewer is too uncertain


def student_quantile(z: float, dof: int) -> float:
    """Student's t quantile at the normal quantile ``z``, ``dof`` degrees of freedom (Cornish-Fisher: at
    ``z = 3``, 8% under the exact value at 7 degrees of freedom, 1% at 19; the watch needs at least 7)."""
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


def threshold_rank(population: int, sample_size: int, share: float) -> int:
    """The smallest rank ``r`` (0 = best) where a tournament of ``sample_size`` from ``population`` is won
    by a member of rank ``r`` or worse with probability at most ``share``."""
    total = comb(population, sample_size)
    return next(r for r in range(population + 1) if comb(population - r, sample_size) <= share * total)


class EarlyRejection:
    """How the search stops hopeless candidates early (see the module's docstring for the rule).

    Args:
        sizes: the weight (e.g. the number of images) of every chunk the fitness reports, in the order it
            reports them: the fitness is their weighted mean. Shuffle the chunks once (the same order for
            every candidate) so that the first ones are a random sample of all of them.
        z: the confidence, as a normal quantile (3: 0.13% one-sided); the bound uses Student's quantile at
            that level for the chunks seen.
        min_share: share of the chunks a candidate is always scored on before it can be stopped.
        share: the threshold member is the best one the tournaments pick (as the winner, or a worse one)
            with probability at most ``share``.
        paired: estimate the remaining chunks from the differences to a reference candidate's chunk values
            when :meth:`watch` is given one (see the module's docstring).

    Example::

        >>> rule = EarlyRejection(sizes=[100] * 20)
        >>> watch = rule.watch(threshold=1.0)
        >>> [watch.observe(v, 100) for v in [3.1, 2.9] * 4]  # stopped at the 8th chunk, the earliest
        [False, False, False, False, False, False, False, True]
        >>> round(watch.bound, 3), watch.seen  # scored on 800 of the 2000 images
        (2.87, 800.0)
        >>> paired = rule.watch(threshold=1.0, reference=[1.0, 0.8] * 10)  # a candidate scored in full: 0.9
        >>> [paired.observe(v, 100) for v in [1.2, 1.0] * 4][-1], round(paired.bound, 3)  # exactly 0.2 worse
        (True, 1.1)
    """

    def __init__(
        self, sizes: Sequence[float], z: float = 3.0, min_share: float = 0.2, share: float = 0.01, paired: bool = True
    ) -> None:
        sizes = [float(s) for s in sizes]
        if not sizes or min(sizes) <= 0:
            raise ConfigurationError(f"`sizes` must list the positive weight of every chunk of the fitness, got {sizes!r}")
        if not (isinstance(z, (int, float)) and math.isfinite(z) and z > 0):
            raise ConfigurationError(f"`z` must be a number > 0 (standard errors), got {z!r}")
        if not (isinstance(min_share, (int, float)) and 0 < min_share <= 1):
            raise ConfigurationError(f"`min_share` must be in (0, 1], got {min_share!r}")
        if not (isinstance(share, (int, float)) and 0 < share < 1):
            raise ConfigurationError(f"`share` must be in (0, 1), got {share!r}")
        self.sizes = sizes
        self.total = float(sum(sizes))
        self.z, self.min_share, self.share = float(z), float(min_share), float(share)
        self.paired = bool(paired)
        self.min_chunks = max(MIN_CHUNKS, math.ceil(min_share * len(sizes)))

    @property
    def can_stop(self) -> bool:
        """Whether any candidate can be stopped: only after ``min_chunks`` chunks, with some left to skip."""
        return len(self.sizes) > self.min_chunks

    def settings(self) -> dict:
        """The rule and the chunks, for the search state: a resumed search must stop candidates the same way."""
        settings = {"sizes": self.sizes, "z": self.z, "min_share": self.min_share, "share": self.share}
        if self.paired:
            settings["paired"] = True
        return settings

    def threshold(self, fitness: Sequence[float], population: int, sample_size: int) -> Optional[float]:
        """``T`` for the members' ``fitness`` so far (None: too few finite members to name one yet)."""
        rank = threshold_rank(population, min(sample_size, population), self.share)
        finite = np.sort(np.asarray([f for f in fitness if math.isfinite(f)], dtype=np.float64))
        return float(finite[rank]) if rank < len(finite) else None

    def watch(self, threshold: Optional[float], reference: Optional[Sequence[float]] = None) -> "Watch":
        """A watch over one candidate's chunks (one that never stops when ``threshold`` is None); with
        ``paired``, ``reference`` is the value of every chunk of a candidate scored in full (or None)."""
        usable = (
            self.paired and reference is not None and len(reference) == len(self.sizes)
            and all(math.isfinite(v) for v in reference)
        )
        return Watch(self, threshold, reference if usable else None)


class Watch:
    """One candidate's chunks as the fitness reports them: :meth:`observe` says when to stop."""

    def __init__(self, rule: EarlyRejection, threshold: Optional[float], reference: Optional[Sequence[float]] = None) -> None:
        self.rule = rule
        self.threshold = threshold
        self.reference = None if reference is None else [float(v) for v in reference]
        self._offset = 0.0 if reference is None else float(np.dot(self.reference, rule.sizes) / rule.total)
        self.values = []  # the chunks' values as reported: a candidate scored in full can be the next reference
        self.weights = []
        self.rejected = False
        self.bound = math.nan  # the low estimate of the final fitness that stopped the candidate

    @property
    def seen(self) -> float:
        """The weight scored so far."""
        return float(sum(self.weights))

    def observe(self, value: float, weight: float) -> bool:
        """Report one chunk's mean ``value`` and its ``weight``; True: stop, the candidate is rejected."""
        if self.rejected:
            return True
        self.values.append(float(value))
        self.weights.append(float(weight))
        k, n = len(self.values), len(self.rule.sizes)
        if self.threshold is None or k < self.rule.min_chunks or k >= n or not math.isfinite(value):
            return False
        seen = self.seen
        remaining = max(0.0, self.rule.total - seen)
        x = np.asarray(self.values)
        if self.reference is not None:  # the differences to the reference, whose mean over all is known
            x = x - np.asarray(self.reference[:k])
        mean = float(np.dot(x, self.weights) / seen)
        spread = float(x.std(ddof=1))
        low = mean - student_quantile(self.rule.z, k - 1) * spread * math.sqrt(1.0 / k + 1.0 / (n - k))
        bound = (mean * seen + low * remaining) / (seen + remaining) + self._offset
        if bound > self.threshold:
            self.rejected, self.bound = True, bound
        return self.rejected
