"""Selection and surgery: exact FLOP budgets, physical removal, agreement with torch-pruning,
restoring pruned models, round_to and the safeguard."""

import copy
import io
import math
import warnings

import numpy as np
import pytest
import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F

from lightning_legr import LeGRPruner, ZeroPadShortcut, count_flops, count_params, prune, pruning_record, restore
from lightning_legr.models import cifar_resnet
from lightning_legr.core.shortcuts import ZeroPadShortcutPruner
from tests.models import ARCHITECTURES, build, example_input, shared_pruner, vgg_small

BUDGETS = [round(0.1 * k, 1) for k in range(1, 10)]


def random_transform(pruner, seed):
    rng = np.random.default_rng(seed)
    transform = pruner.identity()
    transform.alpha = np.exp(rng.normal(0, 1, pruner.num_groups))
    transform.kappa = rng.normal(0, 1, pruner.num_groups) * pruner.score_spread()
    return transform


def shapes(model):
    return {k: v.shape for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def convs(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def out_width(model, name):
    layer = model.get_submodule(name)
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


# --------------------------------------------------------------------------------- exact budgets
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_budget_is_met_exactly(name, budget):
    pruner = shared_pruner(name)
    x = example_input()
    original = count_flops(pruner.model, x)
    assert pruner.total_flops == original
    selection = pruner.select(budget)
    small = pruner.apply(selection)
    measured = count_flops(small, x)
    assert measured <= budget * original * (1 + 1e-9)
    assert abs(measured - budget * original) <= 0.01 * budget * original
    assert selection.flops == measured  # the analytic model is exact
    assert selection.ratio == pytest.approx(measured / original, rel=1e-12)
    outputs = [r["name"] for r in pruner.structure.layer_table() if not r["prunable"]]
    assert outputs and all(out_width(small, n) == out_width(pruner.model, n) for n in outputs)  # the classifier
    assert small(x).shape == (1, 10)


@pytest.mark.parametrize("name", ["vgg_small", "densenet_small", "resnet56_B"])
def test_budget_is_met_under_a_learned_transform(name):
    pruner = shared_pruner(name)
    x = example_input()
    for seed, budget in enumerate((0.25, 0.5, 0.75)):
        selection = pruner.select(budget, random_transform(pruner, seed))
        measured = count_flops(pruner.apply(selection), x)
        assert measured == selection.flops
        assert 0.99 * budget * pruner.total_flops <= measured <= budget * pruner.total_flops * (1 + 1e-9)


def test_transform_changes_which_channels_go():
    pruner = shared_pruner("resnet56_B")
    plain = pruner.select(0.5)
    learned = pruner.select(0.5, random_transform(pruner, 0))
    assert not np.array_equal(plain.widths, learned.widths)


# ------------------------------------------------------------------------------ physical removal
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_filters_are_physically_removed_and_the_copy_trains(name):
    pruner = shared_pruner(name)
    original = pruner.model
    before = copy.deepcopy(original.state_dict())
    small = pruner.prune(0.5)
    assert small is not original
    assert count_params(small) < count_params(original)
    full, pruned = convs(original), convs(small)
    assert full.keys() == pruned.keys()
    assert all(pruned[n].out_channels <= full[n].out_channels for n in full)
    assert sum(pruned[n].out_channels < full[n].out_channels for n in full) >= len(pruner.structure.groups) // 2
    for n, conv in pruned.items():  # weights agree with the declared shapes
        assert conv.weight.shape[:2] == (conv.out_channels, conv.in_channels // conv.groups), n
    small.train()
    x = torch.randn(4, 3, 32, 32)
    loss = F.cross_entropy(small(x), torch.arange(4))
    loss.backward()
    grads = [p.grad for p in small.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    after = original.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert all(p.grad is None for p in original.parameters())


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_full_budget_is_the_identity(name):
    pruner = shared_pruner(name)
    selection = pruner.select(1.0)
    assert all(len(r) == 0 for r in selection.removed)
    assert np.array_equal(selection.widths, pruner.structure.widths)
    same = pruner.prune(1.0)
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(same.eval()(x), pruner.model.eval()(x))
    assert shapes(same) == shapes(pruner.model)


def test_prune_function_equals_pruner():
    model, x = build("vgg_small"), example_input()
    a = prune(model, x, flops=0.4, criterion="l1")
    b = LeGRPruner(model, x, criterion="l1").prune(0.4)
    assert shapes(a) == shapes(b)
    y = torch.randn(2, 3, 32, 32)
    assert torch.equal(a.eval()(y), b.eval()(y))


def test_sequential_model_is_pruned_and_runs():
    """A top-level nn.Sequential runs every child in order: pruning must not add a child module."""
    model = nn.Sequential(*vgg_small().features, *vgg_small().classifier)
    x = example_input()
    small = prune(model, x, flops=0.5)
    assert small(x).shape == (1, 10)
    assert count_flops(small, x) <= 0.5 * count_flops(model, x)


# ----------------------------------------------------------------------- agreement with torch-pruning
def torch_pruning_copy(pruner, selection):
    """Prune a deep copy the torch-pruning way: one DependencyGraph group per LeGR group."""
    model = copy.deepcopy(pruner.model)
    customized = {ZeroPadShortcut: ZeroPadShortcutPruner(), **(pruner.customized_pruners or {})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = tp.DependencyGraph().build_dependency(
            model, example_input(), customized_pruners=customized, verbose=False
        )
    modules = dict(model.named_modules())
    for group, removed in zip(pruner.structure.groups, selection.removed):
        if len(removed) == 0:
            continue
        root = modules[group.name]
        depthwise = root.groups > 1 and root.groups == root.out_channels
        fn = tp.prune_depthwise_conv_out_channels if depthwise else tp.prune_conv_out_channels
        tp_group = graph.get_pruning_group(root, fn, [int(i) for i in removed])
        assert graph.check_pruning_group(tp_group)
        tp_group.prune()
    return model


@pytest.mark.parametrize(
    "name", ["resnet56_B", "densenet_small", "mobilenet_v2_small", "akamaster_resnet20_zeropad", "custom_scale_pruner"]
)
def test_surgery_agrees_with_torch_pruning(name):
    pruner = shared_pruner(name)
    x = torch.randn(2, 3, 32, 32)
    for budget, transform in ((0.3, None), (0.6, random_transform(pruner, 1))):
        selection = pruner.select(budget, transform)
        ours = pruner.apply(selection).eval()
        theirs = torch_pruning_copy(pruner, selection).eval()
        a, b = ours.state_dict(), theirs.state_dict()
        b_keys = set(b)
        assert {k for k in a if k in b_keys} == b_keys  # ours may add the pruning record
        for key in b:
            assert a[key].shape == b[key].shape and torch.equal(a[key], b[key]), key
        buffers = dict(theirs.named_buffers())  # includes ZeroPadShortcut's non-persistent mapping
        for key, value in ours.named_buffers():
            if key in buffers:
                assert torch.equal(value, buffers[key]), key
        assert torch.equal(ours(x), theirs(x))


# ------------------------------------------------------------------------------------- restore
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_restore_rebuilds_the_pruned_model(name, tmp_path):
    pruner = shared_pruner(name)
    small = pruner.prune(0.45, random_transform(pruner, 2)).eval()
    record = pruning_record(small)
    assert record is not None and len(record["steps"]) == 1
    builder, customized = ARCHITECTURES[name]
    x = torch.randn(2, 3, 32, 32)
    rebuilt = restore(builder(), record, small.state_dict(), customized_pruners=customized).eval()
    assert torch.equal(rebuilt(x), small(x))
    torch.save({"record": record, "state_dict": small.state_dict()}, tmp_path / "pruned.pt")
    loaded = torch.load(tmp_path / "pruned.pt", weights_only=True)  # the record is plain data
    rebuilt = restore(builder(), loaded["record"], loaded["state_dict"], customized_pruners=customized).eval()
    assert torch.equal(rebuilt(x), small(x))
    assert count_flops(rebuilt, x[:1]) == count_flops(small, x[:1])


def test_restore_after_pruning_twice():
    model, x = build("resnet56_B"), example_input()
    once = shared_pruner("resnet56_B").prune(0.7)
    twice = LeGRPruner(once, x).prune(0.5).eval()
    record = pruning_record(twice)
    assert [s["budget"] for s in record["steps"]] == [0.7, 0.5]
    assert count_flops(twice, x) <= 0.5 * 0.7 * count_flops(model, x) * (1 + 1e-9)
    buffer = io.BytesIO()
    torch.save((record, twice.state_dict()), buffer)
    buffer.seek(0)
    record, state = torch.load(buffer, weights_only=True)
    rebuilt = restore(cifar_resnet(56, shortcut="B"), record, state).eval()
    y = torch.randn(2, 3, 32, 32)
    assert torch.equal(rebuilt(y), twice(y))


def test_restore_refuses_an_already_pruned_model():
    small = shared_pruner("resnet56_B").prune(0.5)
    with pytest.raises(ValueError, match="already pruned"):
        restore(small, pruning_record(small), small.state_dict())
    rebuilt = restore(cifar_resnet(56, shortcut="B"), pruning_record(small), small.state_dict())
    with pytest.raises(ValueError, match="already pruned"):
        restore(rebuilt, pruning_record(small))


def test_restore_refuses_a_record_from_another_architecture():
    small = shared_pruner("resnet56_B").prune(0.5)
    with pytest.raises(ValueError, match=r"made on a CifarResNet with 855770 parameters.*another architecture"):
        restore(cifar_resnet(56, shortcut="A"), pruning_record(small))
    with pytest.raises(ValueError, match="another"):
        restore(vgg_small(), pruning_record(small))
    with pytest.raises(ValueError, match="Not a lightning-legr pruning record"):
        restore(cifar_resnet(56), {"steps": []})


def test_restore_refuses_a_record_from_a_shallower_resnet():
    small = prune(cifar_resnet(20, shortcut="B"), example_input(), flops=0.5)
    with pytest.raises(ValueError):
        restore(cifar_resnet(56, shortcut="B"), pruning_record(small))


# ------------------------------------------------------------------------- round_to and safeguard
@pytest.mark.parametrize("name", ["vgg_small", "densenet_small", "mobilenet_v2_small"])
def test_round_to_keeps_widths_multiples(name):
    base = shared_pruner(name)
    pruner = LeGRPruner(base.model, example_input(), round_to=4, customized_pruners=ARCHITECTURES[name][1])
    full = pruner.structure.widths
    x = example_input()
    for budget in (pruner.min_flops, 0.3, 0.5, 0.8):
        selection = pruner.select(budget)
        assert all(w % 4 == 0 or w == f for w, f in zip(selection.widths, full)), (budget, selection.widths, full)
        assert (selection.widths < full).any()
        small = pruner.apply(selection)
        assert count_flops(small, x) == selection.flops <= budget * pruner.total_flops * (1 + 1e-9)
        assert all(out_width(small, g.name) == w for g, w in zip(pruner.structure.groups, selection.widths))


class Wide(nn.Module):
    """Widths whose tenth is an integer (30 -> 3, not ceil(3.0000000000000004) = 4), or not."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 30, 3, padding=1)
        self.b = nn.Conv2d(30, 31, 3, padding=1)
        self.c = nn.Conv2d(31, 7, 3, padding=1)
        self.fc = nn.Linear(7, 10)

    def forward(self, x):
        return self.fc(self.c(F.relu(self.b(F.relu(self.a(x))))).mean((2, 3)))


@pytest.mark.parametrize("safeguard", [0.1, 0.25])
def test_safeguard_and_min_flops(safeguard):
    torch.manual_seed(0)
    model, x = Wide(), torch.randn(1, 3, 8, 8)
    pruner = LeGRPruner(model, x, safeguard=safeguard)
    widths = pruner.structure.widths
    floor = np.array([max(math.ceil(round(safeguard * w, 9)), 1) for w in widths])  # exact decimal ceil
    assert list(floor) == ([3, 4, 1] if safeguard == 0.1 else [8, 8, 2])
    # the smallest reachable budget keeps exactly the safeguard
    selection = pruner.select(pruner.min_flops)
    assert np.array_equal(selection.widths, floor)
    small = pruner.apply(selection)
    assert count_flops(small, x) == selection.flops == pytest.approx(pruner.min_flops * pruner.total_flops, rel=1e-12)
    for budget in (0.2, 0.5, 0.9):
        if budget >= pruner.min_flops:
            assert (pruner.select(budget).widths >= floor).all()
    just_below = pruner.min_flops - 1e-3
    with pytest.raises(ValueError, match="cannot be reached") as err:
        pruner.select(just_below)
    assert f"{pruner.min_flops:.4f}" in str(err.value)
    assert "safeguard" in str(err.value)


def test_min_flops_is_reachable_on_resnet56():
    pruner, x = shared_pruner("resnet56_A"), example_input()
    small = pruner.prune(pruner.min_flops)
    assert count_flops(small, x) <= pruner.min_flops * pruner.total_flops * (1 + 1e-9)
    assert small(x).shape == (1, 10)
    with pytest.raises(ValueError, match=f"{pruner.min_flops:.4f}"):
        pruner.select(pruner.min_flops * 0.99)


def test_zero_safeguard_still_keeps_one_channel():
    model, x = Wide(), torch.randn(1, 3, 8, 8)
    pruner = LeGRPruner(model, x, safeguard=0.0)
    assert list(pruner.select(pruner.min_flops).widths) == [1, 1, 1]


# ------------------------------------------------------------------------------ FLOP model limits
class SharedHead(nn.Module):
    """One conv applied at two resolutions (like a detection head shared across FPN levels)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        fine = F.relu(self.stem(x))
        coarse = F.avg_pool2d(fine, 2)
        y = F.relu(self.head(coarse)).mean((2, 3)) + F.relu(self.head(fine)).mean((2, 3))
        return self.fc(y)


def test_budget_is_met_for_a_layer_called_at_two_resolutions():
    torch.manual_seed(0)
    model, x = SharedHead(), torch.randn(1, 3, 32, 32)
    pruner = LeGRPruner(model, x)
    for budget in (0.3, 0.6):
        selection = pruner.select(budget)
        measured = count_flops(pruner.apply(selection), x)
        assert measured <= budget * pruner.total_flops * (1 + 1e-9)
        assert measured == selection.flops
    assert 0 < pruner.min_flops < 0.2  # today: negative


def test_torchvision_resnet50():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model, x = torchvision.models.resnet50(num_classes=10).eval(), torch.randn(1, 3, 64, 64)
    pruner = LeGRPruner(model, x)
    original = count_flops(model, x)
    for budget in (0.3, 0.6):
        small = pruner.prune(budget)
        measured = count_flops(small, x)
        assert 0.99 * budget * original <= measured <= budget * original * (1 + 1e-9)
        assert small(x).shape == (1, 10)
    rebuilt = restore(torchvision.models.resnet50(num_classes=10), pruning_record(small), small.state_dict()).eval()
    assert torch.equal(rebuilt(x), small.eval()(x))
