"""Structure: the prunable channel groups of a model, found once with torch-pruning's DependencyGraph."""

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode

from lightning_legr.core.errors import ConfigurationError
from lightning_legr.core.shortcuts import ZeroPadShortcut, ZeroPadShortcutPruner

__all__ = ["GroupMember", "ChannelGroup", "Structure", "ExampleInputs", "run_model", "map_tensors", "check_layer_list"]

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
    adds, depthwise convolutions or concatenations."""

    index: int
    name: str
    width: int
    members: List[GroupMember]

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


class _ChannelPadDetector(TorchFunctionMode):
    """Notes ``F.pad`` calls that add channels: torch-pruning would treat them as identity."""

    def __init__(self) -> None:
        super().__init__()
        self.found = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.pad and args:
            x, pad = args[0], args[1] if len(args) > 1 else kwargs.get("pad")
            pair = 2 * (x.dim() - 2)  # pads run from the last dim backwards; dim 1 is this pair
            if x.dim() >= 3 and len(pad) > pair + 1 and (pad[pair] or pad[pair + 1]):
                self.found.append((tuple(x.shape), tuple(pad)))
        return func(*args, **kwargs)


class Structure:
    """The prunable channel groups of ``model`` and the shapes that its FLOPs depend on.

    Built once per model: torch-pruning traces the model, groups coupled channels, and everything
    else (scoring, FLOP model, surgery) reads this object instead of tracing again.

    Args:
        model: the network; it is traced, not modified (training flags are restored).
        example_inputs: an input the model runs on (a tensor, a tuple of positional tensors, or a
            dict of keyword tensors). Batch 1 is best: FLOPs are counted for this input.
        ignored_layers: modules (or their names) to leave alone: no channel of theirs is pruned.
        customized_pruners: torch-pruning pruners for custom layers, ``{LayerClass: pruner}``.

    Raises:
        ValueError: if the example input does not run through the model, the model pads channels
            with ``F.pad``, a name in ``ignored_layers`` does not exist, or nothing is prunable.
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
        self.customized_pruners = {ZeroPadShortcut: ZeroPadShortcutPruner(), **(customized_pruners or {})}
        self.module_names = {m: n for n, m in model.named_modules()}
        self.ignored = self._resolve_ignored(ignored_layers)
        self.layer_positions = self._probe()
        self.graph = self._trace()
        self.groups, self.skipped = self._collect_groups()
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
        """Run the example once: check it runs, refuse channel padding, and record, per conv/linear
        layer, its input and output positions (elements per channel, summed over its calls)."""
        positions: Dict[str, list] = {}

        def hook(module, inputs, output):
            linear = isinstance(module, nn.Linear)
            c_in, c_out = (module.in_features, module.out_features) if linear else (module.in_channels, module.out_channels)
            total = positions.setdefault(self.module_names[module], [0, 0])
            total[0] += inputs[0].numel() // c_in
            total[1] += output.numel() // c_out

        handles = [m.register_forward_hook(hook) for m in self.model.modules() if isinstance(m, FLOP_LAYER_TYPES)]
        detector = _ChannelPadDetector()
        try:
            with _eval_mode(self.model), torch.no_grad(), detector:
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
        if detector.found:
            shape, pad = detector.found[0]
            raise ConfigurationError(
                f"The model pads channels with F.pad (input {shape}, pad {pad}), e.g. an option-A ResNet shortcut."
                " torch-pruning treats that as an identity and would break the shapes. Replace it with"
                " `lightning_legr.ZeroPadShortcut(in_channels, out_channels, stride)`, which computes the same"
                " thing and has the same state dict."
            )
        return {k: tuple(v) for k, v in positions.items()}

    def _trace(self) -> tp.DependencyGraph:
        graph = tp.DependencyGraph()
        graph.IGNORED_LAYERS_IN_TRACING = _IdentityList()
        with _eval_mode(self.model), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return graph.build_dependency(
                self.model, self.example_inputs, customized_pruners=self.customized_pruners, verbose=False,
                output_transform=_mark_outputs,
            )

    def _collect_groups(self) -> Tuple[List[ChannelGroup], List[Tuple[str, str]]]:
        groups, skipped = [], []
        roots = (nn.modules.conv._ConvNd,)
        for tp_group in self.graph.get_all_groups(ignored_layers=_IdentityList(), root_module_types=roots):
            root = tp_group[0].dep.target.module
            name = self.module_names[root]
            why = self._unprunable_reason(tp_group)
            if why:
                skipped.append((name, why))
                continue
            members = [m for m in (self._member(item) for item in tp_group) if m is not None]
            groups.append(ChannelGroup(len(groups), name, len(tp_group[0].idxs), members))
        # torch-pruning yields groups from the output backwards; number them in the network's order
        position = {name: i for i, name in enumerate(self.module_names.values())}
        groups.sort(key=lambda g: min(position.get(m.target, len(position)) for m in g.producers))
        for index, group in enumerate(groups):
            group.index = index
        return groups, skipped

    def _unprunable_reason(self, tp_group) -> Optional[str]:
        for item in tp_group:
            module = item.dep.target.module
            if isinstance(module, tp.ops._OutputOp):
                return "its channels are outputs of the model"
            if isinstance(module, nn.Parameter):
                name = self.graph._param_to_name[module]
                if self._owner(name) in self.ignored:
                    return f"it touches parameter {name!r} of an ignored layer"
            elif isinstance(module, nn.Module) and module in self.ignored:
                return f"it touches ignored layer {self.module_names.get(module)!r}"
            if isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups != module.out_channels:
                return f"grouped convolution {self.module_names.get(module)!r} is not supported"
        return None

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
            lines.append(f"  [{g.index}] {g.name}: {g.width} channels (filters of {filters})")
        for name, why in self.skipped:
            lines.append(f"  not pruned: {name} ({why})")
        return "\n".join(lines)


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
