"""The evaluation fast path: BatchNorm folded and the memory format chosen, with the same numbers."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_legr import LeGRPruner
from lightning_legr.core.fastpath import FastPath, fold_batchnorms, foldable_batchnorms
from lightning_legr.models import cifar_resnet

BATCH = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
TARGETS = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(1))


def with_statistics(model: nn.Module) -> nn.Module:
    """BatchNorms with running statistics and affine parameters far from the identity, as after training."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=generator) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                    m.bias.copy_(torch.rand(m.num_features, generator=generator) - 0.5)
    return model.eval()


def loss(model: nn.Module) -> float:
    with torch.inference_mode():
        return F.cross_entropy(model.eval()(BATCH), TARGETS).item()


@pytest.fixture(scope="module")
def resnet():
    return with_statistics(cifar_resnet(20))


@pytest.mark.parametrize("memory_format", ["auto", "channels_last", "contiguous"])
def test_fast_fitness_equals_the_plain_one_on_a_pruned_resnet(resnet, memory_format):
    pruner = LeGRPruner(resnet, BATCH[:1])
    before = copy.deepcopy(resnet.state_dict())
    fast = FastPath(memory_format)
    decision = fast.decide(pruner.prune(0.5), BATCH)
    assert decision["fold_batchnorm"] == 19  # every BatchNorm of a ResNet-20 follows its own convolution
    assert decision["memory_format"] in ("channels_last", "contiguous")
    if memory_format != "auto":
        assert decision["memory_format"] == memory_format and "seconds_per_batch" not in decision
    else:
        assert set(decision["seconds_per_batch"]) <= {"contiguous", "channels_last"}
    for budget in (0.3, 0.5, 0.8):
        plain, candidate = pruner.prune(budget), pruner.prune(budget)
        fast.prepare(candidate)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in candidate.modules())
        assert loss(candidate) == pytest.approx(loss(plain), rel=1e-5, abs=1e-6)
        with torch.inference_mode():
            assert torch.allclose(candidate(BATCH), plain.eval()(BATCH), rtol=1e-4, atol=1e-4)
        if decision["memory_format"] == "channels_last":
            assert candidate.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    # the model the pruner holds (the user's) is as it was
    assert all(torch.equal(before[k], v) for k, v in resnet.state_dict().items())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in resnet.modules()) == 19


class SharedOutput(nn.Module):
    """conv1's output feeds its BatchNorm and the sum; bn2 is called twice; bn3 follows an addition."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv4, self.bn4 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x):
        a = self.conv1(x)
        b = self.bn1(a) + a
        c = self.bn2(self.bn2(self.conv2(b)))
        d = self.bn3(self.conv3(c) + c)
        return self.bn4(self.conv4(d)).mean((2, 3))


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)

    def forward(self, x):
        if x.sum() > 0:  # control flow on a value: fx cannot trace it
            x = -x
        return self.bn(self.conv(x)).mean((2, 3))


def test_batchnorms_that_cannot_be_folded_are_left_alone():
    model = with_statistics(SharedOutput())
    assert foldable_batchnorms(model) == [("conv4", "bn4")]  # only the plain conv -> BatchNorm
    fast = FastPath("contiguous")
    expected = copy.deepcopy(model)
    assert fast.decide(copy.deepcopy(model), BATCH)["fold_batchnorm"] == 1
    candidate = fast.prepare(copy.deepcopy(model))
    assert [n for n, m in candidate.named_modules() if isinstance(m, nn.BatchNorm2d)] == ["bn1", "bn2", "bn3"]
    assert isinstance(candidate.bn4, nn.Identity)
    with torch.inference_mode():
        assert torch.allclose(candidate.eval()(BATCH), expected(BATCH), rtol=1e-5, atol=1e-5)

    untraceable = with_statistics(Untraceable())
    assert foldable_batchnorms(untraceable) == []
    assert FastPath("contiguous").decide(copy.deepcopy(untraceable), BATCH)["fold_batchnorm"] == 0


class FlattensWithView(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 32 * 32, 10)

    def forward(self, x):
        return self.fc(self.conv(x).view(x.shape[0], -1))  # raises on channels_last activations


def test_auto_keeps_contiguous_when_channels_last_fails():
    decision = FastPath("auto").decide(FlattensWithView(), BATCH)
    assert decision["memory_format"] == "contiguous" and decision["seconds_per_batch"] == {}


def test_fold_keeps_a_conv_bias_and_works_without_affine():
    conv, norm = nn.Conv2d(3, 5, 1, bias=True), nn.BatchNorm2d(5, affine=False)
    model = with_statistics(nn.Sequential(conv, norm))
    norm.running_var.fill_(2.0)
    expected = copy.deepcopy(model)
    assert fold_batchnorms(model, foldable_batchnorms(model)) == 1 and isinstance(model[1], nn.Identity)
    with torch.no_grad():
        assert torch.allclose(model(BATCH), expected(BATCH), atol=1e-5)


def test_fast_path_checks_its_arguments():
    with pytest.raises(ValueError, match="`memory_format` can be auto, channels_last, contiguous, got 'nhwc'"):
        FastPath("nhwc")
    with pytest.raises(RuntimeError, match="needs a decision"):
        FastPath().prepare(nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="Not a fast-path decision"):
        FastPath().load({"memory_format": "nhwc"})
