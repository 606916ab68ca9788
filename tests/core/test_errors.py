"""Bad input: every error says what is wrong and what is accepted."""

import numpy as np
import pytest
import torch
from torch import nn

from lightning_legr import LeGRPruner, LeGRSearch, Transform, prune
from lightning_legr.models import cifar_resnet
from tests.models import example_input, shared_pruner


@pytest.fixture(scope="module")
def pruner():
    return shared_pruner("vgg_small")


@pytest.mark.parametrize(
    "budget, match",
    [
        (0, r"`flops` must be in \(0, 1\].*got 0$"),
        (0.0, r"`flops` must be in \(0, 1\].*got 0\.0$"),
        (-0.5, r"`flops` must be in \(0, 1\].*got -0\.5$"),
        (1.0001, r"`flops` must be in \(0, 1\].*got 1\.0001$"),
        (2, r"`flops` must be in \(0, 1\].*got 2$"),
        (float("nan"), r"`flops` must be a number in \(0, 1\].*got nan$"),
        (float("inf"), r"`flops` must be a number in \(0, 1\].*got inf$"),
        ("0.5", r"`flops` must be a number in \(0, 1\].*got '0\.5'$"),
        (None, r"`flops` must be a number in \(0, 1\].*got None$"),
        (True, r"`flops` must be a number.*got True$"),
    ],
)
def test_bad_budgets(pruner, budget, match):
    with pytest.raises(ValueError, match=match):
        pruner.select(budget)
    with pytest.raises(ValueError, match=match):
        pruner.prune(budget)
    with pytest.raises(ValueError, match=match):
        LeGRSearch(pruner, lambda m: 0.0, budget)


def test_bad_budget_in_the_one_call_api():
    with pytest.raises(ValueError, match=r"`flops` must be in \(0, 1\], a fraction of the original FLOPs"):
        prune(cifar_resnet(20), example_input(), flops=50)


def test_numpy_budgets_are_accepted(pruner):
    assert pruner.select(np.float64(0.5)).ratio <= 0.5
    for budget in np.linspace(0.2, 0.8, 4):
        assert pruner.select(budget).ratio <= budget


def test_numpy_float32_budget_is_accepted(pruner):
    assert pruner.select(np.float32(0.5)).ratio <= 0.5


def test_zero_dimensional_array_budgets_are_accepted(pruner):
    assert pruner.select(np.array(0.5)).ratio <= 0.5
    search = LeGRSearch(pruner, lambda m: 0.0, np.array(0.4), generations=1, population=1, sample_size=1)
    assert search.budgets == [0.4]


def test_unreachable_budget(pruner):
    with pytest.raises(ValueError, match=r"A FLOP budget of 0\.001 cannot be reached") as err:
        pruner.select(0.001)
    assert f"at least {pruner.min_flops:.4f} of the FLOPs" in str(err.value)
    assert "lower `safeguard`" in str(err.value)
    with pytest.raises(ValueError, match="cannot be reached"):
        prune(pruner.model, example_input(), flops=0.05, safeguard=0.9)


def test_mlp_has_nothing_to_prune():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16), nn.ReLU(), nn.Linear(16, 10))
    with pytest.raises(ValueError, match=r"Sequential has no prunable convolution \(it has no convolution\)"):
        LeGRPruner(mlp, example_input())


def test_conv_whose_channels_are_flattened_into_the_output():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    with pytest.raises(ValueError, match=r"no prunable convolution \(0: its channels are outputs of the model\)"):
        LeGRPruner(model, example_input())


def test_conv_that_feeds_the_output_directly():
    with pytest.raises(ValueError, match=r"no prunable convolution \(0: its channels are outputs of the model\)"):
        LeGRPruner(nn.Sequential(nn.Conv2d(3, 4, 3)), example_input())


class FCN(nn.Module):
    """A segmentation-style net: the last conv's channels are the classes."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def test_output_conv_of_a_fully_convolutional_net_is_never_pruned():
    model, x = FCN(), torch.randn(1, 3, 16, 16)
    pruner = LeGRPruner(model, x)
    assert [g.name for g in pruner.structure.groups] == ["body"]
    assert pruner.prune(pruner.min_flops)(x).shape == (1, 5, 16, 16)


class WithExtras(nn.Module):
    """Returns values beside its logits that are not tensors, as detection and HF-style models do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.fc = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Linear(8, 10)

    def forward(self, x):
        logits = self.fc(self.conv2(self.conv1(x)).mean((2, 3)))
        return {"logits": logits, "aux": None, "steps": 3, "tags": ("a", logits)}


def test_outputs_that_are_not_tensors_are_skipped():
    model, x = WithExtras(), torch.randn(1, 3, 16, 16)
    pruner = LeGRPruner(model, x)
    assert [g.name for g in pruner.structure.groups] == ["conv1", "conv2"]
    small = pruner.prune(0.5)
    assert small(x)["logits"].shape == (1, 10)
    assert small.conv1.out_channels < 8


@pytest.mark.parametrize("shape", [(1, 1, 32, 32), (1, 3, 20, 20), (3, 32, 32)])
def test_example_input_of_the_wrong_shape(pruner, shape):
    match = r"The example input does not run through VGGSmall: (RuntimeError|ValueError): "
    with pytest.raises(ValueError, match=match) as err:
        LeGRPruner(pruner.model, torch.randn(shape))
    assert "torch.randn(1, 3, 32, 32)" in str(err.value)


def test_transform_file_from_another_model(pruner, tmp_path):
    path = tmp_path / "resnet56.json"
    shared_pruner("resnet56_A").identity().save(path)
    with pytest.raises(ValueError, match="was learned on another model: it has 30 channel groups, this model has 7"):
        pruner.prune(0.5, Transform.load(path))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(safeguard=1.5), ValueError, r"`safeguard` must be in \[0, 1\].*got 1\.5"),
        (dict(safeguard=-0.1), ValueError, r"`safeguard` must be in \[0, 1\]"),
        (dict(round_to=0), ValueError, "`round_to` must be a positive integer, got 0"),
        (dict(round_to=2.0), ValueError, "`round_to` must be a positive integer, got 2.0"),
        (dict(criterion="l0"), ValueError, "`criterion` can be l2, l1, bn, random, uniform or a Criterion instance, got 'l0'"),
        (dict(ignored_layers=["features.99"]), ValueError, r"`ignored_layers` names 'features\.99', which is not"),
    ],
)
def test_bad_pruner_arguments(pruner, kwargs, error, match):
    with pytest.raises(error, match=match):
        LeGRPruner(pruner.model, example_input(), **kwargs)


def test_not_a_module():
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module, got function"):
        LeGRPruner(cifar_resnet, example_input())
