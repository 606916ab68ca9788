"""A faster evaluation of a candidate that gives the same numbers: BatchNorm folded, channels_last if faster.

The candidate is a pruned deep copy, changed in place; the user's module is never touched. Both levers
are exact for a network evaluated in eval mode: a BatchNorm that only ever sees one convolution's
output is an affine map of it, and the memory format changes where values lie, not what they are.
"""

import copy
import statistics
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import fx, nn
from torch.utils import benchmark

from lightning_legr.core.errors import ConfigurationError

__all__ = ["FastPath", "MEMORY_FORMATS", "fold_batchnorms", "foldable_batchnorms"]

MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ROUNDS = 3  # interleaved timing rounds per memory format


def foldable_batchnorms(model: nn.Module) -> List[Tuple[str, str]]:
    """``(conv, batchnorm)`` module names where the BatchNorm can be folded into the convolution.

    Traced with ``torch.fx``: a pair qualifies when the convolution and the BatchNorm are each called
    once in the forward, the BatchNorm's only input is the convolution's output and nothing else reads
    that output. A model that cannot be traced gets no pair: when unsure, nothing is folded.
    """
    try:
        graph = _Tracer().trace(model)
    except Exception:  # noqa: BLE001 - any untraceable forward (control flow on values, ...) means "do not fold"
        return []
    modules = dict(model.named_modules())
    calls: Dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
        elif node.op == "get_attr":  # a module's tensors read directly: leave that module alone
            owner = node.target.rpartition(".")[0]
            calls[owner] = calls.get(owner, 0) + 2
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _NORMS):
            continue
        norm = modules[node.target]
        source = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if not isinstance(source, fx.Node) or source.op != "call_module":
            continue
        conv = modules.get(source.target)
        if (
            isinstance(conv, _CONVS)
            and len(source.users) == 1
            and calls.get(source.target) == 1
            and calls.get(node.target) == 1
            and norm.track_running_stats
            and norm.running_mean is not None
            and conv.out_channels == norm.num_features
        ):
            pairs.append((source.target, node.target))
    return pairs


class _Tracer(fx.Tracer):
    """Traces into a module only where a convolution or a BatchNorm lies inside: layers such as a zero-pad
    shortcut, whose forward fx cannot trace, are then single calls, and a call is all that is needed."""

    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        inside = (m for m in module.modules() if m is not module)
        return super().is_leaf_module(module, qualname) or not any(isinstance(m, _CONVS + _NORMS) for m in inside)


@torch.no_grad()
def fold_batchnorms(model: nn.Module, pairs: List[Tuple[str, str]]) -> int:
    """Fold each BatchNorm of ``pairs`` into its convolution, in place, and replace it by ``nn.Identity``.

    Exact in eval mode (the BatchNorm then applies its running statistics); returns how many were folded.
    """
    modules = dict(model.named_modules())
    for conv_name, norm_name in pairs:
        conv, norm = modules[conv_name], modules[norm_name]
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps) if norm.affine else torch.rsqrt(
            norm.running_var + norm.eps
        )
        shift = -norm.running_mean * scale + (norm.bias if norm.affine else 0.0)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
        conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))).to(conv.weight.dtype))
        conv.bias = nn.Parameter((bias * scale + shift).to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
        parent_name, _, child = norm_name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, nn.Identity())
    return len(pairs)


class FastPath:
    """Prepares a candidate copy for evaluation in eval mode: BatchNorm folded, the memory format chosen.

    Args:
        memory_format: ``"channels_last"``, ``"contiguous"`` (as the model is), or ``"auto"``: decided once,
            by :meth:`decide`, from a quick side-by-side timing of one batch (kept only if faster and the
            outputs agree).
        fold_batchnorm: fold every BatchNorm that only follows one convolution (see
            :func:`foldable_batchnorms`) into it; checked once against the unfolded outputs.

    Raises:
        ConfigurationError: for a ``memory_format`` other than the three.
    """

    def __init__(self, memory_format: str = "auto", fold_batchnorm: bool = True) -> None:
        if memory_format not in MEMORY_FORMATS:
            raise ConfigurationError(
                f"`memory_format` can be {', '.join(MEMORY_FORMATS)}, got {memory_format!r}"
            )
        if not isinstance(fold_batchnorm, bool):
            raise ConfigurationError(f"`fold_batchnorm` must be True or False, got {fold_batchnorm!r}")
        self.memory_format = memory_format
        self.fold_batchnorm = fold_batchnorm
        self.decision: Optional[Dict[str, Any]] = None  # what decide() found: JSON, kept in the search state
        self._pairs: Optional[List[Tuple[str, str]]] = None
        self._layout: Optional[Tuple[Tuple[str, str], ...]] = None

    def decide(self, model: nn.Module, inputs: torch.Tensor) -> Dict[str, Any]:
        """Decide on a candidate copy (changed: use one you throw away) from one input batch: which
        BatchNorms fold, and with ``"auto"``, the faster memory format. Returns :attr:`decision`."""
        model.eval()
        with torch.inference_mode():
            plain = model(inputs)
        pairs = self._plan(model) if self.fold_batchnorm else []
        folded = fold_batchnorms(model, pairs)
        with torch.inference_mode():
            same = _close(model(inputs), plain)
        decision: Dict[str, Any] = {"fold_batchnorm": folded if same else 0}
        if not same:
            self._pairs, decision["note"] = [], "folding changed the outputs: not folded"
        chosen = self.memory_format
        if chosen == "auto":
            chosen, seconds = _faster_format(model, inputs, plain)
            decision["seconds_per_batch"] = seconds
        decision["memory_format"] = chosen
        self.decision = decision
        return decision

    def load(self, decision: Dict[str, Any]) -> None:
        """Take a decision made earlier (the search state's, or rank 0's), so that every evaluation of
        the run is prepared alike."""
        if decision.get("memory_format") not in ("channels_last", "contiguous"):
            raise ConfigurationError(f"Not a fast-path decision: {decision!r}")
        self.decision = dict(decision)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Fold and convert ``model`` in place, as decided; it must then be evaluated in eval mode."""
        if self.decision is None:
            raise RuntimeError("FastPath.prepare needs a decision: call decide() or load() first.")
        if self.decision["fold_batchnorm"]:
            fold_batchnorms(model, self._plan(model))
        if self.decision["memory_format"] == "channels_last":
            model.to(memory_format=torch.channels_last)
        for parameter in model.parameters():
            parameter.grad = None  # gradients copied from the user's module: nothing reads them
        return model

    def _plan(self, model: nn.Module) -> List[Tuple[str, str]]:
        """The pairs to fold, traced once: every candidate has the same layers, only narrower."""
        layout = tuple((name, type(m).__name__) for name, m in model.named_modules())
        if self._pairs is None or layout != self._layout:
            self._pairs, self._layout = foldable_batchnorms(model), layout
        return self._pairs


def _faster_format(model: nn.Module, inputs: torch.Tensor, expected: Any) -> Tuple[str, Dict[str, float]]:
    """Time one batch in both memory formats, interleaved; channels_last only if it is faster by 5% or more
    and gives the same outputs (a ``view`` on channels_last activations raises: contiguous then)."""
    last = _copy_in_format(model, torch.channels_last)
    try:
        with torch.inference_mode():
            if not _close(last(inputs), expected):
                return "contiguous", {}
    except RuntimeError:
        return "contiguous", {}
    times: Dict[str, List[float]] = {"contiguous": [], "channels_last": []}
    candidates = {"contiguous": model, "channels_last": last}
    with torch.inference_mode():
        for _ in range(_ROUNDS):
            for name, network in candidates.items():
                timer = benchmark.Timer("network(inputs)", globals={"network": network, "inputs": inputs},
                                        num_threads=torch.get_num_threads())
                times[name].append(timer.timeit(1).median)
    seconds = {name: statistics.median(t) for name, t in times.items()}
    faster = seconds["channels_last"] < 0.95 * seconds["contiguous"]
    return ("channels_last" if faster else "contiguous"), {k: round(v, 6) for k, v in seconds.items()}


def _copy_in_format(model: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    return copy.deepcopy(model).to(memory_format=memory_format)


def _close(actual: Any, expected: Any) -> bool:
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
            return False
        if not expected.is_floating_point():
            return torch.equal(actual, expected)
        # relative to the output's scale: rounding differs, the values must not
        if not expected.numel():
            return True
        scale = float(expected.abs().max())
        return float((actual.float() - expected.float()).abs().max()) <= 1e-4 * scale + 1e-6
    if isinstance(expected, (tuple, list)):
        return isinstance(actual, (tuple, list)) and len(actual) == len(expected) and all(
            _close(a, e) for a, e in zip(actual, expected)
        )
    return actual == expected
