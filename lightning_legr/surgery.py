"""Physical pruning from a selection, and the pruning record that rebuilds a pruned model.

The record lists, per module, which input or output channels were removed, step by step from the
original architecture. Replaying it on a freshly built model of the same class gives the pruned
architecture, into which the pruned state dict loads (``load_state_dict`` alone cannot: shapes
differ). Replaying needs no tracing and no example input.

The record travels inside the pruned model's state dict, as the extra state of a parameter-free
child module ``legr_pruning``: any checkpoint of the pruned model, saved by any code, carries it.
"""

import contextlib
import copy
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from lightning_legr.selection import Selection
from lightning_legr.shortcuts import ZeroPadShortcut, ZeroPadShortcutPruner
from lightning_legr.structure import Structure

__all__ = ["RECORD_ATTR", "RECORD_KEY", "PruningRecord", "plan", "apply_plan", "restore", "pruning_record", "prune_copy"]

RECORD_ATTR = "legr_pruning"
RECORD_KEY = RECORD_ATTR + "._extra_state"  # where the record sits in a pruned model's state dict
FORMAT = "lightning-legr/pruning"
VERSION = 1


class PruningRecord(nn.Module):
    """Holds a pruning record and saves it in the state dict (``get_extra_state``). No parameters,
    never called: it only makes the record part of every checkpoint of the pruned model."""

    def __init__(self, record: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        self.record = record

    def get_extra_state(self) -> Optional[Dict[str, Any]]:
        return self.record

    def set_extra_state(self, state: Optional[Dict[str, Any]]) -> None:
        self.record = state

    def extra_repr(self) -> str:
        steps = len(self.record["steps"]) if self.record else 0
        return f"steps={steps}"


def plan(structure: Structure, selection: Selection) -> List[Dict[str, Any]]:
    """The per-module channel removals that realize ``selection`` (positions in the current model)."""
    merged: Dict[tuple, set] = {}
    for group, removed in zip(structure.groups, selection.removed):
        if len(removed) == 0:
            continue
        for member in group.members:
            positions = member.positions[np.isin(member.channels, removed)]
            if len(positions):
                key = (member.target, member.role, member.param_dim)
                merged.setdefault(key, set()).update(int(p) for p in positions)
    return [
        {"target": t, "role": r, "param_dim": d, "positions": sorted(p)} for (t, r, d), p in merged.items()
    ]


def _pruners(customized_pruners: Optional[Dict[Any, Any]]) -> tp.DependencyGraph:
    graph = tp.DependencyGraph()  # not built: only its table of pruning functions is used
    for layer_type, pruner in {ZeroPadShortcut: ZeroPadShortcutPruner(), **(customized_pruners or {})}.items():
        graph.register_customized_layer(layer_type, pruner)
    return graph


def apply_plan(
    model: nn.Module, entries: Sequence[Dict[str, Any]], customized_pruners: Optional[Dict[Any, Any]] = None
) -> nn.Module:
    """Remove the listed channels from ``model``, in place."""
    graph = _pruners(customized_pruners)
    modules = dict(model.named_modules())
    for entry in entries:
        target, positions = entry["target"], list(entry["positions"])
        if entry.get("param_dim") is not None:
            parent_name, _, attr = target.rpartition(".")
            parent = modules.get(parent_name)
            param = getattr(parent, attr, None) if parent is not None else None
            if not isinstance(param, nn.Parameter):
                raise ValueError(f"The pruning record names parameter {target!r}, which this model does not have.")
            _check_positions(target, positions, param.shape[entry["param_dim"]])
            pruner = tp.pruner.function.ParameterPruner(pruning_dim=entry["param_dim"])
            setattr(parent, attr, pruner.prune_out_channels(param, positions))
            continue
        module = modules.get(target)
        if module is None:
            raise ValueError(
                f"The pruning record names module {target!r}, which this model does not have: it was pruned"
                " from another architecture."
            )
        pruner = graph.get_pruner_of_module(module)
        if pruner is None:
            raise ValueError(f"No torch-pruning pruner for {target!r} ({type(module).__name__}); pass customized_pruners.")
        out = entry["role"] == "out"
        _check_positions(target, positions, pruner.get_out_channels(module) if out else pruner.get_in_channels(module))
        (pruner.prune_out_channels if out else pruner.prune_in_channels)(module, positions)
    return model


def _check_positions(target: str, positions: List[int], size: Optional[int]) -> None:
    if size is not None and positions and (positions[-1] >= size or len(positions) >= size):
        raise ValueError(
            f"The pruning record removes channel {positions[-1]} ({len(positions)} in all) of {target!r}, which has"
            f" {size}: the record belongs to another model or was already applied."
        )


def pruning_record(model_or_state_dict: Any) -> Optional[Dict[str, Any]]:
    """The record of how a model was pruned from its original architecture (None if unpruned).

    Accepts the pruned model or its state dict.
    """
    if isinstance(model_or_state_dict, nn.Module):
        holder = getattr(model_or_state_dict, RECORD_ATTR, None)
        return holder.record if isinstance(holder, PruningRecord) else None
    return model_or_state_dict.get(RECORD_KEY) if isinstance(model_or_state_dict, dict) else None


def prune_copy(
    structure: Structure,
    selection: Selection,
    customized_pruners: Optional[Dict[Any, Any]] = None,
    info: Optional[Dict[str, Any]] = None,
) -> nn.Module:
    """A pruned deep copy of ``structure.model``; the original is untouched.

    The copy carries its pruning record (see :func:`pruning_record`); pruning an already pruned
    model appends a step to the record it inherited.
    """
    entries = plan(structure, selection)
    with _one_thread():
        model = copy.deepcopy(structure.model)
        apply_plan(model, entries, customized_pruners)
    previous = pruning_record(structure.model)
    steps = list(previous["steps"]) if previous else []
    step = {
        "budget": selection.budget,
        "widths": {g.name: int(w) for g, w in zip(structure.groups, selection.widths)},
        "layers": entries,
    }
    step.update(info or {})
    _attach(model, {"format": FORMAT, "version": VERSION, "steps": steps + [step]})
    return model


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Copy and slice on one thread: hundreds of small tensor copies gain nothing from more, and
    each multi-threaded copy waits for every core, which costs milliseconds on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _attach(model: nn.Module, record: Dict[str, Any]) -> None:
    holder = getattr(model, RECORD_ATTR, None)
    if holder is not None and not isinstance(holder, PruningRecord):
        raise ValueError(f"The model already has an attribute {RECORD_ATTR!r}; lightning-legr needs that name.")
    setattr(model, RECORD_ATTR, PruningRecord(record))


def restore(
    model: nn.Module,
    record: Optional[Dict[str, Any]] = None,
    state_dict: Optional[Dict[str, Any]] = None,
    customized_pruners: Optional[Dict[Any, Any]] = None,
) -> nn.Module:
    """Rebuild a pruned model: replay ``record`` on a freshly built ``model`` (in place), then load
    ``state_dict`` if given. Without ``record``, the one inside ``state_dict`` is used.

    Example::

        >>> import torch
        >>> from lightning_legr import prune
        >>> from lightning_legr.models import cifar_resnet
        >>> pruned = prune(cifar_resnet(20), torch.randn(1, 3, 32, 32), flops=0.5)
        >>> rebuilt = restore(cifar_resnet(20), state_dict=pruned.state_dict())
        >>> x = torch.randn(2, 3, 32, 32)
        >>> torch.equal(rebuilt.eval()(x), pruned.eval()(x))
        True
    """
    if record is None and state_dict is not None:
        record = pruning_record(state_dict)
        if record is None:
            raise ValueError(f"The state dict has no pruning record ({RECORD_KEY!r}): it is not from a pruned model.")
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError("Not a lightning-legr pruning record (expected a dict with format 'lightning-legr/pruning').")
    if record.get("version", 0) > VERSION:
        raise ValueError(f"Pruning record version {record['version']} is newer than this lightning-legr ({VERSION}).")
    if pruning_record(model) is not None:
        raise ValueError("`restore` needs a freshly built, unpruned model; this one was already pruned.")
    for step in record["steps"]:
        apply_plan(model, step["layers"], customized_pruners)
    _attach(model, copy.deepcopy(record))
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model
