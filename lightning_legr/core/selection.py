"""LeGR-Pruning: which channels to remove to meet a budget (FLOPs, parameters, ...), given a global ranking."""

import math
import numbers
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

from lightning_legr.core.errors import ConfigurationError
from lightning_legr.core.cost import LayerCost
from lightning_legr.core.structure import Structure

__all__ = ["Selection", "Selector", "check_budget", "check_safeguard", "check_round_to"]


def _sum_columns(incidence: np.ndarray, column_unit: np.ndarray, units: int) -> np.ndarray:
    """Add up the incidence columns of each unit's channels: (layers x channels) -> (layers x units)."""
    summed = np.zeros((units + 1, incidence.shape[0]))
    np.add.at(summed, column_unit, incidence.T)
    return summed[:units].T.copy()


_WHAT = {"flops": "FLOPs", "params": "parameters", "latency": "latency", "latency_budgets": "latency"}


def _what(name: str) -> str:
    """What a budget named ``name`` (``flops``, ``search_params``, ...) is a fraction of."""
    kind = name[len("search_"):] if name.startswith("search_") else name
    return _WHAT.get(kind, kind)


def check_budget(budget: float, name: str = "flops") -> float:
    """Validate one budget, a fraction of the original cost (FLOPs, parameters, ...) in (0, 1]."""
    if isinstance(budget, np.ndarray) and budget.ndim == 0:
        budget = budget.item()
    what = _what(name)
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or not math.isfinite(budget):
        raise ConfigurationError(f"`{name}` must be a number in (0, 1] (a fraction of the original {what}), got {budget!r}")
    if not 0 < budget <= 1:
        raise ConfigurationError(
            f"`{name}` must be in (0, 1], a fraction of the original {what} to keep (0.5 keeps half), got {budget}"
        )
    return float(budget)


def check_safeguard(safeguard: float) -> float:
    if isinstance(safeguard, bool) or not isinstance(safeguard, numbers.Real) or not 0 <= safeguard <= 1:
        raise ConfigurationError(f"`safeguard` must be in [0, 1] (the share of each group always kept), got {safeguard!r}")
    return float(safeguard)


def check_round_to(round_to: int) -> int:
    if isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer)) or round_to < 1:
        raise ConfigurationError(f"`round_to` must be a positive integer, got {round_to!r}")
    return int(round_to)


@dataclass
class Selection:
    """The outcome of LeGR-Pruning for one budget of one kind (``"flops"``, ``"params"``, ...)."""

    budget: float
    removed: List[np.ndarray]  # per group: the removed group channels, sorted
    widths: np.ndarray  # per group: channels kept
    cost: float  # the cost model's value after removal
    total_cost: float
    kind: str = "flops"

    @property
    def ratio(self) -> float:
        return self.cost / self.total_cost

    @property
    def flops(self) -> float:
        """Analytic FLOPs after removal (a FLOP-budget selection only)."""
        return self._of("flops", self.cost)

    @property
    def total_flops(self) -> float:
        return self._of("flops", self.total_cost)

    def _of(self, kind: str, value: float) -> float:
        if self.kind != kind:
            raise AttributeError(f"a {self.kind} selection has no `{kind}`; its cost is `cost` ({self.kind})")
        return value


class Selector:
    """Precomputes what does not depend on the transform, so that one selection takes milliseconds.

    Within a group every channel gets the same (alpha > 0, kappa), so the group's own order (by base
    score) never changes: the safeguard's protected channels and the removal units are fixed once.

    Args:
        structure: the model's channel groups.
        cost_model: what a budget is a fraction of (:class:`~lightning_legr.core.cost.LayerCost`:
            FLOPs, parameters, ...).
        base_scores: per group, the base importance of each channel.
        safeguard: share of every group that is always kept; at least one channel (one step of a
            group that feeds grouped convolutions).
        round_to: keep every group's width a multiple of this (or its full width); with steps of
            ``step`` channels, a multiple of both.
    """

    def __init__(
        self,
        structure: Structure,
        cost_model: LayerCost,
        base_scores: Sequence[np.ndarray],
        safeguard: float = 0.1,
        round_to: int = 1,
    ) -> None:
        safeguard, round_to = check_safeguard(safeguard), check_round_to(round_to)
        self.cost_model = cost_model
        self.widths = structure.widths
        self.num_channels = structure.num_channels
        units_group, units_score, units_channels = [], [], []
        self.min_widths = np.zeros(len(self.widths), dtype=np.int64)
        for g, (group, scores) in enumerate(zip(structure.groups, base_scores)):
            width, step = group.width, group.step
            # widths stay whole numbers of steps, and multiples of round_to: multiples of `unit` channels
            unit = step * round_to // math.gcd(step, round_to)
            keep = min(width, max(math.ceil(safeguard * width - 1e-9), 1))
            keep = min(width, -(-keep // unit) * unit)
            self.min_widths[g] = keep
            step_scores = np.asarray(scores)[group.steps].mean(1)  # torch-pruning's mean over the groups
            ascending = np.argsort(step_scores, kind="stable")
            removable = ascending[: (width - keep) // step]
            per_unit = unit // step
            first = len(removable) % per_unit
            chunks = ([removable[:first]] if first else []) + [
                removable[i : i + per_unit] for i in range(first, len(removable), per_unit)
            ]
            for chunk in chunks:
                units_group.append(g)
                units_score.append(float(np.mean(step_scores[chunk])))
                units_channels.append(np.sort(group.steps[chunk].ravel()) + structure.offsets[g])
        self.unit_group = np.asarray(units_group, dtype=np.int64)
        self.unit_score = np.asarray(units_score, dtype=np.float64)
        self.unit_channels = units_channels
        self.channel_unit = np.full(self.num_channels, len(units_channels), dtype=np.int64)  # past the end: kept
        for u, channels in enumerate(units_channels):
            self.channel_unit[channels] = u
        self.unit_in = _sum_columns(cost_model.in_incidence, self.channel_unit, len(units_channels))
        self.unit_out = _sum_columns(cost_model.out_incidence, self.channel_unit, len(units_channels))
        self.offsets = structure.offsets

    @property
    def flop_model(self) -> LayerCost:  # the name before budgets had kinds
        return self.cost_model

    @property
    def min_cost(self) -> float:
        """The cost with every removable unit removed: the smallest reachable budget."""
        return float(self.cost_model.prefix_costs(self.unit_out.sum(1), self.unit_in.sum(1)))

    @property
    def min_flops(self) -> float:
        return self.min_cost

    def select(self, alpha: np.ndarray, kappa: np.ndarray, budget: float) -> Selection:
        """Remove the globally lowest-ranked units until cost <= budget x original, then put back the
        highest-ranked removed units that still fit, so the result lands as close under the budget as
        the channel granularity allows."""
        model = self.cost_model
        budget = check_budget(budget, model.kind)
        total = model.total
        target = budget * total
        score = alpha[self.unit_group] * self.unit_score + kappa[self.unit_group]
        order = np.argsort(score, kind="stable")
        cum_out = np.cumsum(self.unit_out[:, order], axis=1).T
        cum_in = np.cumsum(self.unit_in[:, order], axis=1).T
        prefix = model.prefix_costs(cum_out, cum_in)
        tolerance = 1e-9 * total
        fits = np.flatnonzero(prefix <= target + tolerance)
        if total <= target + tolerance:
            count = 0
        elif len(fits) == 0:
            lowest = (prefix[-1] if len(prefix) else total) / total
            what = {"flops": "FLOP", "params": "parameter"}.get(model.kind, model.kind)
            raise ConfigurationError(
                f"A {what} budget of {budget:g} cannot be reached: keeping max(safeguard x width, 1) channels"
                f" of every group leaves at least {lowest:.4f} of the {model.unit}. Raise the budget to {lowest:.4f}"
                " or more, or lower `safeguard`."
            )
        else:
            count = int(fits[0]) + 1
        removed_units = np.zeros(len(order), dtype=bool)
        removed_units[order[:count]] = True
        self._fill(removed_units, score, target + tolerance)
        return self._selection(removed_units, budget)

    def _fill(self, removed_units: np.ndarray, score: np.ndarray, limit: float) -> None:
        """Put back removed units, best first, while the cost stays within ``limit``.

        Only the best removed unit of each group is a candidate, so a group still loses its lowest
        channels first (and keeps its width a multiple of ``round_to``).
        """
        while removed_units.any():
            removed = self._channel_mask(removed_units)
            gap = limit - self.cost_model.cost(removed)
            candidates = np.flatnonzero(removed_units)
            best = {}
            for u in candidates[np.argsort(score[candidates], kind="stable")]:
                best[self.unit_group[u]] = u  # ascending: the last one seen is the group's best
            candidates = np.fromiter(best.values(), dtype=np.int64)
            cost = self.cost_model.marginal(removed, self.unit_in[:, candidates], self.unit_out[:, candidates])
            fitting = candidates[cost <= gap]
            if len(fitting) == 0:
                return
            removed_units[fitting[np.argmax(score[fitting])]] = False

    def _channel_mask(self, removed_units: np.ndarray) -> np.ndarray:
        return np.append(removed_units, False)[self.channel_unit].astype(np.float64)

    def _selection(self, removed_units: np.ndarray, budget: float) -> Selection:
        mask = self._channel_mask(removed_units)
        removed = [
            np.flatnonzero(mask[self.offsets[g] : self.offsets[g + 1]]) for g in range(len(self.widths))
        ]
        widths = self.widths - np.array([len(r) for r in removed], dtype=np.int64)
        model = self.cost_model
        return Selection(budget, removed, widths, model.cost(mask), model.total, model.kind)
