"""Cost models: parameter budgets counted independently, the generic protocol, one kind at a time."""

import json

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


def test_a_search_on_parameter_budgets(tmp_path):
    """The search prunes every candidate to the share of the parameters, and its state says so."""
    from lightning_legr import LeGRPruner
    from lightning_legr.core.search import LeGRSearch, learn_transform
    from lightning_legr.models import cifar_resnet

    torch.manual_seed(0)
    model, x = cifar_resnet(20), torch.randn(4, 3, 32, 32)
    total = count_params(model)
    seen = []

    def fitness(pruned):
        seen.append(count_params(pruned) / total)
        with torch.no_grad():
            return float((pruned(x) - model(x)).pow(2).mean())

    state = tmp_path / "state.json"
    search = LeGRSearch(LeGRPruner(model, x[:1]), fitness, 0.5, state, kind="params", generations=4, population=2,
                        sample_size=1)
    transform = search.run()
    assert len(seen) == 4 and all(0.49 <= r <= 0.5 for r in seen)
    assert transform.info["search_params"] == 0.5
    assert json.loads(state.read_text())["kind"] == "params"
    with pytest.raises(ConfigurationError, match="kind of budget: params there, flops here"):
        LeGRSearch(search.pruner, fitness, 0.5, state, generations=4, population=2, sample_size=1)

    seen.clear()
    learned = learn_transform(model, x[:1], [0.5, 0.8], fitness, kind="params", generations=3, population=2, sample_size=1)
    assert len(seen) == 3 and all(0.49 <= r <= 0.5 for r in seen)
    assert learned.info["search_params"] == 0.5
