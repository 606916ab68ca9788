"""LeGRSearch: learn the transform by regularized evolution, with a resumable state file."""

import hashlib
import math
import numbers
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from torch import nn

from lightning_legr.core._io import PathLike, read_json, write_json
from lightning_legr.core.errors import ConfigurationError
from lightning_legr.core.evolution import RegularizedEvolution, _float, _json_float
from lightning_legr.core.pruner import LeGRPruner
from lightning_legr.core.cost import check_kind
from lightning_legr.core.rejection import EarlyRejection, Watch
from lightning_legr.core.selection import Selection, check_budget
from lightning_legr.core.structure import ExampleInputs
from lightning_legr.core.transform import Transform

__all__ = ["Generation", "LeGRSearch", "SerialWorkers", "learn_transform", "check_budgets"]

STATE_FORMAT = "lightning-legr/search-state"
Fitness = Callable[[nn.Module], float]
SelectionKey = Tuple[Tuple[int, ...], ...]  # the widths per group, at every search budget


def check_budgets(budgets: Union[float, Sequence[float]], name: str = "flops", unpruned: bool = True) -> list:
    """Validate a budget or a list of budgets: numbers in (0, 1], at least one, no duplicates.

    ``unpruned=False`` refuses 1.0 too, where a run lists the unpruned model on its own.
    """
    if isinstance(budgets, np.ndarray) and budgets.ndim == 0:
        budgets = budgets.item()
    iterable = hasattr(budgets, "__iter__") and not isinstance(budgets, (str, numbers.Real))
    budgets = list(budgets) if iterable else [budgets]
    if not budgets:
        raise ConfigurationError(f"`{name}` is empty: give at least one budget in (0, 1], e.g. {name}=[0.3, 0.5, 0.7]")
    budgets = [check_budget(b, name) for b in budgets]
    duplicated = sorted({b for b in budgets if budgets.count(b) > 1})
    if duplicated:
        raise ConfigurationError(f"`{name}` lists {duplicated} more than once; give each budget once.")
    if not unpruned and 1.0 in budgets:
        raise ConfigurationError(
            f"`{name}` lists 1.0, the unpruned model, which is always the first row of the results already;"
            " give budgets below 1, e.g. [0.3, 0.5, 0.7]."
        )
    return budgets


@dataclass
class Generation:
    """What one generation of the search produced."""

    generation: int
    fitness: float  # inf when the candidate's fitness was NaN or infinite (counted as the worst)
    best_fitness: float
    mean_fitness: float
    widths: np.ndarray  # at the smallest search budget
    ratio: float  # fraction of the cost (of the search's kind: FLOPs, parameters) kept at the smallest search budget
    seconds: float  # wall time of the step, per candidate
    non_finite: bool = False  # the fitness function returned NaN or an infinity
    cached: bool = False  # an earlier candidate had the same selection: its fitness was reused, not evaluated
    rejected: bool = False  # stopped early: ``fitness`` is a low bound of its value, not the value
    split: Optional[Dict[str, float]] = None  # seconds in "prune", "evaluate" (and what the fitness names, e.g.
    # "bn"): for a candidate evaluated in this process; None for one evaluated by another worker


class SerialWorkers:
    """Evaluates a step's candidates one after another, in this process: the plain sequential search.

    A workers object decides how many candidates a step evaluates (``size``) and how: ``map(evaluate,
    count, digest)`` returns ``[evaluate(i) for i in range(count)]``, in order, however it spreads the
    calls (the Lightning glue spreads them over the ranks of a distributed run); what ``evaluate`` returns
    is picklable (a candidate's fitness and how it was scored). ``digest`` is the
    evolution's state fingerprint, for workers that check they agree.
    """

    size = 1

    def map(self, evaluate: Callable[[int], Any], count: int, digest: str) -> List[Any]:
        return [evaluate(i) for i in range(count)]


class LeGRSearch:
    """Learns ``(alpha, kappa)`` so that pruning to ``flops`` by the transformed ranking gives the
    lowest fitness (e.g. validation loss after ``tau`` fine-tune steps, which ``fitness`` does).

    Args:
        pruner: the model's :class:`~lightning_legr.core.pruner.LeGRPruner`.
        fitness: called with each candidate's pruned copy; returns a float, lower is better. NaN or
            an infinity counts as the worst candidate; if every candidate of the initial population
            gets one, the search stops with an error.
        flops: the budget candidates are pruned to: the paper uses the smallest of the budgets you
            want. Several budgets: a candidate's fitness is the mean over them (one pruned copy
            each), which keeps the ranking good at all of them when the smallest is so aggressive
            that every candidate there is near chance (see docs/benchmarks.md).
        state_path: a JSON file the search's state is written to after every generation; if it
            exists, the search resumes from it. ``None``: no file.
        fitness_name: what the fitness is, for error messages (e.g. "`monitor='val_loss'`").
        workers: how a step's candidates are evaluated (default :class:`SerialWorkers`: one candidate per
            step, in this process); ``workers.size`` candidates are made per step from the same population.
        kind: what the budgets in ``flops`` are fractions of: ``"flops"`` (the default) or another kind of
            :data:`~lightning_legr.core.cost.COST_KINDS`, e.g. ``"params"``: candidates are then pruned to
            that share of the parameters.
        reuse_fitness: ``True`` when ``fitness`` is deterministic in the pruned network (no training
            steps, no random batches): a candidate whose widths at every search budget equal an earlier
            candidate's (within a group the channel order is fixed, so it is the same pruned network) gets
            that fitness without being evaluated. The fitnesses it reuses are kept in the search state, so
            a resumed search reuses them too. Leave it ``False`` for a stochastic fitness (e.g. a few
            training steps on shuffled batches): a repeat would keep its first, lucky or unlucky, value.
        early_rejection: stop scoring a candidate once it is, with high confidence, worse than the member of
            the population that tournaments almost never pass over (see
            :class:`~lightning_legr.core.rejection.EarlyRejection` for the rule). The fitness then reports each
            chunk of its data to :meth:`observe` as it goes and returns as soon as that says to stop; the
            candidate's fitness is recorded as the bound that stopped it (``rejected`` in the records). The
            best candidate is always scored in full. ``None``: every candidate is scored in full.
        **evolution: ``generations``, ``population``, ``sample_size``, ``mutation_rate``, ``sigma``,
            ``min_step``, ``seed`` of :class:`~lightning_legr.core.evolution.RegularizedEvolution`.

    Example::

        >>> import torch
        >>> from lightning_legr.models import cifar_resnet
        >>> model, x = cifar_resnet(20), torch.randn(8, 3, 32, 32)
        >>> pruner = LeGRPruner(model, x[:1])
        >>> fitness = lambda pruned: (pruned(x) - model(x)).pow(2).mean().item()
        >>> search = LeGRSearch(pruner, fitness, flops=0.5, generations=6, population=4, sample_size=2)
        >>> transform = search.run()
        >>> search.evolution.generation
        6
        >>> search.records[0]["generation"], sorted(search.records[0]["split"])
        (0, ['evaluate', 'prune', 'select'])
    """

    def __init__(
        self,
        pruner: LeGRPruner,
        fitness: Fitness,
        flops: Union[float, Sequence[float]],
        state_path: Optional[PathLike] = None,
        fitness_name: str = "the fitness",
        workers: Optional[SerialWorkers] = None,
        kind: str = "flops",
        reuse_fitness: bool = False,
        early_rejection: Optional[EarlyRejection] = None,
        **evolution: Any,
    ) -> None:
        if not callable(fitness):
            raise TypeError(f"`fitness` must be a callable (pruned model -> float), got {type(fitness).__name__}")
        if not isinstance(reuse_fitness, bool):
            raise ConfigurationError(
                f"`reuse_fitness` must be True (the fitness is deterministic in the pruned network) or False, got"
                f" {reuse_fitness!r}"
            )
        if early_rejection is not None and not isinstance(early_rejection, EarlyRejection):
            raise ConfigurationError(
                f"`early_rejection` must be an EarlyRejection or None, got {type(early_rejection).__name__}"
            )
        self.reuse_fitness = reuse_fitness
        self.early_rejection = early_rejection
        self._watch: Optional[Watch] = None  # the chunks of the candidate being evaluated, when it can be stopped
        self.cache: Dict[SelectionKey, float] = {}  # fitness by selection, filled only when reuse_fitness
        self.bounds: set = set()  # the selections whose cached fitness is the bound that rejected them
        # the chunk values of the last budget of the best candidate scored in full, and its fitness: early
        # rejection's paired reference
        self.reference: Optional[Dict[str, Any]] = None
        self.records: List[Dict[str, Any]] = []  # per generation: wall time, split, whether the fitness was reused
        self._split: Dict[str, float] = {}  # the split of the candidate being evaluated
        self.notes: Dict[str, Any] = {}  # what the fitness decided once for the whole search (strict JSON), kept
        self.pruner = pruner
        self.fitness = fitness
        self.fitness_name = fitness_name
        self.workers = workers or SerialWorkers()
        self.evaluating: Optional[int] = None  # the generation of the candidate being evaluated
        self.kind = check_kind(kind)
        self.budgets = sorted(check_budgets(flops, kind))
        for budget in self.budgets:
            self._select(budget)  # an unreachable budget fails here, before any evaluation
        self.evolution = RegularizedEvolution(pruner.score_spread(), **evolution)
        self.state_path = None if state_path is None else os.fspath(state_path)
        if self.state_path and os.path.exists(self.state_path):
            self.load_state_dict(read_json(self.state_path))

    @property
    def done(self) -> bool:
        return self.evolution.done

    def step(self) -> List[Generation]:
        """Evaluate the next ``workers.size`` candidates; write the state file if there is one.

        With ``reuse_fitness``, a candidate whose selection was seen before (in an earlier step, or earlier
        in this one) takes that fitness and is not handed to the workers. The decision is made from the
        evolution and the cache alone, which every worker shares, so distributed workers agree on it.
        """
        start = time.perf_counter()
        first = self.evolution.generation
        transforms = [self._transform(a, k) for a, k in self.evolution.ask_batch(self.workers.size)]
        selections = [[self._select(budget, t) for budget in self.budgets] for t in transforms]
        select_seconds = (time.perf_counter() - start) / len(transforms)
        keys = [_selection_key(chosen) for chosen in selections]
        fresh, reused, repeats = self._plan(keys)
        cached = set(reused) | set(repeats)
        splits: Dict[int, Dict[str, float]] = {}
        threshold = self._threshold()  # the same for every candidate of the step: workers agree on it

        reference = None if self.reference is None else self.reference["chunks"]

        def evaluate(j: int) -> Tuple[float, Optional[Dict[str, float]], Optional[List[float]]]:
            i = fresh[j]
            self.evaluating = first + i
            self._split = {"prune": 0.0, "evaluate": 0.0}
            values, stopped, chunks = [], None, None
            for b, selection in enumerate(selections[i]):
                tick = time.perf_counter()
                pruned = self.pruner.apply(selection)
                tock = time.perf_counter()
                last = b == len(selections[i]) - 1  # the fitness is a mean over the budgets: the last one can
                self._watch = self._watch_last(threshold, values, reference) if last else None  # stop, given the others
                try:
                    value = float(self.fitness(pruned))
                finally:
                    watch, self._watch = self._watch, None
                if watch is not None and watch.rejected:
                    value, stopped = watch.bound, {"seen": watch.seen / watch.rule.total}
                    stopped.update(saved=watch.rule.total - watch.seen, threshold=threshold)
                elif watch is not None and len(watch.values) == len(watch.rule.sizes):
                    chunks = watch.values  # scored in full, every chunk reported: it may become the reference
                values.append(value)
                self._split["prune"] += tock - tick
                self._split["evaluate"] += time.perf_counter() - tock
            named = sum(v for k, v in self._split.items() if k not in ("prune", "evaluate"))
            self._split["evaluate"] = max(0.0, self._split["evaluate"] - named)  # what the fitness did not name
            splits[i] = self._split
            return float(np.mean(values)), stopped, chunks

        evaluated = self.workers.map(evaluate, len(fresh), self._digest())
        self.evaluating = None
        fitnesses = [reused.get(i, math.nan) for i in range(len(transforms))]
        stops: Dict[int, Optional[Dict[str, float]]] = {}
        for i, (value, stopped, chunks) in zip(fresh, evaluated):
            fitnesses[i], stops[i] = float(value), stopped
            self._offer_reference(float(value), chunks)
        bound = {i for i in reused if keys[i] in self.bounds} | {i for i in fresh if stops[i] is not None}
        for i, earlier in repeats.items():
            fitnesses[i] = fitnesses[earlier]
            if earlier in bound:
                bound.add(i)
        self.evolution.tell_batch(fitnesses)
        if self.reuse_fitness:
            for i in fresh:
                self.cache[keys[i]] = _worst_if_not_finite(fitnesses[i])
                if i in bound:
                    self.bounds.add(keys[i])
        self._check_some_finite()
        seconds = (time.perf_counter() - start) / len(transforms)
        for i in range(len(transforms)):  # a candidate another worker evaluated has no split here
            if i in splits or i in cached:
                splits[i] = {"select": select_seconds, **splits.get(i, {})}
            record = _record(first + i, seconds, i in cached, splits.get(i))
            if i in bound:
                record["rejected"] = True  # its fitness is the low bound that stopped it (here or the first time)
                record.update({k: round(v, 6) for k, v in (stops.get(i) or {}).items()})
            self.records.append(record)
        if self.state_path:
            write_json(self.state_path, self.state_dict())
        history = self.evolution.history[first:]
        return [
            Generation(first + i, told, best, mean, chosen[0].widths, chosen[0].ratio, seconds,
                       non_finite=not math.isfinite(fitness), cached=i in cached, rejected=i in bound,
                       split=splits.get(i))
            for i, ((told, best, mean), chosen, fitness) in enumerate(zip(history, selections, fitnesses))
        ]

    def _select(self, budget: float, transform: Optional[Transform] = None) -> Selection:
        return self.pruner.select(transform=transform, **{self.kind: budget})

    def _threshold(self) -> Optional[float]:
        """The fitness a candidate must, with confidence, be worse than to be stopped early (None: none yet)."""
        if self.early_rejection is None:
            return None
        evolution = self.evolution
        return self.early_rejection.threshold(evolution.fitness, evolution.population, evolution.sample_size)

    def _watch_last(
        self, threshold: Optional[float], others: List[float], reference: Optional[List[float]] = None
    ) -> Optional[Watch]:
        """A watch over the last budget's chunks: with the other budgets' exact values, the mean over all
        is above ``threshold`` when the last one's is above ``n * threshold - sum(others)``."""
        if self.early_rejection is None:
            return None
        if threshold is not None and all(math.isfinite(v) for v in others):
            threshold = threshold * (len(others) + 1) - sum(others)
        else:
            threshold = None
        return self.early_rejection.watch(threshold, reference)

    def _offer_reference(self, fitness: float, chunks: Optional[List[float]]) -> None:
        """Keep the chunk values of the best candidate scored in full as early rejection's paired reference
        (every worker is told every candidate's chunks, in the same order, so they keep the same one)."""
        if chunks is None or not math.isfinite(fitness) or not all(math.isfinite(v) for v in chunks):
            return
        if self.reference is None or fitness < self.reference["fitness"]:
            self.reference = {"fitness": fitness, "chunks": [float(v) for v in chunks]}

    def observe(self, value: float, weight: float) -> bool:
        """Report one chunk of the candidate's fitness data: its mean ``value`` (lower is better) and
        ``weight`` (e.g. its number of images), in the chunk order ``early_rejection`` was given. Called by
        the fitness during its evaluation; True: stop now and return, the candidate is rejected (its
        recorded fitness is then the search's bound, whatever the fitness returns). Always False without
        ``early_rejection``, and for any budget but the last of a candidate."""
        return self._watch is not None and self._watch.observe(value, weight)
    def _plan(self, keys: List[SelectionKey]) -> Tuple[List[int], Dict[int, float], Dict[int, int]]:
        """Which of a step's candidates to evaluate; the fitness of those the cache knows; and for a repeat
        of an earlier candidate of this step, that candidate's index."""
        if not self.reuse_fitness:
            return list(range(len(keys))), {}, {}
        fresh, reused, repeats, first_seen = [], {}, {}, {}
        for i, key in enumerate(keys):
            if key in self.cache:
                reused[i] = self.cache[key]
            elif key in first_seen:
                repeats[i] = first_seen[key]
            else:
                first_seen[key] = i
                fresh.append(i)
        return fresh, reused, repeats

    def _digest(self) -> str:
        """The evolution's fingerprint, and the cache's: distributed workers compare both every step."""
        if not self.reuse_fitness:
            return self.evolution.digest()
        h = hashlib.sha1(self.evolution.digest().encode())
        for key, value in self.cache.items():
            h.update(repr((key, value, key in self.bounds)).encode())
        return h.hexdigest()[:16]

    def add_split(self, part: str, seconds: float) -> None:
        """Name ``seconds`` of the candidate's fitness call that went to ``part`` (e.g. ``"bn"`` for its
        BatchNorm recalibration), for the records and the logs; called by the fitness during its evaluation."""
        if part in ("prune", "evaluate", "select"):
            raise ConfigurationError(f"`part` {part!r} is measured by the search itself; name another part, e.g. 'bn'")
        self._split[part] = self._split.get(part, 0.0) + float(seconds)

    @property
    def cache_hits(self) -> int:
        """Candidates whose fitness was reused rather than evaluated, so far (resumed runs included)."""
        return sum(1 for r in self.records if r["cached"])

    @property
    def rejections(self) -> int:
        """Candidates stopped early so far (resumed runs included; their repeats from the cache not counted)."""
        return sum(1 for r in self.records if r.get("rejected") and not r["cached"])

    @property
    def saved(self) -> float:
        """The chunk weight (e.g. images) early rejection did not score, so far."""
        return float(sum(r.get("saved", 0.0) for r in self.records))

    def _check_some_finite(self) -> None:
        evolution = self.evolution
        if evolution.generation >= min(evolution.population, evolution.generations) and not np.isfinite(
            [h[0] for h in evolution.history]
        ).any():
            raise ConfigurationError(
                f"Every one of the {evolution.generation} candidates so far scored NaN or infinity on"
                f" {self.fitness_name}, so the search cannot rank them. Check that the metric is finite for the"
                " unpruned model and for a pruned one (e.g. a loss that divides by a count, or an empty batch)."
            )

    def run(self, on_generation: Optional[Callable[[Generation], None]] = None) -> Transform:
        """Run the remaining generations and return the best transform."""
        while not self.done:
            for result in self.step():
                if on_generation is not None:
                    on_generation(result)
        return self.best_transform()

    def best_transform(self) -> Transform:
        """The best transform found so far (the identity before any generation)."""
        best = self.evolution.best
        if best is None:
            return self.pruner.identity()
        alpha, kappa, fitness, generation = best
        info = {
            "fitness": fitness if math.isfinite(fitness) else None,
            "generation": generation,
            f"search_{self.kind}": self.budgets if len(self.budgets) > 1 else self.budgets[0],
            "generations": self.evolution.generations,
            "population": self.evolution.population,
            "seed": self.evolution.seed,
        }
        return self._transform(alpha, kappa, info)

    def _transform(self, alpha: np.ndarray, kappa: np.ndarray, info: Optional[Dict[str, Any]] = None) -> Transform:
        return Transform(alpha, kappa, self.pruner.structure.signature(), self.pruner.criterion.name, info or {})

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        state = {
            "format": STATE_FORMAT,
            "groups": [list(g) for g in self.pruner.structure.signature()],
            "criterion": self.pruner.criterion.name,
            "safeguard": self.pruner.safeguard,
            "round_to": self.pruner.round_to,
            "budgets": self.budgets,
            "evolution": self.evolution.state_dict(),
            "fitness_cache": [_cache_entry(key, value, key in self.bounds) for key, value in self.cache.items()],
            "generations": self.records,
            "notes": self.notes,
        }
        if self.kind != "flops":  # states of FLOP searches stay as they were
            state["kind"] = self.kind
        if self.early_rejection is not None:
            state["early_rejection"] = self.early_rejection.settings()
            if self.reference is not None:
                state["rejection_reference"] = {
                    "fitness": _json_float(self.reference["fitness"]), "chunks": self.reference["chunks"],
                }
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Resume from a saved state; refuse one that belongs to a different search."""
        where = self.state_path or "The saved search state"
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ConfigurationError(f"{where} is not a lightning-legr search state.")
        mine = self.state_dict()
        keys = ("groups", "criterion", "safeguard", "round_to", "budgets")
        differs = [k for k in keys if state.get(k) != mine[k]]
        if state.get("early_rejection") != mine.get("early_rejection"):
            differs.append("early rejection (rule or fitness chunks)")
        if state.get("kind", "flops") != self.kind:
            differs.append(f"kind of budget: {state.get('kind', 'flops')} there, {self.kind} here")
        if differs:
            raise ConfigurationError(
                f"{where} belongs to another search (different {', '.join(differs)}). Use another state path"
                " (or dirpath), or delete it to start over."
            )
        try:
            self.evolution.load_state_dict(state["evolution"])
        except ValueError as err:
            raise ConfigurationError(f"{where} belongs to another search: {err} Use another path, or delete it.") from None
        # states written before the cache and the records had neither: the search goes on without them
        self.cache, self.bounds = {}, set()
        for entry in state.get("fitness_cache", []):
            key = tuple(tuple(int(w) for w in widths) for widths in entry["widths"])
            self.cache[key] = _float(entry["fitness"])
            if entry.get("bound"):
                self.bounds.add(key)
        self.records = [dict(r) for r in state.get("generations", [])][: self.evolution.generation]
        reference = state.get("rejection_reference")
        self.reference = None if reference is None else {
            "fitness": _float(reference["fitness"]), "chunks": [float(v) for v in reference["chunks"]],
        }
        self.notes = dict(state.get("notes", {}))


def _selection_key(selections: Sequence[Any]) -> SelectionKey:
    return tuple(tuple(int(w) for w in s.widths) for s in selections)


def _cache_entry(key: SelectionKey, value: float, bound: bool) -> Dict[str, Any]:
    entry = {"widths": [list(w) for w in key], "fitness": _json_float(value)}
    if bound:
        entry["bound"] = True  # the low estimate that rejected the candidate early, not its exact fitness
    return entry


def _worst_if_not_finite(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def _record(generation: int, seconds: float, cached: bool, split: Optional[Dict[str, float]]) -> Dict[str, Any]:
    """One generation in the state file: rounded to the microsecond, which keeps 400 of them small."""
    record: Dict[str, Any] = {"generation": generation, "seconds": round(seconds, 6), "cached": cached}
    if split is not None:
        record["split"] = {k: round(v, 6) for k, v in split.items()}
    return record


def learn_transform(
    model: nn.Module,
    example_inputs: ExampleInputs,
    flops: Union[float, Sequence[float]],
    fitness: Fitness,
    search_flops: Optional[Union[float, Sequence[float]]] = None,
    state_path: Optional[PathLike] = None,
    on_generation: Optional[Callable[[Generation], None]] = None,
    generations: int = 400,
    population: int = 64,
    sample_size: int = 16,
    mutation_rate: float = 0.1,
    sigma: float = 1.0,
    seed: int = 0,
    kind: str = "flops",
    **pruner_kwargs: Any,
) -> Transform:
    """Learn a LeGR transform for ``model`` without Lightning.

    Every budget in ``flops`` is checked first (reachable under the safeguard); the search prunes
    candidates to ``search_flops``: by default the smallest budget, as in the paper; a list averages
    the fitness over several. ``fitness(pruned_model) -> float`` is yours: validation loss, possibly
    after a few fine-tune steps; lower is better. ``kind="params"`` makes the budgets fractions of the
    parameters instead of the FLOPs (any kind of :data:`~lightning_legr.core.cost.COST_KINDS`).

    Keyword arguments not listed go to :class:`~lightning_legr.core.pruner.LeGRPruner` (``criterion``,
    ``safeguard``, ``round_to``, ``ignored_layers``, ``customized_pruners``).

    Example::

        >>> import torch
        >>> from lightning_legr.models import cifar_resnet
        >>> model, x = cifar_resnet(20), torch.randn(8, 3, 32, 32)
        >>> fitness = lambda pruned: (pruned(x) - model(x)).pow(2).mean().item()
        >>> t = learn_transform(model, x[:1], [0.3, 0.6], fitness, generations=5, population=4, sample_size=2)
        >>> len(t.alpha) == len(t.groups)
        True
    """
    kind = check_kind(kind)
    budgets = check_budgets(flops, kind)
    pruner = LeGRPruner(model, example_inputs, **pruner_kwargs)
    for budget in budgets:
        pruner.select(**{kind: budget})
    search = LeGRSearch(
        pruner, fitness, min(budgets) if search_flops is None else search_flops, state_path, kind=kind,
        generations=generations, population=population,
        sample_size=sample_size, mutation_rate=mutation_rate, sigma=sigma, seed=seed,
    )
    return search.run(on_generation)
