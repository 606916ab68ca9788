"""Physical pruning from a selection, and the pruning record that rebuilds a pruned model.

The record lists, per module, which input or output channels were removed, step by step from the
original architecture. Replaying it on a freshly built model of the same class gives the pruned
architecture, into which the pruned state dict loads (``load_state_dict`` alone cannot: shapes
differ). Replaying needs no tracing and no example input.

The record is an attribute of the pruned model, and state-dict hooks put it in the model's state
dict under ``legr_pruning`` (and take it out again on loading): any checkpoint of the pruned model,
saved by any code, carries it, while the model's modules stay exactly the user's.
"""

import contextlib
import copy
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from lightning_legr.core.selection import Selection
from lightning_legr.core.graph import default_pruners, install_channel_op, installed_channel_op, is_channel_op
from lightning_legr.core.shortcuts import PlacementPruner
from lightning_legr.core.structure import Structure

__all__ = ["RECORD_ATTR", "RECORD_KEY", "plan", "apply_plan", "restore", "pruning_record", "prune_copy"]

RECORD_ATTR = "legr_pruning"  # the attribute of a pruned model that holds its record
RECORD_KEY = RECORD_ATTR  # and its key in the model's state dict
FORMAT = "lightning-legr/pruning"
VERSION = 2  # 2: steps may carry "channel_ops" (zero-padding calls replayed); such records are written as 2


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


def _pruners(model: nn.Module, customized_pruners: Optional[Dict[Any, Any]]) -> tp.DependencyGraph:
    graph = tp.DependencyGraph()  # not built: only its table of pruning functions is used
    for layer_type, pruner in {**default_pruners(model), **(customized_pruners or {})}.items():
        graph.register_customized_layer(layer_type, pruner)
    return graph


def apply_plan(
    model: nn.Module,
    entries: Sequence[Dict[str, Any]],
    customized_pruners: Optional[Dict[Any, Any]] = None,
    channel_ops: Sequence[Dict[str, Any]] = (),
) -> nn.Module:
    """Remove the listed channels from ``model``, in place.

    ``channel_ops`` describe the zero-padding calls of the model's ``forward``
    (:class:`~lightning_legr.core.graph.ChannelPad`): they are installed first, so that the
    pruned model replays them with its new widths, and entries can name them (``host@index``).
    """
    graph = _pruners(model, customized_pruners)
    modules = dict(model.named_modules())
    for description in channel_ops:
        install_channel_op(model, description)
    for entry in entries:
        target, positions = entry["target"], list(entry["positions"])
        if is_channel_op(target):
            op = installed_channel_op(model, target)
            if op is None:
                raise ValueError(f"The pruning record prunes channel op {target!r} but does not describe it.")
            out = entry["role"] == "out"
            pruner = PlacementPruner()
            _check_positions(target, positions, op.out_channels if out else op.in_channels)
            (pruner.prune_out_channels if out else pruner.prune_in_channels)(op, positions)
            continue
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
        return model_or_state_dict.__dict__.get(RECORD_ATTR)
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
    channel_ops = [op.describe() for op in structure.channel_ops]
    with _one_thread():
        model = copy.deepcopy(structure.model)
        apply_plan(model, entries, customized_pruners, channel_ops)
    previous = pruning_record(structure.model)
    steps = list(previous["steps"]) if previous else []
    step = {
        "model": _fingerprint(structure.model),
        "budget": selection.budget,
        "widths": {g.name: int(w) for g, w in zip(structure.groups, selection.widths)},
        "layers": entries,
    }
    if channel_ops:
        step["channel_ops"] = channel_ops
    step.update(info or {})
    steps = steps + [step]
    version = 2 if any("channel_ops" in s for s in steps) else 1  # an older reader would drop the replay
    _attach(model, {"format": FORMAT, "version": version, "steps": steps})
    return model


def _fingerprint(model: nn.Module) -> Dict[str, Any]:
    """What a step was applied to: replaying it on anything else is refused."""
    return {"class": type(model).__name__, "params": sum(p.numel() for p in model.parameters())}


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
    if RECORD_ATTR not in model.__dict__:
        if hasattr(model, RECORD_ATTR):
            raise ValueError(f"The model already has an attribute {RECORD_ATTR!r}; lightning-legr needs that name.")
        model.register_state_dict_post_hook(_save_record)
        model.register_load_state_dict_pre_hook(_load_record)
    model.__dict__[RECORD_ATTR] = record


def _save_record(module: nn.Module, state_dict: Dict[str, Any], prefix: str, local_metadata: Any) -> None:
    record = module.__dict__.get(RECORD_ATTR)
    if record is not None:
        state_dict[prefix + RECORD_KEY] = record


def _load_record(module: nn.Module, state_dict: Dict[str, Any], prefix: str, *args: Any) -> None:
    state_dict.pop(prefix + RECORD_KEY, None)  # not a tensor: the restored model has its record already


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
    for index, step in enumerate(record["steps"]):
        expected, found = step.get("model"), _fingerprint(model)
        if expected is not None and expected != found:
            raise ValueError(
                f"The pruning record's step {index} was made on a {expected['class']} with {expected['params']}"
                f" parameters, but this model is a {found['class']} with {found['params']}: the record belongs to"
                " another architecture (or this model is not freshly built)."
            )
        apply_plan(model, step["layers"], customized_pruners, step.get("channel_ops", ()))
    _attach(model, copy.deepcopy(record))
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model
