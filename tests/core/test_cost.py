"""Cost models: parameter budgets counted independently, the generic protocol, one kind at a time."""

import numpy as np
import pytest
import torch

from lightning_legr import count_params, prune
from lightning_legr.core.cost import LayerCost
from lightning_legr.core.errors import ConfigurationError
from lightning_legr.core.flops import ParamModel
from tests.models import ARCHITECTURES, example_input, shared_pruner


class _Generic(LayerCost):
    """FLOPs through the protocol's default methods only (no closed forms)."""

    def __init__(self, flop_model):
        self.__dict__.update({k: v for k, v in flop_model.__dict__.items()})
        self._a, self._b = flop_model.a, flop_model.b

    def layer_costs(self, inp, out):
        return self._a * inp * out + self._b * out


def test_generic_protocol_agrees_with_the_closed_forms():
    pruner = shared_pruner("resnet56_B")
    flops = pruner.flop_model
    generic = _Generic(flops)
    sel = pruner.selector
    removed = sel._channel_mask(np.arange(len(sel.unit_group)) % 3 == 0)
    assert generic.cost(removed) == pytest.approx(flops.cost(removed), rel=1e-12)
    got = generic.marginal(removed, sel.unit_in[:, :20], sel.unit_out[:, :20])
    assert np.allclose(got, flops.marginal(removed, sel.unit_in[:, :20], sel.unit_out[:, :20]), rtol=1e-9)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_params_budgets_are_met_and_never_exceeded(name):
    pruner = shared_pruner(name)
    total = count_params(pruner.model)
    assert pruner.cost_model("params").total == total
    for budget in (0.2, 0.5):
        selection = pruner.select(params=budget)
        measured = count_params(pruner.apply(selection))
        assert measured == selection.cost  # the analytic model is exact
        assert measured <= budget * total
        if name != "densenet_small":  # 6666 parameters: one channel costs up to 2.3% of them
            assert measured >= 0.99 * budget * total


def test_two_kinds_at_once_are_refused_before_compute():
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("never run")

    with pytest.raises(ConfigurationError, match="Give one kind of budget, got `flops` and `params`"):
        prune(Broken(), example_input(), flops=0.5, params=0.5)
    with pytest.raises(ConfigurationError, match="Give one kind of budget"):
        shared_pruner("vgg_small").select(0.5, params=0.5)


def test_one_call_params_api():
    model = shared_pruner("vgg_small").model
    small = prune(model, example_input(), params=0.5)
    assert 0.495 * count_params(model) <= count_params(small) <= 0.5 * count_params(model)
    assert isinstance(shared_pruner("vgg_small").cost_model("params"), ParamModel)
