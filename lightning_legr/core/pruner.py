"""LeGRPruner: structure, scores, FLOP model and selection of one model, built once and reused."""

from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from lightning_legr.core.criteria import Criterion, get_criterion
from lightning_legr.core.flops import FlopModel, calibrate
from lightning_legr.core.selection import Selection, Selector
from lightning_legr.core.structure import ExampleInputs, Structure, run_model
from lightning_legr.core.surgery import prune_copy
from lightning_legr.core.transform import Transform

__all__ = ["LeGRPruner", "prune"]


class LeGRPruner:
    """Prunes copies of one model to any FLOP budget under any transform, fast.

    Tracing, scoring and the FLOP model are done once here; :meth:`prune` then costs a selection
    (milliseconds) and the surgery on a deep copy, which is what a search evaluates hundreds of
    times.

    Args:
        model: the trained network. It is never modified.
        example_inputs: an input it runs on; FLOPs are counted for it (use batch 1).
        criterion: base importance, ``"l2"`` (squared L2 norm of each filter, the default),
            ``"l1"``, ``"bn"`` (BatchNorm scale) or a :class:`~lightning_legr.core.criteria.Criterion`.
        safeguard: share of every group that is always kept (at least one channel).
        round_to: keep every group's width a multiple of this, e.g. 8 for hardware efficiency.
        ignored_layers: modules (or names) whose channels must not be pruned.
        customized_pruners: torch-pruning pruners for custom layers, ``{LayerClass: pruner}``.

    Example::

        >>> import torch
        >>> from lightning_legr.models import cifar_resnet
        >>> pruner = LeGRPruner(cifar_resnet(56), torch.randn(1, 3, 32, 32))
        >>> small = pruner.prune(0.5)
        >>> round(pruner.select(0.5).ratio, 3)
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
    ) -> None:
        self.criterion = get_criterion(criterion)
        self.customized_pruners = customized_pruners
        self.structure = Structure(model, example_inputs, ignored_layers, customized_pruners)
        self.base_scores = [self.criterion(g).numpy() for g in self.structure.groups]
        self.flop_model = FlopModel(self.structure)
        self.total_flops = calibrate(self.flop_model, self.structure)
        self.selector = Selector(self.structure, self.flop_model, self.base_scores, safeguard, round_to)
        self.safeguard = safeguard
        self.round_to = round_to
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

    def select(self, flops: float, transform: Optional[Transform] = None) -> Selection:
        """Which channels LeGR-Pruning removes for a budget of ``flops`` x the original FLOPs."""
        transform = self.check_transform(transform)
        return self.selector.select(transform.alpha, transform.kappa, flops)

    def prune(self, flops: float, transform: Optional[Transform] = None) -> nn.Module:
        """A physically pruned deep copy of the model at ``flops`` x the original FLOPs."""
        return self.apply(self.select(flops, transform))

    def apply(self, selection: Selection) -> nn.Module:
        """A physically pruned deep copy of the model, without the channels ``selection`` removes."""
        info = {"flops": selection.flops, "original_flops": selection.total_flops}
        return prune_copy(self.structure, selection, self.customized_pruners, info)


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
    flops: float = 0.5,
    transform: Optional[Transform] = None,
    **kwargs: Any,
) -> nn.Module:
    """Prune a copy of ``model`` to ``flops`` x its FLOPs with the global ranking ``transform``.

    With ``transform=None`` the ranking is the plain global one (alpha = 1, kappa = 0). Keyword
    arguments go to :class:`LeGRPruner` (``criterion``, ``safeguard``, ``round_to``, ...).

    Example::

        >>> import torch
        >>> from lightning_legr.models import cifar_resnet
        >>> from lightning_legr.core.flops import count_flops
        >>> model, x = cifar_resnet(20), torch.randn(1, 3, 32, 32)
        >>> small = prune(model, x, flops=0.3)
        >>> 0.29 < count_flops(small, x) / count_flops(model, x) <= 0.3
        True
    """
    return LeGRPruner(model, example_inputs, **kwargs).prune(flops, transform)
