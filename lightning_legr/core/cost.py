"""Cost models: what a selection costs (FLOPs, parameters, ...) as a function of the channels removed.

A cost model sees the network as its conv/linear layers (one row each, plus any rows a model adds,
e.g. the BatchNorms of a parameter count) and, per row, an ``in`` and an ``out`` width that shrink as
group channels are removed: ``in = in_full - in_incidence @ removed``, ``out = out_full -
out_incidence @ removed``. A model is then one vectorised function of those widths,
:meth:`LayerCost.layer_costs`, plus a ``constant`` for what no removal changes. Selection only asks
the four questions of :class:`LayerCost` (``total``, :meth:`~LayerCost.cost`,
:meth:`~LayerCost.prefix_costs`, :meth:`~LayerCost.marginal`), so any model selects channels.

Adding a kind of budget is one new class: subclass :class:`LayerCost`, override ``layer_costs`` (and
``marginal`` when a closed form is faster), and register a factory with :func:`register_cost`.
"""

from typing import Callable, Dict, List

import numpy as np
from torch import nn

from lightning_legr.core.errors import ConfigurationError
from lightning_legr.core.structure import Structure

__all__ = ["LayerCost", "BilinearCost", "COST_KINDS", "register_cost", "cost_factory", "check_kind", "is_depthwise",
           "channel_widths"]


class LayerCost:
    """The protocol every cost model follows, and the incidence bookkeeping they share.

    Attributes:
        kind: the budget kind this model measures (``"flops"``, ``"params"``, ...).
        layer_names: per row, the conv/linear layer (``Structure.layer_positions`` order); rows
            added by a subclass come after them.
        modules: per row, the module.
        positions: per conv/linear row, ``(input positions, output positions)``: elements per
            channel, summed over the layer's calls (its spatial size for a conv).
        in_full, out_full: per row, the unpruned ``in`` / ``out`` width. For a conv, ``in`` counts
            input channels *per conv group* (a grouped conv's weight sees ``in_channels / groups``),
            so a depthwise conv's ``in`` is 1 and does not shrink.
        in_incidence, out_incidence: ``(rows x group channels)``: how much each row's ``in`` / ``out``
            shrinks when that group channel is removed (more than 1 after a flatten into a linear
            layer, ``1 / groups`` on the per-group side of a grouped conv, 0 for a depthwise one).
        constant: cost that no removal changes.
        total: the unpruned cost.

    Subclasses set ``kind`` and override :meth:`layer_costs`; they may add rows with
    :meth:`_add_rows` before calling :meth:`_finish`, or override :meth:`marginal`.
    """

    kind = "cost"
    unit = "units"  # what the cost counts, for messages

    def __init__(self, structure: Structure) -> None:
        named = dict(structure.model.named_modules())
        self.layer_names: List[str] = list(structure.layer_positions)
        self.modules: List[nn.Module] = [named[n] for n in self.layer_names]
        self.positions = [tuple(structure.layer_positions[n]) for n in self.layer_names]
        row = {name: i for i, name in enumerate(self.layer_names)}
        n_layers = len(self.layer_names)
        self.in_full = np.zeros(n_layers)
        self.out_full = np.zeros(n_layers)
        for i, module in enumerate(self.modules):
            self.in_full[i], self.out_full[i] = _layer_widths(module)
        self.in_incidence = np.zeros((n_layers, structure.num_channels))
        self.out_incidence = np.zeros((n_layers, structure.num_channels))
        for group in structure.groups:
            for member in group.members:
                if member.target not in row:
                    continue
                weight = _per_group_share(member.module, member.role)
                matrix = self.out_incidence if member.role == "out" else self.in_incidence
                np.add.at(matrix[row[member.target]], structure.offsets[group.index] + member.channels, weight)
        self.constant = 0.0
        self.total = 0.0

    def _finish(self) -> None:
        """Set ``total`` once the rows and the constant are complete (subclasses call it last)."""
        self.total = self.cost(np.zeros(self.in_incidence.shape[1]))

    # ------------------------------------------------------------------ the protocol
    def layer_costs(self, inp: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Per-row cost at widths ``inp`` / ``out`` (arrays ``(..., rows)``), shape ``(..., rows)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement layer_costs(inp, out)")

    def widths(self, removed: np.ndarray):
        """Per-row ``(in, out)`` with ``removed`` (0/1 over all group channels) taken out."""
        return self.in_full - self.in_incidence @ removed, self.out_full - self.out_incidence @ removed

    def cost(self, removed: np.ndarray) -> float:
        """Cost with ``removed`` (a 0/1 vector over all group channels) taken out."""
        inp, out = self.widths(removed)
        return float(self.layer_costs(inp, out).sum(-1) + self.constant)

    def prefix_costs(self, cum_out: np.ndarray, cum_in: np.ndarray) -> np.ndarray:
        """Cost after each prefix of a removal order, given the cumulative incidence rows.

        ``cum_out[k]`` / ``cum_in[k]`` is the per-row width removed by the first ``k + 1`` units
        (shape ``(units, rows)``); returns one cost per prefix.
        """
        return self.layer_costs(self.in_full - cum_in, self.out_full - cum_out).sum(-1) + self.constant

    def marginal(self, removed: np.ndarray, units_in: np.ndarray, units_out: np.ndarray) -> np.ndarray:
        """Cost that putting back each unit would add (units given as ``(rows x units)`` incidence columns)."""
        inp, out = self.widths(removed)
        now = self.layer_costs(inp, out).sum(-1)
        back = self.layer_costs((inp[:, None] + units_in).T, (out[:, None] + units_out).T).sum(-1)
        return back - now

    # ------------------------------------------------------------------ for subclasses
    def _add_rows(self, names: List[str], modules: List[nn.Module], in_full, out_full, in_incidence, out_incidence) -> None:
        """Append rows (e.g. normalization layers) with their own widths and incidence."""
        self.layer_names += list(names)
        self.modules += list(modules)
        self.in_full = np.concatenate([self.in_full, np.asarray(in_full, dtype=np.float64)])
        self.out_full = np.concatenate([self.out_full, np.asarray(out_full, dtype=np.float64)])
        self.in_incidence = np.concatenate([self.in_incidence, np.asarray(in_incidence, dtype=np.float64)])
        self.out_incidence = np.concatenate([self.out_incidence, np.asarray(out_incidence, dtype=np.float64)])


class BilinearCost(LayerCost):
    """A cost ``a_L * in_L * out_L + b_L * out_L`` per row (FLOPs, parameters), with closed forms.

    Subclasses fill ``a`` and ``b`` (one entry per row) and call :meth:`_finish`.
    """

    def __init__(self, structure: Structure) -> None:
        super().__init__(structure)
        self.a = np.zeros(len(self.layer_names))
        self.b = np.zeros(len(self.layer_names))

    def layer_costs(self, inp: np.ndarray, out: np.ndarray) -> np.ndarray:
        return self.a * inp * out + self.b * out

    def cost(self, removed: np.ndarray) -> float:
        out = self.out_full - self.out_incidence @ removed
        inp = self.in_full - self.in_incidence @ removed
        return float(self.a @ (inp * out) + self.b @ out + self.constant)

    def prefix_costs(self, cum_out: np.ndarray, cum_in: np.ndarray) -> np.ndarray:
        out = self.out_full - cum_out
        inp = self.in_full - cum_in
        return (inp * out) @ self.a + out @ self.b + self.constant

    def marginal(self, removed: np.ndarray, units_in: np.ndarray, units_out: np.ndarray) -> np.ndarray:
        out = self.out_full - self.out_incidence @ removed
        inp = self.in_full - self.in_incidence @ removed
        return (
            (self.a * out) @ units_in
            + (self.a * inp + self.b) @ units_out
            + np.einsum("l,lu,lu->u", self.a, units_in, units_out)
        )

    def _add_rows(self, names, modules, in_full, out_full, in_incidence, out_incidence, a=None, b=None) -> None:
        super()._add_rows(names, modules, in_full, out_full, in_incidence, out_incidence)
        n = len(names)
        self.a = np.concatenate([self.a, np.zeros(n) if a is None else np.asarray(a, dtype=np.float64)])
        self.b = np.concatenate([self.b, np.zeros(n) if b is None else np.asarray(b, dtype=np.float64)])


def _layer_widths(module: nn.Module):
    """(in, out) of one conv/linear layer as its weight sees them: a conv's per-group side divided."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if module.transposed:
        return module.in_channels, module.out_channels // module.groups
    return module.in_channels // module.groups, module.out_channels


def _per_group_share(module: nn.Module, role: str) -> float:
    """How much removing one channel shrinks the layer's ``in`` / ``out`` width.

    A conv's weight counts input channels *per conv group*: a grouped conv loses ``1 / groups`` of
    an input channel per channel removed (whole steps remove one from every group), a depthwise
    conv none (its groups shrink with its channels).
    """
    if not isinstance(module, nn.modules.conv._ConvNd) or module.groups == 1:
        return 1.0
    per_group_side = "out" if module.transposed else "in"
    if role != per_group_side:
        return 1.0
    return 0.0 if is_depthwise(module) else 1.0 / module.groups


def is_depthwise(module: nn.Module) -> bool:
    """A convolution with one group per output channel (torch-pruning's depthwise: its input and output
    channels are one channel group, and its groups shrink with its channels)."""
    return isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups == module.out_channels


def channel_widths(module: nn.Module, inp: np.ndarray, out: np.ndarray):
    """The layer's (input, output) *channels* from a row's ``in`` / ``out`` widths, which count a conv's
    per-group side divided by its groups (``in_channels / groups``; 1 for a depthwise conv, whose input
    channels follow its output channels)."""
    if not isinstance(module, nn.modules.conv._ConvNd) or module.groups == 1:
        return inp, out
    per_group = module.in_channels // module.groups  # input channels per group (1 for a plain depthwise conv)
    if module.transposed:  # weight (in, out / groups): the output side is the per-group one
        return (inp, inp / per_group) if is_depthwise(module) else (inp, out * module.groups)
    return (out * per_group, out) if is_depthwise(module) else (inp * module.groups, out)


# ---------------------------------------------------------------------- kinds of budget
CostFactory = Callable[..., LayerCost]
COST_KINDS: Dict[str, CostFactory] = {}


def register_cost(kind: str, factory: CostFactory) -> None:
    """Make ``kind`` a budget kind: ``factory(structure, **options) -> LayerCost``, calibrated.

    ``LeGRPruner`` builds a kind's model the first time a budget of that kind is asked for.
    """
    if not isinstance(kind, str) or not kind.isidentifier():
        raise ValueError(f"a budget kind is a plain name like 'flops', got {kind!r}")
    COST_KINDS[kind] = factory


def check_kind(kind: str) -> str:
    """Validate a budget kind against the registered ones."""
    if not isinstance(kind, str) or kind not in COST_KINDS:
        raise ConfigurationError(f"`kind` can be {', '.join(sorted(COST_KINDS))}, got {kind!r}")
    return kind


def cost_factory(kind: str) -> CostFactory:
    return COST_KINDS[check_kind(kind)]
