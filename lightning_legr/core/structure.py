"""Structure: the prunable channel groups of a model, found once with torch-pruning's DependencyGraph."""

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from lightning_legr.core.errors import ConfigurationError
from lightning_legr.core.graph import ChannelPad, ExtendedGraph, default_pruners

__all__ = [
    "GroupMember", "ChannelGroup", "Structure", "ExampleInputs", "run_model", "map_tensors", "batch_of", "check_layer_list",
]

ExampleInputs = Union[torch.Tensor, Sequence[torch.Tensor], Dict[str, Any]]
FLOP_LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass
class GroupMember:
    """One module (or bare parameter) whose channels move with a group.

    ``positions[k]`` is a channel of ``target`` on the side given by ``role`` ("out": the output
    channels / filters, "in": the input channels); ``channels[k]`` is the group channel it belongs to.
    """

    target: str
    module: Any
    role: str
    positions: np.ndarray
    channels: np.ndarray
    handler: Any = field(repr=False)
    param_dim: Optional[int] = None

    @property
    def is_parameter(self) -> bool:
        return self.param_dim is not None


@dataclass
class ChannelGroup:
    """Channels that must be pruned together: one conv's filters, or all filters tied by residual
    adds, depthwise convolutions or concatenations.

    ``steps[k]`` are the group channels that go together (one row per step); a group whose
    channels feed a grouped convolution removes one channel at the same offset in every group.
    """

    index: int
    name: str
    width: int
    members: List[GroupMember]
    steps: Optional[np.ndarray] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.steps is None:
            self.steps = np.arange(self.width, dtype=np.int64)[:, None]

    @property
    def step(self) -> int:
        """Channels removed at a time: 1, or the group count of the grouped convolutions (and
        GroupNorms) it feeds, whose every group must lose the same in-group offsets."""
        return int(self.steps.shape[1])

    @property
    def producers(self) -> List[GroupMember]:
        """Members whose output channels (filters) are this group's channels: the filters we score."""
        return [m for m in self.members if m.role == "out" and isinstance(m.module, FLOP_LAYER_TYPES)]


def run_model(model: nn.Module, example_inputs: ExampleInputs) -> Any:
    """Call ``model`` the way torch-pruning does: a dict as keywords, a tuple/list as positionals."""
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def map_tensors(example_inputs: ExampleInputs, fn: Callable[[torch.Tensor], torch.Tensor]) -> ExampleInputs:
    """Apply ``fn`` to every tensor of an example input (a tensor, a tuple/list or a dict of them)."""
    if isinstance(example_inputs, torch.Tensor):
        return fn(example_inputs)
    if isinstance(example_inputs, dict):
        return {k: map_tensors(v, fn) for k, v in example_inputs.items()}
    if isinstance(example_inputs, (tuple, list)):
        return type(example_inputs)(map_tensors(v, fn) for v in example_inputs)
    return example_inputs


def batch_of(example_inputs: ExampleInputs, batch_size: int) -> ExampleInputs:
    """The example input repeated along the batch dimension to ``batch_size`` samples."""

    def grow(x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0:
            return x
        reps = -(-batch_size // x.shape[0])
        return x.repeat(reps, *([1] * (x.dim() - 1)))[:batch_size]

    return map_tensors(example_inputs, grow)


class Structure:
    """The prunable channel groups of ``model`` and the shapes that its FLOPs depend on.

    Built once per model: torch-pruning traces the model, groups coupled channels, and everything
    else (scoring, FLOP model, surgery) reads this object instead of tracing again. Zero-padded
    shortcuts written with ``F.pad`` or ``torch.cat`` are recognized while tracing
    (:mod:`lightning_legr.core.graph`). Every conv and linear layer is accounted for:
    :meth:`summary` and :meth:`layer_table` say which ones have prunable channels, and why not.

    Args:
        model: the network; it is traced, not modified (training flags are restored).
        example_inputs: an input the model runs on (a tensor, a tuple of positional tensors, or a
            dict of keyword tensors). Batch 1 is best: FLOPs are counted for this input.
        ignored_layers: modules (or their names) to leave alone: no channel of theirs is pruned.
        customized_pruners: torch-pruning pruners for custom layers, ``{LayerClass: pruner}``.

    Raises:
        ValueError: if the example input does not run through the model, a name in
            ``ignored_layers`` does not exist, the model has no convolution or nothing is
            prunable, or the trace maps channels in a way that cannot be right (the message names
            the module and the operation).

    Attributes:
        groups: the prunable :class:`ChannelGroup` s, in the network's order.
        skipped: ``(root module, reason)`` of every channel group left alone.
        channel_ops: the zero-padding calls recognized in ``forward`` (:class:`ChannelPad`).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: ExampleInputs,
        ignored_layers: Sequence[Union[str, nn.Module]] = (),
        customized_pruners: Optional[Dict[Any, Any]] = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.example_inputs = example_inputs
        self.customized_pruners = {**default_pruners(model), **(customized_pruners or {})}
        self.module_names = {m: n for n, m in model.named_modules()}
        self.ignored = self._resolve_ignored(ignored_layers)
        self.layer_positions = self._probe()
        self.graph = self._trace()
        self.channel_ops: List[ChannelPad] = list(self.graph.tracer.ops)
        self.groups, self.skipped, self._reasons = self._collect_groups()
        if not any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()):
            raise ConfigurationError(
                f"{type(model).__name__} has no prunable convolution (it has no convolution). LeGR prunes the"
                " filters of convolutions, and the hidden features of linear layers between them."
            )
        if not self.groups:
            reasons = "; ".join(f"{name}: {why}" for name, why in self.skipped[:5]) or "it has no convolution"
            raise ConfigurationError(
                f"{type(model).__name__} has no prunable convolution ({reasons}). LeGR prunes the filters of"
                " convolutions whose output channels do not reach the model's output."
            )
        self.offsets = np.cumsum([0] + [g.width for g in self.groups])

    # ------------------------------------------------------------------ construction
    def _resolve_ignored(self, ignored_layers) -> set:
        check_layer_list(ignored_layers)
        named = dict(self.model.named_modules())
        ignored = set()
        for layer in ignored_layers or ():
            if isinstance(layer, str):
                if layer not in named:
                    close = [n for n in named if n and layer.split(".")[-1] in n][:5]
                    raise ConfigurationError(
                        f"`ignored_layers` names {layer!r}, which is not a module of the model."
                        f" Names look like {close or list(named)[1:6]}."
                    )
                layer = named[layer]
            ignored.update(layer.modules())
        return ignored

    def _probe(self) -> Dict[str, Tuple[int, int]]:
        """Run the example once: check it runs, and record, per conv/linear layer, its input and
        output positions (elements per channel, summed over its calls)."""
        positions: Dict[str, list] = {}

        def hook(module, inputs, output):
            linear = isinstance(module, nn.Linear)
            c_in, c_out = (module.in_features, module.out_features) if linear else (module.in_channels, module.out_channels)
            total = positions.setdefault(self.module_names[module], [0, 0])
            total[0] += inputs[0].numel() // c_in
            total[1] += output.numel() // c_out

        handles = [m.register_forward_hook(hook) for m in self.model.modules() if isinstance(m, FLOP_LAYER_TYPES)]
        try:
            with _eval_mode(self.model), torch.no_grad():
                run_model(self.model, self.example_inputs)
        except Exception as err:  # noqa: BLE001 - any failure means the example does not fit the model
            raise ConfigurationError(
                f"The example input does not run through {type(self.model).__name__}: {type(err).__name__}: {err}."
                " Pass an input of the shape the model expects (e.g. torch.randn(1, 3, 32, 32) for CIFAR),"
                " a tuple for several positional inputs, or a dict of keyword inputs."
            ) from err
        finally:
            for h in handles:
                h.remove()
        return {k: tuple(v) for k, v in positions.items()}

    def _trace(self) -> ExtendedGraph:
        graph = ExtendedGraph()
        graph.IGNORED_LAYERS_IN_TRACING = _IdentityList()
        with _eval_mode(self.model), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return graph.build_dependency(
                self.model, self.example_inputs, forward_fn=run_model, customized_pruners=self.customized_pruners,
                verbose=False, output_transform=_mark_outputs,
            )

    def _collect_groups(self) -> Tuple[List[ChannelGroup], List[Tuple[str, str]], Dict[str, str]]:
        groups, skipped, reasons = [], [], {}
        roots = FLOP_LAYER_TYPES
        for tp_group in self.graph.get_all_groups(ignored_layers=_IdentityList(), root_module_types=roots):
            name = self.module_names[tp_group[0].dep.target.module]
            members = [m for m in (self._member(item) for item in tp_group) if m is not None]
            width = len(tp_group[0].idxs)
            why, steps = self._unprunable_reason(tp_group), None
            if why is None:
                self._check_positions(name, tp_group)  # a group left alone cannot break the model
                steps, why = _steps(width, members)
            if why:
                skipped.append((name, why))
                for m in members:
                    if m.role == "out" and isinstance(m.module, FLOP_LAYER_TYPES):
                        reasons.setdefault(m.target, why)
                continue
            groups.append(ChannelGroup(len(groups), name, width, members, steps))
        # torch-pruning yields groups from the output backwards; number them in the network's order
        position = {name: i for i, name in enumerate(self.module_names.values())}
        groups.sort(key=lambda g: min(position.get(m.target, len(position)) for m in g.producers))
        for index, group in enumerate(groups):
            group.index = index
        return groups, skipped, reasons

    def _unprunable_reason(self, tp_group) -> Optional[str]:
        regrouping = self.graph.tracer.regrouping
        for item in tp_group:
            node = item.dep.target
            module = node.module
            if isinstance(module, tp.ops._OutputOp):
                return "its channels are outputs of the model"
            if node.grad_fn in regrouping:
                op, host = regrouping[node.grad_fn]
                return (
                    f"its channels pass through {op} in {_where(host)}, which moves channels in a way the tracer"
                    " cannot follow"
                )
            if isinstance(module, nn.Parameter):
                name = self.graph._param_to_name[module]
                if self._owner(name) in self.ignored:
                    return f"it touches parameter {name!r} of an ignored layer"
            elif isinstance(module, nn.Module) and module in self.ignored:
                return f"it touches ignored layer {self.module_names.get(module)!r}"
            if isinstance(module, nn.modules.conv._ConvNd) and module.transposed and 1 < module.groups != module.out_channels:
                return f"grouped transposed convolution {self.module_names.get(module)!r} is not supported"
        return None

    def _check_positions(self, root: str, tp_group) -> None:
        """Refuse a group whose channels run past a member's width: the trace followed an op it
        does not understand (this is what would otherwise be an IndexError in the criterion)."""
        for item in tp_group:
            node = item.dep.target
            if not item.idxs or isinstance(node.module, (tp.ops._OutputOp, ChannelPad)):
                continue
            if isinstance(node.module, nn.Parameter):
                size = node.module.shape[node.pruning_dim]
            elif node.module in self.module_names:
                out = self.graph.is_out_channel_pruning_fn(item.dep.handler)
                size = (self.graph.get_out_channels if out else self.graph.get_in_channels)(node)
            else:
                continue
            if size is not None and max(item.idxs) >= size:
                via = item.dep.source
                if via.grad_fn in self.graph.tracer.origins:
                    op, host = self.graph.tracer.origins[via.grad_fn]
                    op = f"{op} in {_where(host)}"
                else:  # an op the tracer did not see called, e.g. a custom autograd function
                    op = via.grad_fn.name() if hasattr(via.grad_fn, "name") else str(via.module)
                target = self.module_names.get(node.module) or self.graph._param_to_name.get(node.module)
                raise ConfigurationError(
                    f"Cannot follow the channels of {root!r} in {type(self.model).__name__}: they reach"
                    f" {target!r} ({size} channels) as channel {max(item.idxs)}, through the output of {op}, an"
                    " operation torch-pruning maps channel for channel although it changes them. Add the layers"
                    " around it to `ignored_layers`, or give its module a pruner (`customized_pruners`)."
                )

    def _owner(self, parameter_name: str) -> nn.Module:
        return self.model.get_submodule(parameter_name.rpartition(".")[0])

    def _member(self, item) -> Optional[GroupMember]:
        dep, module = item.dep, item.dep.target.module
        positions = np.asarray(item.idxs, dtype=np.int64)
        channels = np.asarray(item.root_idxs, dtype=np.int64)
        role = "out" if self.graph.is_out_channel_pruning_fn(dep.handler) else "in"
        if isinstance(module, nn.Parameter):
            name = self.graph._param_to_name[module]
            return GroupMember(name, module, "out", positions, channels, dep.handler, dep.target.pruning_dim)
        if isinstance(module, ChannelPad):
            return GroupMember(module.target, module, role, positions, channels, dep.handler)
        if module not in self.module_names:  # torch-pruning's bookkeeping ops (add, cat, slice...)
            return None
        return GroupMember(self.module_names[module], module, role, positions, channels, dep.handler)

    # ------------------------------------------------------------------ queries
    @property
    def num_channels(self) -> int:
        return int(self.offsets[-1])

    @property
    def widths(self) -> np.ndarray:
        return np.array([g.width for g in self.groups], dtype=np.int64)

    def signature(self) -> List[Tuple[str, int]]:
        """(root module, width) of every group: what a transform file must match."""
        return [(g.name, g.width) for g in self.groups]

    def describe(self) -> str:
        """A short human-readable summary of the groups, for logs and error messages."""
        lines = [f"{len(self.groups)} prunable channel groups, {self.num_channels} channels:"]
        for g in self.groups:
            filters = ", ".join(m.target for m in g.producers[:4]) + (" ..." if len(g.producers) > 4 else "")
            steps = f", in steps of {g.step}" if g.step > 1 else ""
            lines.append(f"  [{g.index}] {g.name}: {g.width} channels{steps} (filters of {filters})")
        for name, why in self.skipped:
            lines.append(f"  not pruned: {name} ({why})")
        return "\n".join(lines)

    def layer_table(self) -> List[Dict[str, Any]]:
        """One JSON-able row per conv and linear layer of the model, in its order: whether its
        output channels (filters, features) are prunable, in which group, and if not, why.

        Example::

            >>> from lightning_legr.models import cifar_resnet
            >>> rows = Structure(cifar_resnet(20), torch.randn(1, 3, 32, 32)).layer_table()
            >>> rows[-1]["name"], rows[-1]["prunable"], rows[-1]["reason"]
            ('linear', False, 'its channels are outputs of the model')
        """
        group_of, inputs_of = {}, {}
        for g in self.groups:
            for m in g.members:
                if not isinstance(m.module, FLOP_LAYER_TYPES):
                    continue
                if m.role == "out":
                    group_of[m.target] = g
                else:
                    inputs_of.setdefault(m.target, set()).add(g.index)
        rows = []
        for name, module in self.model.named_modules():
            if not isinstance(module, FLOP_LAYER_TYPES):
                continue
            linear = isinstance(module, nn.Linear)
            group = group_of.get(name)
            rows.append({
                "name": name,
                "type": type(module).__name__,
                "in_channels": module.in_features if linear else module.in_channels,
                "out_channels": module.out_features if linear else module.out_channels,
                "groups": 1 if linear else module.groups,
                "prunable": group is not None,
                "group": None if group is None else group.index,
                "step": None if group is None else group.step,
                "input_groups": sorted(inputs_of.get(name, ())),
                "reason": None if group is not None else self._layer_reason(name, module),
            })
        return rows

    def _layer_reason(self, name: str, module: nn.Module) -> str:
        if module in self.ignored:
            return "ignored by the user (`ignored_layers`)"
        if name in self._reasons:
            return self._reasons[name]
        if module not in self.graph.module2node:
            return "not traced: the example input does not run it, or its output does not reach the model's outputs"
        return "its output channels are not in any channel group the tracer found"

    def summary(self) -> str:
        """A table of every conv and linear layer (prunable or not, and why), the zero-padding ops
        recognized, and the groups; for the start of a search and the run directory."""
        rows = self.layer_table()
        prunable = sum(r["prunable"] for r in rows)
        lines = [
            f"{type(self.model).__name__}: {len(self.groups)} prunable channel groups, {self.num_channels} channels;"
            f" {prunable} of {len(rows)} conv/linear layers have prunable output channels."
        ]
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            shape = f"{r['in_channels']} -> {r['out_channels']}" + (f", groups={r['groups']}" if r["groups"] > 1 else "")
            if r["prunable"]:
                state = f"prunable, group {r['group']}" + (f" (steps of {r['step']})" if r["step"] > 1 else "")
            else:
                state = f"not prunable: {r['reason']}"
            lines.append(f"  {r['name']:<{width}}  {r['type']:<15} {shape:<22} {state}")
        for op in self.channel_ops:
            lines.append(f"  recognized {op.label}: {op.in_channels} -> {op.out_channels} channels")
        return "\n".join(lines)


def _where(host: str) -> str:
    return f"{host!r}" if host else "the model's own forward"


def _channel_grouping(member: GroupMember) -> Optional[Tuple[int, int]]:
    """(groups, channels) of the side of ``member`` whose removals must take the same in-group
    offsets from every group: a grouped (not depthwise) convolution, or a GroupNorm."""
    module = member.module
    if isinstance(module, nn.modules.conv._ConvNd) and tp.ops.module2type(module) == tp.ops.OPTYPE.CONV:
        if module.groups > 1:
            return module.groups, module.in_channels if member.role == "in" else module.out_channels
    elif isinstance(module, nn.GroupNorm) and module.num_groups > 1:
        return module.num_groups, module.num_channels
    return None


def _steps(width: int, members: List[GroupMember]) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """The group's steps (rows of channels removed together), or the reason it has none.

    A grouped convolution's channel ``p`` sits at offset ``p % (channels // groups)`` of its
    group; torch-pruning's rule (``base_pruner.py`` repeats the chosen offsets for every group)
    removes an offset from all groups at once, so those channels are joined into one step.
    """
    parent = np.arange(width)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    grouped = []
    for member in members:
        grouping = _channel_grouping(member)
        if grouping is None:
            continue
        groups, size = grouping
        grouped.append((member.target, groups))
        at = np.full(size, -1, dtype=np.int64)
        at[member.positions] = member.channels
        offsets = at.reshape(groups, size // groups)  # row: a group; column: an in-group offset
        present = offsets >= 0
        if (present.any(0) & ~present.all(0)).any():
            return None, (
                f"{type(member.module).__name__} {member.target!r} (groups={groups}) has channels of this group and"
                " of others at the same in-group offset, so no offset can be removed from all its groups"
            )
        for column in offsets[:, present.all(0)].T:
            first = find(int(column[0]))
            for c in column[1:]:
                parent[find(int(c))] = first
    if not grouped:
        return None, None
    roots = np.array([find(c) for c in range(width)])
    steps = [np.flatnonzero(roots == r) for r in np.unique(roots)]
    names = ", ".join(f"{t!r} (groups={g})" for t, g in grouped[:3])
    if len({len(s) for s in steps}) > 1:
        return None, f"the grouped layers it feeds ({names}) tie its channels into steps of unequal size"
    if len(steps) == 1 and width > 1:
        return None, f"the grouped layers it feeds ({names}) tie all its {width} channels into one step"
    steps.sort(key=lambda s: s[0])
    return np.stack(steps).astype(np.int64), None


def check_layer_list(layers: Any, name: str = "ignored_layers") -> None:
    """Refuse a single string where a list of module names is meant (it would be read letter by letter)."""
    if isinstance(layers, str):
        raise ConfigurationError(
            f"`{name}` must be a list of module names, got the string {layers!r}; write [{layers!r}]."
        )


def _mark_outputs(outputs: Any) -> list:
    """End every output in an op of its own. torch-pruning marks the model's outputs only when they
    come from a non-module op; a conv whose output *is* the model's output would go unmarked and
    have its channels (the model's output channels) pruned."""
    return [o.clone() for o in _tensors(outputs)]


def _tensors(outputs: Any) -> List[torch.Tensor]:
    """The tensors of a model's output, in order; other values (None, ints, strings) are skipped
    (torch-pruning's own ``flatten_as_list`` fails on them)."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    if isinstance(outputs, (tuple, list)):
        return [t for o in outputs for t in _tensors(o)]
    return []


class _IdentityList(list):
    """A list whose ``in`` means ``is``.

    torch-pruning tests ``module in some_list``, which calls ``==``; torchmetrics' ``Metric`` overloads
    ``==`` (it builds a compositional metric, which is truthy), so a LightningModule holding a metric
    would make every layer look "ignored" and break the trace.
    """

    def __contains__(self, item: object) -> bool:
        return any(item is x for x in self)

    def __add__(self, other: list) -> "_IdentityList":
        return _IdentityList(list.__add__(self, other))


class _eval_mode:
    """Put a model in eval mode and restore every module's own flag afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc) -> None:
        for m, flag in self.flags:
            m.training = flag
