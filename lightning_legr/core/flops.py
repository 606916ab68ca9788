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

from lightning_legr.core.cost import BilinearCost, register_cost
from lightning_legr.core.structure import ExampleInputs, Structure, run_model

__all__ = ["FlopModel", "count_flops", "count_params"]


class FlopModel(BilinearCost):
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

    kind = "flops"
    unit = "FLOPs"

    def __init__(self, structure: Structure) -> None:
        super().__init__(structure)
        for i, module in enumerate(self.modules):
            self.a[i], self.b[i], _, _ = _layer_terms(module, *self.positions[i])
        self._finish()

    def flops(self, removed: np.ndarray) -> float:
        """FLOPs with ``removed`` (a 0/1 vector over all group channels) taken out."""
        return self.cost(removed)

    def prefix_flops(self, removed_incidence_out: np.ndarray, removed_incidence_in: np.ndarray) -> np.ndarray:
        """FLOPs after each prefix of a removal order (:meth:`prefix_costs`)."""
        return self.prefix_costs(removed_incidence_out, removed_incidence_in)


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


def calibrated_flop_model(structure: Structure) -> FlopModel:
    """The FLOP model of ``structure``, its total made equal to ptflops' count."""
    flop_model = FlopModel(structure)
    calibrate(flop_model, structure)
    return flop_model


register_cost("flops", calibrated_flop_model)
