"""The package's one extension of torch-pruning: a dependency graph that also sees channel padding.

The main part recognizes zero-padded shortcuts as users write them. The problem it solves:
torch-pruning reads autograd's graph and treats every op it does not know as element-wise, so

- ``F.pad(x, (0, 0, 0, 0, p, p))`` (the option-A shortcut of the akamaster CIFAR ResNets) couples
  input channel ``c`` to output channel ``c`` instead of ``c + p``;
- ``torch.cat((x, torch.zeros(...)), 1)`` (the LeGR reference code's ``DownsampleA``), and
  ``x.mul(0)`` or ``torch.zeros_like(x)`` in place of the zeros, loses its offsets: the zeros
  have no autograd history, so the concatenation looks like one input that is twice as wide, and
  the channels past the input's width index nothing (an ``IndexError`` deep in the criterion).

The design, and why:

1. **Recognized while torch-pruning traces.** :class:`ExtendedGraph` runs torch-pruning's own
   example forward under a ``TorchFunctionMode`` (``_Tracer``) that sees every ``F.pad`` and
   ``torch.cat`` call and which module makes it (its *host*, the innermost module running). A
   call that places one feature map among constant channels is computed by ``_Place``, an
   autograd function whose node has exactly that feature map as input, and the node is declared
   to be a :class:`ChannelPad` before torch-pruning walks the graph (the one overridden method,
   ``_trace_computational_graph``, fills the same grad_fn-to-module map torch-pruning fills with
   its forward hooks). A ``ChannelPad`` is pruned like ``ZeroPadShortcut``: input and output
   sides by different functions (:class:`PlacementPruner`), so the two stages keep their own
   channel groups and the mapping follows. Zeros are recognized by where they come from
   (``torch.zeros``, ``zeros_like``, ``new_zeros``, ``full(.., 0)``, a multiplication by 0, and
   what those become through ``.to()``-like calls) or, for tensors without autograd history
   such as a zero buffer, by value. Nothing in the user's model changes.
2. **Replayed after pruning.** The user's code still pads with the constants it was built with
   (``planes // 4``) or appends zeros to whatever it gets, so the pruned copy would compute the
   wrong width. Every recognized call gets, in the pruned copy, a forward pre-hook and hook pair
   on its host (``_HostOps``) that run the host's forward under a mode (``_Replay``) which
   replaces the call, identified by its place among the host's ``F.pad``/``torch.cat`` calls, by
   the pruned placement. All of them, pruned or not, so that a call is never seen by an outer
   host, exactly as when it was traced. The pruning record stores each call's description, so
   ``restore`` installs the same hooks on a freshly built model without tracing, and a pruned
   model can be traced and pruned again (the replayed calls report themselves to the tracer).
3. **The rest of what tracing misses.** Hand-written LayerNorms (ConvNeXt's, with
   ``normalized_shape`` beside ``weight``) get :class:`LayerNormLikePruner`; ops that move
   channels where torch-pruning maps them one to one (channel and pixel shuffles, a transpose of a
   channel axis split by a view) are noted in ``tracer.regrouping``, and every op's autograd node
   in ``tracer.origins`` with its module, so that ``Structure`` can say which op and module a
   refused group goes through.

The replay is Python (forward hooks and a ``TorchFunctionMode``): TorchScript cannot export such a
pruned model (write the shortcut as a module, e.g. ``ZeroPadShortcut``), while ``torch.export`` in
non-strict mode runs the hooks and records the pruned placement, so ONNX export
(``lightning_legr.core.export``) works with either form.

Why not FX or a rewritten model: ``torch.fx`` cannot trace data-dependent code such as
``self.out_channels - x.size(1)`` in ``DownsampleA``, and would hand back a ``GraphModule``
instead of the user's class, which their checkpoints and ``restore`` expect. Why not rewrite
torch-pruning's graph after it is built: its nodes, dependencies and index mappings would all
have to be rebuilt; the grad_fn-to-module map is the single place where it decides what an op is.
"""

import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from torch_pruning.pruner.function import BasePruningFunc

from lightning_legr.core.errors import ConfigurationError
from lightning_legr.core.shortcuts import PlacementPruner, ZeroPadShortcut, _Placement

__all__ = [
    "ChannelPad",
    "ExtendedGraph",
    "LayerNormLikePruner",
    "default_pruners",
    "install_channel_op",
    "installed_channel_op",
    "is_channel_op",
]

_PAD = {F.pad}
_CAT = {torch.cat, torch.concat, torch.concatenate}
_ZEROS = {torch.zeros, torch.zeros_like, torch.Tensor.new_zeros, torch.Tensor.zero_}
_FULL = {torch.full: 1, torch.full_like: 1, torch.Tensor.new_full: 2, torch.Tensor.fill_: 1}  # where the value is
_MUL = {torch.mul, torch.Tensor.mul, torch.Tensor.mul_, torch.multiply, torch.Tensor.__mul__, torch.Tensor.__rmul__}
_RESHAPE = {torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.Tensor.unflatten, torch.unflatten}
_PERMUTE = {torch.Tensor.transpose, torch.transpose, torch.Tensor.permute, torch.permute, torch.Tensor.swapaxes,
            torch.swapaxes, torch.Tensor.movedim, torch.movedim}
_REGROUP = {torch.channel_shuffle, torch.native_channel_shuffle, F.pixel_shuffle, F.pixel_unshuffle,
            torch.pixel_shuffle, torch.pixel_unshuffle}
_NAMES = {F.pad: "F.pad", torch.cat: "torch.cat", torch.concat: "torch.concat", torch.concatenate: "torch.concatenate"}
_STATE_ATTR = "_legr_channel_ops"  # where a host module keeps its replayed ops (not in its state dict)
_TRACERS: List["_Tracer"] = []  # the tracers now running, innermost last


# ---------------------------------------------------------------------------------------- placement
class _Place(torch.autograd.Function):
    """``out[:, dst] = x[:, src]``, every other output channel ``fill``; one autograd node whose
    only input is ``x``, which is what torch-pruning must see."""

    @staticmethod
    def forward(ctx, x, src, dst, out_channels, fill):
        ctx.save_for_backward(src, dst)
        ctx.in_channels = x.shape[1]
        out = x.new_full((x.shape[0], out_channels) + tuple(x.shape[2:]), fill)
        return out.index_copy(1, dst, x.index_select(1, src))

    @staticmethod
    def backward(ctx, grad):
        src, dst = ctx.saved_tensors
        zeros = grad.new_zeros((grad.shape[0], ctx.in_channels) + tuple(grad.shape[2:]))
        return zeros.index_copy(1, src, grad.index_select(1, dst)), None, None, None, None


class ChannelPad(_Placement):
    """A channel-padding call found in a model's ``forward``, as torch-pruning's graph sees it.

    Not a module of the model: it stands for the call ``index`` (counting the ``F.pad`` and
    ``torch.cat`` calls of one ``forward`` of module ``host``) in the dependency graph and, once the
    model is pruned, replaces that call with the pruned mapping.

    Args:
        kind: ``"pad"`` (``F.pad`` on the channel axis) or ``"cat"`` (``torch.cat`` with zeros).
        host: name of the module whose ``forward`` makes the call (``""``: the model itself).
        index: its place among that forward's ``F.pad`` / ``torch.cat`` calls.
        in_channels, out_channels: channels of the feature map and of the result.
        src, dst: input channel ``src[k]`` lands in output channel ``dst[k]``.
        fill: value of the other output channels.
        position: for ``"cat"``, which of the concatenated tensors is the feature map.
    """

    def __init__(self, kind: str, host: str, index: int, in_channels: int, out_channels: int,
                 src: Sequence[int], dst: Sequence[int], fill: float = 0.0, position: int = 0) -> None:
        super().__init__()
        self.kind, self.host, self.index, self.position = kind, host, int(index), int(position)
        self.in_channels, self.out_channels, self.fill = int(in_channels), int(out_channels), float(fill)
        self.src = torch.as_tensor(list(src), dtype=torch.long)
        self.dst = torch.as_tensor(list(dst), dtype=torch.long)

    @property
    def target(self) -> str:
        """Its name in channel groups and pruning records: ``host@index``."""
        return f"{self.host}@{self.index}"

    @property
    def label(self) -> str:
        what = "F.pad on the channel axis" if self.kind == "pad" else "torch.cat with zero channels"
        return f"{what} in {self.host or 'the model'}'s forward (call {self.index})"

    def describe(self) -> Dict[str, Any]:
        """Plain data (for the pruning record) from which :meth:`from_description` rebuilds it."""
        return {
            "kind": self.kind, "host": self.host, "index": self.index, "position": self.position,
            "in_channels": self.in_channels, "out_channels": self.out_channels, "fill": self.fill,
            "src": self.src.tolist(), "dst": self.dst.tolist(),
        }

    @classmethod
    def from_description(cls, description: Dict[str, Any]) -> "ChannelPad":
        return cls(**description)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.src.device != x.device:  # not a module of the model: model.to() does not move it
            self.src, self.dst = self.src.to(x.device), self.dst.to(x.device)
        return _Place.apply(x, self.src, self.dst, self.out_channels, self.fill)

    def replay(self, func, args, kwargs) -> torch.Tensor:
        """Compute the intercepted call ``func(*args, **kwargs)`` with this (pruned) mapping."""
        if (self.kind == "pad") != (func in _PAD):
            raise RuntimeError(
                f"Expected {self.label}, but call {self.index} of that forward is {_NAMES.get(func, func)}: the"
                " model takes another path through its forward than when it was traced for pruning."
            )
        x = _pad_spatially(args, kwargs) if self.kind == "pad" else _cat_inputs(args, kwargs)[self.position]
        if x.shape[1] != self.in_channels:
            raise RuntimeError(
                f"{self.label} got {x.shape[1]} channels; the pruned model expects {self.in_channels} there."
            )
        with torch._C.DisableTorchFunction():  # its own ops are no calls of the user's forward
            return self(x)

    def extra_repr(self) -> str:
        return f"{self.kind}, {self.in_channels} -> {self.out_channels}, host={self.host!r}, index={self.index}"


class LayerNormLikePruner(BasePruningFunc):
    """torch-pruning handler for a hand-written LayerNorm: a module with ``normalized_shape`` and a
    per-channel ``weight`` (and ``bias``), such as ConvNeXt's ``LayerNorm(data_format=...)``.

    torch-pruning would prune its weight and bias as bare parameters and leave
    ``normalized_shape`` as it was, so the pruned model fails in ``F.layer_norm``.
    """

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = sorted(set(range(layer.weight.shape[0])) - set(idxs))
        for name in ("weight", "bias"):
            param = getattr(layer, name, None)
            if isinstance(param, nn.Parameter):
                setattr(layer, name, self._prune_parameter_and_grad(param, keep, 0))
        layer.normalized_shape = type(layer.normalized_shape)([len(keep)])
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.weight.shape[0]

    get_in_channels = get_out_channels


_KNOWN = tuple(tp.ops.type2class(t) for t in tp.pruner.function.PrunerBox) + (_Placement,)


def _is_layer_norm_like(module: nn.Module) -> bool:
    shape = getattr(module, "normalized_shape", None)
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    return (
        not isinstance(module, _KNOWN)
        and isinstance(shape, (tuple, list)) and len(shape) == 1
        and isinstance(weight, nn.Parameter) and tuple(weight.shape) == tuple(shape)
        and (bias is None or (isinstance(bias, nn.Parameter) and bias.shape == weight.shape))
        and all(p is weight or p is bias for p in module.parameters(recurse=False))
    )


def default_pruners(model: Optional[nn.Module] = None) -> Dict[type, BasePruningFunc]:
    """The pruners every dependency graph of this package registers: zero-padding placements, and
    the hand-written LayerNorms found in ``model``."""
    pruners: Dict[type, BasePruningFunc] = {ZeroPadShortcut: PlacementPruner(), ChannelPad: PlacementPruner()}
    for module in model.modules() if model is not None else ():
        if _is_layer_norm_like(module):
            pruners.setdefault(type(module), LayerNormLikePruner())
    return pruners


# ----------------------------------------------------------------------------------- call arguments
def _pad_arguments(args, kwargs) -> Tuple[torch.Tensor, List[int], str, float]:
    x = args[0] if args else kwargs["input"]
    pad = args[1] if len(args) > 1 else kwargs["pad"]
    mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
    value = args[3] if len(args) > 3 else kwargs.get("value", None)
    return x, [int(p) for p in pad], mode or "constant", float(value or 0.0)


def _channel_pair(x: torch.Tensor, pad: List[int]) -> Optional[Tuple[int, int]]:
    """(before, after) padding of dim 1, or None if ``pad`` leaves the channels alone."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        return None
    k = 2 * (x.dim() - 2)  # pads run from the last dim backwards; dim 1 is this pair
    if len(pad) < k + 2 or (pad[k] == 0 and pad[k + 1] == 0):
        return None
    return pad[k], pad[k + 1]


def _pad_spatially(args, kwargs) -> torch.Tensor:
    """The input of a channel ``F.pad`` with its other pads applied."""
    x, pad, mode, value = _pad_arguments(args, kwargs)
    k = 2 * (x.dim() - 2)
    spatial = pad[:k]
    if any(spatial):
        with torch._C.DisableTorchFunction():
            x = F.pad(x, spatial, mode=mode, value=value)
    return x


def _cat_inputs(args, kwargs) -> List[torch.Tensor]:
    return list(args[0] if args else kwargs["tensors"])


def _cat_dim(args, kwargs, ndim: int) -> int:
    dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
    return dim + ndim if dim < 0 else dim


# ------------------------------------------------------------------------------------------ tracing
class _Frame:
    """A module's forward, running: its name and the F.pad / torch.cat calls counted so far."""

    __slots__ = ("name", "calls")

    def __init__(self, name: str) -> None:
        self.name, self.calls = name, 0


class _Tracer(TorchFunctionMode):
    """Watches one forward pass: channel pads become :class:`ChannelPad` nodes, and every op's
    autograd node is noted with the module that ran it, for error messages.

    ``calls`` of a frame counts the ``F.pad`` / ``torch.cat`` calls made during that module's
    forward, except those a deeper module replaces (the channel ops it hosts), exactly as the
    replaying mode of a pruned host counts them.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.names = {m: n for n, m in model.named_modules()}
        self.frames: List[_Frame] = []
        self.ops: List[ChannelPad] = []
        self.grad_fns: Dict[Any, ChannelPad] = {}
        self.origins: Dict[Any, Tuple[str, str]] = {}  # grad_fn -> (op, module name)
        self.regrouping: Dict[Any, Tuple[str, str]] = {}  # grad_fns of ops that permute channels
        self._zeros: Dict[int, torch.Tensor] = {}
        self._split: Dict[int, Tuple[torch.Tensor, int]] = {}  # views that split dim 1 into n dims

    def run(self, model: nn.Module, call):
        """``call()`` with the tracer watching ``model``'s modules."""
        handles = []
        for module in model.modules():
            handles.append(module.register_forward_pre_hook(self._enter))
            handles.append(module.register_forward_hook(self._exit, always_call=True))
        _TRACERS.append(self)
        try:
            with self:
                return call()
        finally:
            _TRACERS.remove(self)
            for handle in handles:
                handle.remove()
            self._zeros.clear()
            self._split.clear()

    def _enter(self, module, args) -> None:
        self.frames.append(_Frame(self.names.get(module, type(module).__name__)))

    def _exit(self, module, args, output) -> None:
        self.frames.pop()

    @property
    def host(self) -> str:
        return self.frames[-1].name if self.frames else ""

    def report(self, op: ChannelPad, out: torch.Tensor) -> None:
        """An installed op (a pruned host) replaced a call: note it as if it had been seen."""
        if self.frames:
            self.frames[-1].calls += 1
        self._note_op(op, out)

    def _note_op(self, op: ChannelPad, out: torch.Tensor) -> None:
        if all(o is not op for o in self.ops):
            self.ops.append(op)
        if out.grad_fn is not None:
            self.grad_fns[out.grad_fn] = op

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _PAD or func in _CAT:
            op = self._recognize(func, args, kwargs)
            if op is None:
                for frame in self.frames:
                    frame.calls += 1
                out = func(*args, **kwargs)
                if func in _CAT and self._joins_a_constant(args, kwargs) and out.grad_fn is not None:
                    # torch-pruning sees only the inputs with autograd history and loses every offset
                    self.regrouping[out.grad_fn] = (f"{_NAMES[func]} with a constant tensor", self.host)
            else:
                if self.frames:
                    self.frames[-1].calls += 1
                with torch._C.DisableTorchFunction():
                    out = op.replay(func, args, kwargs)
                self._note_op(op, out)
        else:
            out = func(*args, **kwargs)
        self._note(func, args, kwargs, out)
        return out

    # ---------------------------------------------------------------- channel ops
    def _recognize(self, func, args, kwargs) -> Optional[ChannelPad]:
        index = self.frames[-1].calls if self.frames else 0
        if func in _PAD:
            x, pad, mode, value = _pad_arguments(args, kwargs)
            pair = _channel_pair(x, pad)
            if pair is None:
                return None
            if mode != "constant" or len(pad) > 2 * (x.dim() - 1):
                raise ConfigurationError(
                    f"{_NAMES[func]}(pad={tuple(pad)}, mode={mode!r}) in {self.host or 'the model'}'s forward pads"
                    " the channel axis" + (" in a non-constant mode" if mode != "constant" else " and the batch axis")
                    + ", which LeGR cannot prune through. Add the layers around it to `ignored_layers`."
                )
            before, _ = pair
            channels = x.shape[1]
            out_channels = channels + sum(pair)
            src = [c for c in range(channels) if 0 <= c + before < out_channels]
            return ChannelPad("pad", self.host, index, channels, out_channels, src, [c + before for c in src], value)
        tensors = _cat_inputs(args, kwargs)
        if not tensors or not all(isinstance(t, torch.Tensor) and t.dim() >= 2 for t in tensors):
            return None
        if _cat_dim(args, kwargs, tensors[0].dim()) != 1:
            return None
        zero = [self._is_zero(t) for t in tensors]
        maps = [i for i, z in enumerate(zero) if not z]
        if not any(zero) or not maps:
            return None
        if len(maps) > 1:
            raise ConfigurationError(
                f"{_NAMES[func]} in {self.host or 'the model'}'s forward concatenates {len(maps)} feature maps with"
                " zero channels, which LeGR cannot prune through (one feature map among zeros is supported)."
                " Add the layers that produce them to `ignored_layers`."
            )
        (position,) = maps
        offset = sum(t.shape[1] for t in tensors[:position])
        channels = tensors[position].shape[1]
        out_channels = sum(t.shape[1] for t in tensors)
        src = range(channels)
        return ChannelPad("cat", self.host, index, channels, out_channels, src, [c + offset for c in src], 0.0, position)

    def _joins_a_constant(self, args, kwargs) -> bool:
        tensors = [t for t in _cat_inputs(args, kwargs) if isinstance(t, torch.Tensor)]
        if not tensors or tensors[0].dim() < 2 or _cat_dim(args, kwargs, tensors[0].dim()) != 1:
            return False
        constant = [t.grad_fn is None and not t.requires_grad for t in tensors]
        return any(constant) and not all(constant)

    def _is_zero(self, t: torch.Tensor) -> bool:
        if id(t) in self._zeros:
            return not bool(t.any())
        # no autograd history: a constant, e.g. a zero buffer; a feature map always has one here
        return t.grad_fn is None and not t.requires_grad and t.numel() > 0 and not bool(t.any())

    # ---------------------------------------------------------------- bookkeeping
    def _note(self, func, args, kwargs, out) -> None:
        if not isinstance(out, torch.Tensor):
            return
        if out.grad_fn is not None and out.grad_fn not in self.origins:
            self.origins[out.grad_fn] = (_NAMES.get(func, getattr(func, "__name__", str(func))), self.host)
        if self._makes_zeros(func, args, kwargs, out):
            self._zeros[id(out)] = out
        self._note_regrouping(func, args, out)

    def _makes_zeros(self, func, args, kwargs, out) -> bool:
        if func in _ZEROS:
            return True
        if func in _FULL:
            fill = args[_FULL[func]] if len(args) > _FULL[func] else kwargs.get("fill_value", kwargs.get("value"))
            return _is_zero_number(fill)
        if func in _MUL:
            return any(_is_zero_number(a) for a in list(args) + list(kwargs.values()))
        tensors = [a for a in _flat(args) if isinstance(a, torch.Tensor)]
        # zeros converted (.to, .type_as, .expand, ...) are zeros still
        return bool(tensors) and all(id(t) in self._zeros for t in tensors) and not bool(out.any())

    def _note_regrouping(self, func, args, out) -> None:
        """Remember ops that move channels to other indices in a way torch-pruning maps as the
        identity: channel/pixel shuffles, and a transpose of a channel axis split by a view."""
        if func in _REGROUP and out.grad_fn is not None:
            self.regrouping[out.grad_fn] = (getattr(func, "__name__", str(func)), self.host)
            return
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if x is None:
            return
        if func in _RESHAPE and x.dim() >= 3 and out.dim() > x.dim():
            split = out.dim() - x.dim() + 1  # dim 1 of x became dims 1..split of out
            if tuple(out.shape[1 + split:]) == tuple(x.shape[2:]) and math.prod(out.shape[1:1 + split]) == x.shape[1]:
                self._split[id(out)] = (out, split)
        elif func in _PERMUTE and id(x) in self._split and out.grad_fn is not None:
            _, split = self._split[id(x)]
            if _moves_within(func, args, x.dim(), range(1, 1 + split)):
                self.regrouping[out.grad_fn] = (f"{getattr(func, '__name__', func)} of a split channel axis", self.host)


def _is_zero_number(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and value.grad_fn is None and float(value) == 0.0
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0


def _flat(values: Iterable) -> List[Any]:
    flat = []
    for v in values:
        flat.extend(v) if isinstance(v, (list, tuple)) else flat.append(v)
    return flat


def _moves_within(func, args, ndim: int, dims: range) -> bool:
    """Whether a transpose/permute call reorders any of ``dims`` among themselves."""
    rest = [a for a in args[1:]]
    if len(rest) == 1 and isinstance(rest[0], (list, tuple, torch.Size)):
        rest = list(rest[0])
    rest = [int(r) % ndim for r in rest]
    if func in (torch.Tensor.permute, torch.permute):
        order = rest
    else:  # transpose / swapaxes / movedim of two dims
        order = list(range(ndim))
        if len(rest) == 2:
            a, b = rest
            if func in (torch.Tensor.movedim, torch.movedim):
                order.insert(b, order.pop(a))
            else:
                order[a], order[b] = order[b], order[a]
    return [order[d] for d in dims] != list(dims)


class ExtendedGraph(tp.DependencyGraph):
    """torch-pruning's ``DependencyGraph`` that also sees channel padding (see the module docstring).

    After :meth:`build_dependency`, ``tracer.ops`` lists the :class:`ChannelPad` ops found,
    ``tracer.origins`` names the op and module behind every autograd node, and
    ``tracer.regrouping`` the nodes of ops whose channel mapping torch-pruning cannot follow.
    """

    def build_dependency(self, model: nn.Module, example_inputs: Any, forward_fn=None, customized_pruners=None,
                         **kwargs: Any) -> "ExtendedGraph":
        self.tracer = _Tracer(model)
        if forward_fn is None:
            raise TypeError("ExtendedGraph.build_dependency needs forward_fn(model, example_inputs)")

        def traced(m, inputs):
            return self.tracer.run(m, lambda: forward_fn(m, inputs))

        pruners = {**default_pruners(model), **(customized_pruners or {})}
        return super().build_dependency(
            model, example_inputs, forward_fn=traced, customized_pruners=pruners, **kwargs
        )

    def _trace_computational_graph(self, module2node, output, gradfn2module, reused, visited=set()):  # noqa: B006
        for grad_fn, op in self.tracer.grad_fns.items():
            gradfn2module.setdefault(grad_fn, op)
        return super()._trace_computational_graph(module2node, output, gradfn2module, reused, visited)


# ---------------------------------------------------------------------------- replay in a pruned model
class _Replay(TorchFunctionMode):
    """Active during a host's forward: replaces its channel-pad calls with their pruned mapping."""

    def __init__(self, state: "_HostOps") -> None:
        super().__init__()
        self.state = state
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _PAD or func in _CAT:
            op = self.state.ops.get(self.calls)
            self.calls += 1
            if op is not None:
                out = op.replay(func, args, kwargs)
                if _TRACERS:
                    _TRACERS[-1].report(op, out)
                return out
        return func(*args, **kwargs)


class _HostOps:
    """The replayed channel ops of one host module (kept in its ``__dict__``, not its state dict)."""

    def __init__(self) -> None:
        self.ops: Dict[int, ChannelPad] = {}
        self.active: List[_Replay] = []

    def __getstate__(self) -> Dict[str, Any]:
        return {"ops": self.ops}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.ops, self.active = state["ops"], []


class _EnterHost:
    def __init__(self, state: _HostOps) -> None:
        self.state = state

    def __call__(self, module, args) -> None:
        mode = _Replay(self.state)
        mode.__enter__()
        self.state.active.append(mode)


class _ExitHost(_EnterHost):
    def __call__(self, module, args, output) -> None:
        self.state.active.pop().__exit__(None, None, None)


def is_channel_op(target: str) -> bool:
    """Whether a group member / record target names a :class:`ChannelPad` (``host@index``)."""
    return "@" in target


def installed_channel_op(model: nn.Module, target: str) -> Optional[ChannelPad]:
    """The op replayed in ``model`` for ``target``, or None."""
    host, _, index = target.rpartition("@")
    state = _host(model, target, host).__dict__.get(_STATE_ATTR)
    return state.ops.get(int(index)) if state is not None else None


def install_channel_op(model: nn.Module, description: Dict[str, Any]) -> ChannelPad:
    """Make ``model`` replay the op of ``description`` (once; later calls return the installed op)."""
    op = ChannelPad.from_description(description)
    host = _host(model, op.target, op.host)
    state = host.__dict__.get(_STATE_ATTR)
    if state is None:
        state = host.__dict__[_STATE_ATTR] = _HostOps()
        host.register_forward_pre_hook(_EnterHost(state))
        host.register_forward_hook(_ExitHost(state), always_call=True)
    installed = state.ops.get(op.index)
    if installed is None:
        state.ops[op.index] = installed = op
    elif (installed.in_channels, installed.out_channels) != (op.in_channels, op.out_channels):
        raise ConfigurationError(
            f"The pruning record expects {op.label} to map {op.in_channels} -> {op.out_channels} channels; this"
            f" model's maps {installed.in_channels} -> {installed.out_channels}: the record belongs to another model."
        )
    return installed


def _host(model: nn.Module, target: str, host: str) -> nn.Module:
    try:
        return model.get_submodule(host)
    except AttributeError:
        raise ConfigurationError(
            f"The pruning record names channel op {target!r}, but this model has no module {host!r}: it was"
            " pruned from another architecture."
        ) from None
