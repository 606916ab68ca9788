"""FLOPs: a fast analytic model for channel selection, and ptflops as the independent counter.

"FLOPs" throughout this package are multiply-accumulates (MACs) of convolutions and linear layers,
bias included, as ptflops' ``aten`` backend counts them; BatchNorm, activations and pooling are not
counted, as in the LeGR paper and most of the pruning literature.
"""

import copy
import io
from typing import Optional

import numpy as np
import torch
from ptflops import get_model_complexity_info
from torch import nn

from lightning_legr.core.structure import ExampleInputs, Structure, run_model

__all__ = ["FlopModel", "count_flops", "count_params"]


class FlopModel:
    """FLOPs of the model as a function of which channels are removed.

    For every conv/linear layer ``L``: ``FLOPs_L = a_L * in_L * out_L + b_L * out_L``, where
    ``in_L`` (input channels per conv group) and ``out_L`` shrink as group channels are removed. The
    incidence matrices ``in_incidence[L, c]`` / ``out_incidence[L, c]`` count how many of L's input /
    output channels are group channel ``c`` (more than one after a flatten into a linear layer).

    Example::

        >>> from lightning_legr.models import cifar_resnet
        >>> model = FlopModel(Structure(cifar_resnet(56), torch.randn(1, 3, 32, 32)))
        >>> int(model.total)
        125485706
    """

    def __init__(self, structure: Structure) -> None:
        named = dict(structure.model.named_modules())
        self.layer_names = list(structure.layer_positions)
        row = {name: i for i, name in enumerate(self.layer_names)}
        n_layers = len(self.layer_names)
        self.a = np.zeros(n_layers)
        self.b = np.zeros(n_layers)
        self.in_full = np.zeros(n_layers)
        self.out_full = np.zeros(n_layers)
        for i, name in enumerate(self.layer_names):
            self.a[i], self.b[i], self.in_full[i], self.out_full[i] = _layer_terms(named[name], *structure.layer_positions[name])
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
        self.total = self.flops(np.zeros(structure.num_channels))

    def flops(self, removed: np.ndarray) -> float:
        """FLOPs with ``removed`` (a 0/1 vector over all group channels) taken out."""
        out = self.out_full - self.out_incidence @ removed
        inp = self.in_full - self.in_incidence @ removed
        return float(self.a @ (inp * out) + self.b @ out + self.constant)

    def prefix_flops(self, removed_incidence_out: np.ndarray, removed_incidence_in: np.ndarray) -> np.ndarray:
        """FLOPs after each prefix of a removal order, given the cumulative incidence rows.

        ``removed_incidence_*[k]`` is the per-layer count removed by the first ``k + 1`` units.
        """
        out = self.out_full - removed_incidence_out
        inp = self.in_full - removed_incidence_in
        return (inp * out) @ self.a + out @ self.b + self.constant

    def marginal(self, removed: np.ndarray, units_in: np.ndarray, units_out: np.ndarray) -> np.ndarray:
        """FLOPs that putting back each unit would add (units given as incidence columns)."""
        out = self.out_full - self.out_incidence @ removed
        inp = self.in_full - self.in_incidence @ removed
        return (
            (self.a * out) @ units_in
            + (self.a * inp + self.b) @ units_out
            + np.einsum("l,lu,lu->u", self.a, units_in, units_out)
        )


def _per_group_share(module: nn.Module, role: str) -> float:
    """How much removing one channel shrinks the layer's ``in`` / ``out`` term of the FLOP model.

    A conv's FLOPs count input channels *per conv group*: a grouped conv loses ``1 / groups`` of
    an input channel per channel removed (whole steps remove one from every group), a depthwise
    conv none (its groups shrink with its channels).
    """
    if not isinstance(module, nn.modules.conv._ConvNd) or module.groups == 1:
        return 1.0
    per_group_side = "out" if module.transposed else "in"
    if role != per_group_side:
        return 1.0
    depthwise = module.groups == module.out_channels
    return 0.0 if depthwise else 1.0 / module.groups


def _layer_terms(module: nn.Module, in_positions: int, out_positions: int):
    """(a, b, in, out) of one layer, matching ptflops' aten counting rules."""
    bias = out_positions if module.bias is not None else 0
    if isinstance(module, nn.Linear):
        return out_positions, bias, module.in_features, module.out_features
    kernel = int(np.prod(module.kernel_size))
    if module.transposed:  # ptflops counts transposed convs over the input positions
        return in_positions * kernel, bias, module.in_channels, module.out_channels // module.groups
    return out_positions * kernel, bias, module.in_channels // module.groups, module.out_channels


class _Call(nn.Module):
    def __init__(self, model: nn.Module, example_inputs: ExampleInputs) -> None:
        super().__init__()
        self.model = model
        self.example_inputs = example_inputs

    def forward(self):
        return run_model(self.model, self.example_inputs)


def count_flops(model: nn.Module, example_inputs: ExampleInputs) -> int:
    """MACs of one forward pass on ``example_inputs``, counted by ptflops (aten backend).

    Counts on a deep copy: ptflops' aten backend leaves hooks behind and switches to eval mode.
    """
    wrapper = _Call(copy.deepcopy(model), example_inputs)
    with torch.no_grad():
        macs, _ = get_model_complexity_info(
            wrapper, (1,), input_constructor=lambda _: {}, as_strings=False, backend="aten",
            print_per_layer_stat=False, ost=io.StringIO(),
        )
    if macs is None:
        raise RuntimeError("ptflops could not count the model's FLOPs (see the traceback above).")
    return int(macs)


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def calibrate(flop_model: FlopModel, structure: Structure, measured: Optional[int] = None) -> int:
    """Make the analytic total agree with ptflops on the unpruned model.

    Operations the analytic model does not see (a matmul inside a custom layer) become a constant:
    they are not pruned, so they weigh the same at every budget. Returns the measured total.
    """
    if measured is None:
        measured = count_flops(structure.model, structure.example_inputs)
    flop_model.constant += measured - flop_model.total
    flop_model.total = float(measured)
    return measured
