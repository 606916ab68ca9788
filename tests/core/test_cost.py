"""The cost-model protocol (core/cost.py): any LayerCost selects channels; FLOPs are one implementation."""

import numpy as np
import pytest
from torch import nn

from lightning_legr.core.cost import LayerCost
from lightning_legr.core.flops import FlopModel
from lightning_legr.core.selection import Selector
from lightning_legr.core.surgery import prune_copy
from tests.models import shared_pruner

NAMES = ["vgg_small", "mobilenet_v2_small", "bottleneck_resnet", "densenet_small", "resnet56_A"]


class GenericFlops(LayerCost):
    """FLOPs written as a plain LayerCost: only ``layer_costs``, no closed forms."""

    kind = "flops"

    def __init__(self, flop_model: FlopModel, structure) -> None:
        super().__init__(structure)
        self.a, self.b, self.constant = flop_model.a, flop_model.b, flop_model.constant
        self._finish()

    def layer_costs(self, inp, out):
        return self.a * inp * out + self.b * out


class OutputChannels(LayerCost):
    """A fourth kind of budget in one class: the output channels of all conv/linear layers."""

    kind = "channels"
    unit = "channels"

    def __init__(self, structure) -> None:
        super().__init__(structure)
        self._finish()

    def layer_costs(self, inp, out):
        return out + 0 * inp


def output_channels(model: nn.Module) -> int:
    """Counted on the module itself, independently of any cost model."""
    return sum(
        m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features
        for m in model.modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    )


@pytest.mark.parametrize("name", NAMES)
def test_the_generic_protocol_equals_the_flop_models_closed_forms(name):
    pruner = shared_pruner(name)
    flops, generic = pruner.flop_model, GenericFlops(pruner.flop_model, pruner.structure)
    assert generic.total == pytest.approx(flops.total, rel=1e-12)
    rng = np.random.default_rng(0)
    selector = pruner.selector
    for _ in range(3):
        removed_units = rng.random(len(selector.unit_group)) < 0.3
        removed = selector._channel_mask(removed_units)
        assert generic.cost(removed) == pytest.approx(flops.cost(removed), rel=1e-12)
        units = np.flatnonzero(removed_units)[:7]
        np.testing.assert_allclose(
            generic.marginal(removed, selector.unit_in[:, units], selector.unit_out[:, units]),
            flops.marginal(removed, selector.unit_in[:, units], selector.unit_out[:, units]),
            rtol=1e-9,
        )
    order = rng.permutation(len(selector.unit_group))
    cum_out = np.cumsum(selector.unit_out[:, order], axis=1).T
    cum_in = np.cumsum(selector.unit_in[:, order], axis=1).T
    np.testing.assert_allclose(generic.prefix_costs(cum_out, cum_in), flops.prefix_costs(cum_out, cum_in), rtol=1e-9)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("budget", [0.5, 0.8])
def test_a_new_kind_of_budget_is_one_class(name, budget):
    pruner = shared_pruner(name)
    cost = OutputChannels(pruner.structure)
    assert cost.total == output_channels(pruner.model)
    selector = Selector(pruner.structure, cost, pruner.base_scores, pruner.safeguard, pruner.round_to)
    transform = pruner.identity()
    selection = selector.select(transform.alpha, transform.kappa, budget)
    assert selection.kind == "channels"
    with pytest.raises(AttributeError, match="channels selection has no `flops`"):
        selection.flops
    pruned = prune_copy(pruner.structure, selection, pruner.customized_pruners)
    counted = output_channels(pruned)
    assert counted == selection.cost
    assert counted <= budget * cost.total
    assert counted >= budget * cost.total - max(selector.unit_out.sum(0).max(), 1)  # one unit of slack at most


def test_an_unreachable_budget_of_any_kind_says_how_far_it_goes():
    pruner = shared_pruner("vgg_small")
    cost = OutputChannels(pruner.structure)
    selector = Selector(pruner.structure, cost, pruner.base_scores, safeguard=0.5)
    transform = pruner.identity()
    with pytest.raises(Exception, match="channels budget of 0.1 cannot be reached.*of the channels"):
        selector.select(transform.alpha, transform.kappa, 0.1)
