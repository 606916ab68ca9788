"""LeGRPruner: structure, scores, cost models and selection of one model, built once and reused."""

from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from lightning_legr.core.criteria import Criterion, get_criterion
from lightning_legr.core.cost import COST_KINDS, LayerCost, check_kind, cost_factory
from lightning_legr.core.errors import ConfigurationError
from lightning_legr.core.flops import calibrated_flop_model
from lightning_legr.core import latency as _latency  # noqa: F401 - registers the latency kind
from lightning_legr.core.selection import Selection, Selector, check_budget
from lightning_legr.core.structure import ExampleInputs, Structure, run_model
from lightning_legr.core.surgery import prune_copy
from lightning_legr.core.transform import Transform

__all__ = ["LeGRPruner", "prune"]


class LeGRPruner:
    """Prunes copies of one model to any budget (FLOPs, parameters, ...) under any transform, fast.

    Tracing, scoring and the FLOP model are done once here (another kind's cost model the first time
    a budget of that kind is asked for); :meth:`prune` then costs a selection (milliseconds) and the
    surgery on a deep copy, which is what a search evaluates hundreds of times.

    A budget is a fraction of the unpruned model's cost, of one kind: ``flops`` (multiply-accumulates
    counted by ptflops, the default: ``prune(0.5)``) or ``params`` (``prune(params=0.5)``); the kinds
    are those of :data:`lightning_legr.core.cost.COST_KINDS`.

    Args:
        model: the trained network. It is never modified.
        example_inputs: an input it runs on; FLOPs are counted for it (use batch 1).
        criterion: base importance, ``"l2"`` (squared L2 norm of each filter, the default),
            ``"l1"``, ``"bn"`` (BatchNorm scale) or a :class:`~lightning_legr.core.criteria.Criterion`.
        safeguard: share of every group that is always kept (at least one channel).
        round_to: keep every group's width a multiple of this, e.g. 8 for hardware efficiency.
        ignored_layers: modules (or names) whose channels must not be pruned.
        customized_pruners: torch-pruning pruners for custom layers, ``{LayerClass: pruner}``.
        cost_options: per kind, keyword arguments for its cost model's factory, e.g. the settings
            of a measured kind: ``{"latency": {...}}``.

    Example::

        >>> import torch
        >>> from lightning_legr.models import cifar_resnet
        >>> pruner = LeGRPruner(cifar_resnet(56), torch.randn(1, 3, 32, 32))
        >>> small = pruner.prune(0.5)
        >>> round(pruner.select(0.5).ratio, 3)
        0.5
        >>> round(pruner.select(params=0.5).ratio, 3)
        0.5
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: ExampleInputs,
        criterion: Union[str, Criterion] = "l2",
        safeguard: float = 0.1,
        round_to: int = 1,
        ignored_layers: Sequence[Union[str, nn.Module]] = (),
        customized_pruners: Optional[Dict[Any, Any]] = None,
        cost_options: Optional[Dict[str, Dict[str, Any]]] = None,
    ) -> None:
        self.cost_options = _check_cost_options(cost_options)
        self.criterion = get_criterion(criterion)
        self.customized_pruners = customized_pruners
        self.structure = Structure(model, example_inputs, ignored_layers, customized_pruners)
        self.base_scores = [self.criterion(g).numpy() for g in self.structure.groups]
        self.flop_model = calibrated_flop_model(self.structure)
        self.total_flops = int(self.flop_model.total)
        self.selector = Selector(self.structure, self.flop_model, self.base_scores, safeguard, round_to)
        self.safeguard = safeguard
        self.round_to = round_to
        self.selectors: Dict[str, Selector] = {"flops": self.selector}
        _check_runs_pruned(self)

    @property
    def model(self) -> nn.Module:
        return self.structure.model

    @property
    def num_groups(self) -> int:
        return len(self.structure.groups)

    @property
    def min_flops(self) -> float:
        """The smallest fraction of the FLOPs the safeguard lets any ranking reach."""
        return float(self.selector.min_flops / self.total_flops)

    def min_budget(self, kind: str = "flops") -> float:
        """The smallest budget of ``kind`` the safeguard lets any ranking reach."""
        selector = self.selector_for(kind)
        return float(selector.min_cost / selector.cost_model.total)

    def cost_model(self, kind: str = "flops") -> LayerCost:
        """The cost model of ``kind`` (built on first use, from the registry and ``cost_options``)."""
        return self.selector_for(kind).cost_model

    def selector_for(self, kind: str = "flops") -> Selector:
        """The :class:`~lightning_legr.core.selection.Selector` for budgets of ``kind``."""
        if kind not in self.selectors:
            model = cost_factory(kind)(self.structure, **self.cost_options.get(kind, {}))
            self.use_cost(model)
        return self.selectors[kind]

    def use_cost(self, cost_model: LayerCost) -> None:
        """Select budgets of ``cost_model.kind`` against this (prebuilt) model from now on."""
        if not isinstance(cost_model, LayerCost):
            raise TypeError(f"`cost_model` must be a LayerCost, got {type(cost_model).__name__}")
        if cost_model.in_incidence.shape[1] != self.structure.num_channels:
            raise ValueError(f"this {cost_model.kind} model was built for another structure")
        self.selectors[cost_model.kind] = Selector(
            self.structure, cost_model, self.base_scores, self.safeguard, self.round_to
        )

    def score_spread(self) -> np.ndarray:
        """Per group, the standard deviation of its base scores: the scale of kappa's mutations."""
        return np.array([float(np.std(s)) for s in self.base_scores])

    def identity(self) -> Transform:
        """The untransformed global ranking (alpha = 1, kappa = 0)."""
        return Transform.identity(self.structure.signature(), self.criterion.name)

    def check_transform(self, transform: Optional[Transform]) -> Transform:
        if transform is None:
            return self.identity()
        if not isinstance(transform, Transform):
            raise TypeError(f"`transform` must be a lightning_legr.Transform or None, got {type(transform).__name__}")
        transform.check(self.structure.signature(), self.criterion.name)
        return transform

    def select(self, flops: Optional[float] = None, transform: Optional[Transform] = None, **budget: float) -> Selection:
        """Which channels LeGR-Pruning removes for a budget of ``flops`` x the original FLOPs, or of
        another kind given by name (``params=0.5``): exactly one budget."""
        kind, value = one_budget(flops, budget)
        transform = self.check_transform(transform)
        return self.selector_for(kind).select(transform.alpha, transform.kappa, value)

    def prune(self, flops: Optional[float] = None, transform: Optional[Transform] = None, **budget: float) -> nn.Module:
        """A physically pruned deep copy of the model at ``flops`` x the original FLOPs (or
        ``params=`` x the original parameters, ``latency=`` x the measured latency, ...).

        A measured kind (``latency``) is selected against its table, then corrected by measuring the
        pruned network end to end (:func:`~lightning_legr.core.latency.meet_latency`); how it landed
        is in the pruning record's last step, ``"fit"``.
        """
        kind, value = one_budget(flops, budget)
        model = self.cost_model(kind)
        if hasattr(model, "meet"):
            selection, fit = model.meet(self, value, transform)
            return self.apply(selection, {"fit": fit.to_dict()})
        return self.apply(self.select(transform=transform, **{kind: value}))

    def apply(self, selection: Selection, info: Optional[Dict[str, Any]] = None) -> nn.Module:
        """A physically pruned deep copy of the model, without the channels ``selection`` removes
        (``info``: more entries for its pruning record)."""
        extra = dict(info or {})
        if selection.kind == "flops":
            info = {"flops": selection.cost, "original_flops": selection.total_cost}
        else:
            removed = np.zeros(self.structure.num_channels)
            for g, channels in enumerate(selection.removed):
                removed[self.structure.offsets[g] + channels] = 1.0
            info = {
                "flops": self.flop_model.cost(removed), "original_flops": self.flop_model.total,
                "kind": selection.kind, selection.kind: selection.cost, f"original_{selection.kind}": selection.total_cost,
            }
        return prune_copy(self.structure, selection, self.customized_pruners, {**info, **extra})


def one_budget(flops: Optional[float] = None, budget: Optional[Dict[str, Any]] = None, default: Optional[float] = None):
    """``(kind, budget)`` from ``flops=`` and the other kinds' keywords: exactly one kind.

    Two kinds at once are refused here, before anything is computed.
    """
    given = {"flops": flops} if flops is not None else {}
    for name, value in (budget or {}).items():
        if name not in COST_KINDS:
            raise TypeError(
                f"unexpected keyword argument {name!r}: a budget is one of {', '.join(sorted(COST_KINDS))}"
            )
        if value is not None:
            given[name] = value
    if not given:
        given = {"flops": check_budget(default, "flops")}  # None: says what a budget is
    if len(given) > 1:
        raise ConfigurationError(
            f"Give one kind of budget, got {' and '.join(f'`{k}`' for k in given)}: a selection meets one budget;"
            " keep one of them (a learned transform can be applied to budgets of another kind later)."
        )
    (kind, value), = given.items()
    return check_kind(kind), check_budget(value, kind)


def _check_cost_options(cost_options: Optional[Dict[str, Dict[str, Any]]]) -> Dict[str, Dict[str, Any]]:
    if cost_options is None:
        return {}
    if not isinstance(cost_options, dict) or not all(isinstance(v, dict) for v in cost_options.values()):
        raise ConfigurationError(f"`cost_options` must be a dict {{kind: {{option: value}}}}, got {cost_options!r}")
    for kind in cost_options:
        check_kind(kind)
    return dict(cost_options)


def _check_runs_pruned(pruner: LeGRPruner) -> None:
    """Prune once to the smallest budget and run the example: a layer whose per-channel state
    torch-pruning does not prune (a buffer, a shape kept in an attribute) fails here, by name,
    instead of in the middle of a search."""
    small = pruner.prune(pruner.min_flops).eval()
    running: List[str] = []
    names = {m: n for n, m in small.named_modules()}

    def enter(module, args) -> None:
        running.append(names[module])

    def leave(module, args, output) -> None:  # not called when the forward raises: the failing layer stays
        running.pop()

    handles = [m.register_forward_pre_hook(enter) for m in small.modules()]
    handles += [m.register_forward_hook(leave) for m in small.modules()]
    try:
        with torch.no_grad():
            run_model(small, pruner.structure.example_inputs)
    except Exception as err:  # noqa: BLE001 - whatever fails, the message must say where
        where = running[-1] if running else ""
        layer = type(small.get_submodule(where)).__name__
        suspects = _unpruned_channel_state(pruner)
        culprits = ", ".join(f"{n!r} ({type(pruner.model.get_submodule(n)).__name__})" for n in suspects)
        advice = (
            f" {culprits} {'keep' if len(suspects) > 1 else 'keeps'} per-channel buffers that torch-pruning does"
            f" not prune: give {'them pruners' if len(suspects) > 1 else 'it a pruner'}"
            if suspects
            else f" {where or 'its forward'!r}, or a layer that feeds it, probably keeps per-channel state that"
            " torch-pruning does not prune (a buffer, or a shape in an attribute): give it a pruner"
        )
        raise ValueError(
            f"{type(pruner.model).__name__} does not run once pruned: {where or 'its forward'!r} ({layer}) fails"
            f" with {type(err).__name__}: {err}.{advice} (`customized_pruners`, see"
            " docs/supported-architectures.md) or add it to `ignored_layers`."
        ) from err
    finally:
        for handle in handles:
            handle.remove()


def _unpruned_channel_state(pruner: LeGRPruner) -> List[str]:
    """Modules outside every channel group holding a buffer as wide as a group that is pruned."""
    members = {m.target for g in pruner.structure.groups for m in g.members}
    widths = {int(w) for w in pruner.structure.widths}
    found = []
    for name, module in pruner.model.named_modules():
        if name in members:
            continue
        if any(d in widths for b in module.buffers(recurse=False) for d in b.shape[1:] or b.shape):
            found.append(name)
    return found


def prune(
    model: nn.Module,
    example_inputs: ExampleInputs,
    flops: Optional[float] = None,
    transform: Optional[Transform] = None,
    **kwargs: Any,
) -> nn.Module:
    """Prune a copy of ``model`` to ``flops`` x its FLOPs (default 0.5) with the global ranking
    ``transform``; or to another kind of budget: ``params=0.5`` keeps half the parameters.

    Exactly one budget: ``flops=`` and ``params=`` together are refused before anything is computed.
    With ``transform=None`` the ranking is the plain global one (alpha = 1, kappa = 0). The other
    keyword arguments go to :class:`LeGRPruner` (``criterion``, ``safeguard``, ``round_to``, ...).

    Example::

        >>> import torch
        >>> from lightning_legr.models import cifar_resnet
        >>> from lightning_legr.core.flops import count_flops, count_params
        >>> model, x = cifar_resnet(20), torch.randn(1, 3, 32, 32)
        >>> small = prune(model, x, flops=0.3)
        >>> 0.29 < count_flops(small, x) / count_flops(model, x) <= 0.3
        True
        >>> small = prune(model, x, params=0.5)
        >>> 0.495 < count_params(small) / count_params(model) <= 0.5
        True
    """
    budget = {kind: kwargs.pop(kind) for kind in list(kwargs) if kind in COST_KINDS}
    kind, value = one_budget(flops, budget, default=0.5)
    return LeGRPruner(model, example_inputs, **kwargs).prune(transform=transform, **{kind: value})
