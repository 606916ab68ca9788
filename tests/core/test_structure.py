"""Channel groups: residual / depthwise / concat / custom-layer coupling, ignored layers, option-A
shortcuts, the model left untouched, and the base criteria."""

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from torch_pruning.pruner.function import BasePruningFunc

from lightning_legr import LeGRPruner, ZeroPadShortcut, count_flops, restore
from lightning_legr.models import cifar_resnet
from lightning_legr.core.shortcuts import ZeroPadShortcutPruner
from tests.models import (
    akamaster_resnet,
    build,
    example_input,
    randomize_bn,
    shared_pruner,
)


def producers(group):
    return {m.target for m in group.producers}


def group_with_producer(pruner, target):
    found = [g for g in pruner.structure.groups if target in producers(g)]
    assert len(found) == 1, f"{target} produces channels of {len(found)} groups"
    return found[0]


# ------------------------------------------------------------------------------ residual coupling
@pytest.mark.parametrize("name", ["resnet56_A", "resnet56_B"])
def test_resnet56_residual_groups_hold_every_conv2_of_their_stage(name):
    pruner = shared_pruner(name)
    residual = set()
    for stage in (1, 2, 3):
        group = group_with_producer(pruner, f"layer{stage}.0.conv2")
        conv2s = {f"layer{stage}.{i}.conv2" for i in range(9)}
        assert conv2s <= producers(group)
        assert group.width == 16 * 2 ** (stage - 1)
        residual.add(group.index)
    # every other group is one block's conv1, on its own
    plain = [g for g in pruner.structure.groups if g.index not in residual]
    assert sorted(g.name for g in plain) == sorted(f"layer{s}.{i}.conv1" for s in (1, 2, 3) for i in range(9))
    assert all(producers(g) == {g.name} for g in plain)
    assert len(pruner.structure.groups) == 30


def test_option_b_residual_group_contains_shortcut_conv_and_stem():
    pruner = shared_pruner("resnet56_B")
    assert {"conv1", "layer1.0.conv2"} <= producers(group_with_producer(pruner, "conv1"))
    assert "layer2.0.shortcut.0" in producers(group_with_producer(pruner, "layer2.8.conv2"))
    assert "layer3.0.shortcut.0" in producers(group_with_producer(pruner, "layer3.8.conv2"))


def test_option_a_stages_are_separate_groups():
    """The zero-pad shortcut must not tie stage-1 channels to stage-2 channels."""
    pruner = shared_pruner("resnet56_A")
    g1 = group_with_producer(pruner, "conv1")
    g2 = group_with_producer(pruner, "layer2.0.conv2")
    g3 = group_with_producer(pruner, "layer3.0.conv2")
    assert len({g1.index, g2.index, g3.index}) == 3
    shortcut_roles = {(m.target, m.role) for g in (g1, g2, g3) for m in g.members if m.target.endswith("shortcut")}
    assert shortcut_roles == {(f"layer{s}.0.shortcut", role) for s in (2, 3) for role in ("in", "out")}


def test_mobilenet_expand_and_depthwise_are_one_group():
    pruner = shared_pruner("mobilenet_v2_small")
    group = group_with_producer(pruner, "features.2.conv.0.0")  # 1x1 expand of the first t=4 block
    assert producers(group) == {"features.2.conv.0.0", "features.2.conv.1.0"}  # + its depthwise
    residual = group_with_producer(pruner, "features.3.conv.2")  # 1x1 project, added to the block input
    assert producers(residual) == {"features.2.conv.2", "features.3.conv.2"}


def test_densenet_concat_consumers_follow_their_producer():
    pruner = shared_pruner("densenet_small")
    group = group_with_producer(pruner, "features.1.conv2")  # the first layer's new features
    by_target = {(m.target, m.role): m for m in group.members}
    # the 6 new channels sit after the 10 stem channels in every later concatenation
    for consumer in ("features.2.norm1", "features.2.conv1", "features.3.norm1", "features.4.0", "features.4.2"):
        member = by_target[next(k for k in by_target if k[0] == consumer)]
        np.testing.assert_array_equal(member.positions, np.arange(10, 16))


def test_custom_parameter_is_pruned_with_its_producer():
    pruner = shared_pruner("custom_scale")
    group = group_with_producer(pruner, "conv1.0")
    (member,) = [m for m in group.members if m.target == "scale.scale"]
    assert member.is_parameter and member.param_dim == 1
    small = pruner.prune(0.4)
    assert small.scale.scale.shape == (1, small.conv1[0].out_channels, 1, 1)
    kept = np.setdiff1d(np.arange(30), pruner.select(0.4).removed[group.index])
    torch.testing.assert_close(small.scale.scale.flatten(), pruner.model.scale.scale.flatten()[kept], rtol=0, atol=0)


def test_ignoring_a_custom_layer_keeps_its_parameter():
    model = build("custom_scale")
    pruner = LeGRPruner(model, example_input(), ignored_layers=["scale"])
    small = pruner.prune(pruner.min_flops)
    assert small.scale.scale.shape == (1, 30, 1, 1)
    assert small.conv1[0].out_channels == 30


# ------------------------------------------------------------------------------- ignored layers
@pytest.mark.parametrize("by", ["name", "module"])
def test_ignored_layer_keeps_its_widths(by):
    model = randomize_bn(cifar_resnet(20, shortcut="B")).eval()
    layer = "layer1.0.conv1" if by == "name" else model.layer1[0].conv1
    pruner = LeGRPruner(model, example_input(), ignored_layers=[layer])
    names = [g.name for g in pruner.structure.groups]
    assert "layer1.0.conv1" not in names and "conv1" not in names  # its own filters and its input (stage 1)
    assert {n for n, _ in pruner.structure.skipped} == {"conv1", "layer1.0.conv1", "linear"}  # + the classifier
    for budget in (pruner.min_flops, 0.5):
        small = pruner.prune(budget)
        assert (small.layer1[0].conv1.in_channels, small.layer1[0].conv1.out_channels) == (16, 16)
        assert small.layer1[1].conv1.out_channels < 16  # the rest is still pruned
        small(example_input())


def test_unknown_ignored_layer_name_is_refused():
    with pytest.raises(ValueError, match=r"layer1\.0\.conv9.*not a module"):
        LeGRPruner(cifar_resnet(20), example_input(), ignored_layers=["layer1.0.conv9"])


# ---------------------------------------------------------------------------- model left untouched
def test_building_and_pruning_leave_the_model_untouched():
    model = randomize_bn(cifar_resnet(20, shortcut="B"))
    model.train()
    model.layer1.eval()  # mixed flags: each must survive as it was
    model.layer2[1].bn2.eval()
    flags = {n: m.training for n, m in model.named_modules()}
    state = copy.deepcopy(model.state_dict())
    pruner = LeGRPruner(model, example_input())
    small = pruner.prune(0.4)
    small(example_input()).sum().backward()
    assert {n: m.training for n, m in model.named_modules()} == flags
    after = model.state_dict()
    assert after.keys() == state.keys()
    for key, value in state.items():
        assert after[key].shape == value.shape and torch.equal(after[key], value), key
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert pruner.model is model


# ---------------------------------------------------------------------------------- option A
def test_cifar_resnet_a_matches_the_akamaster_reference_closely():
    torch.manual_seed(0)
    reference = randomize_bn(akamaster_resnet(56)).eval()
    ours = cifar_resnet(56, shortcut="A").eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-6)


def test_zero_pad_shortcut_is_exactly_the_fpad_shortcut():
    torch.manual_seed(0)
    reference = randomize_bn(akamaster_resnet(56)).eval()
    zeropad = akamaster_resnet(56, use_fpad=False).eval()
    zeropad.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(zeropad(x), reference(x))


def test_cifar_resnet_a_is_bitwise_identical_to_the_akamaster_reference():
    torch.manual_seed(0)
    reference = randomize_bn(akamaster_resnet(56)).eval()
    ours = cifar_resnet(56, shortcut="A").eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(ours(x), reference(x))


def test_fpad_shortcut_is_pruned_with_its_stages_apart():
    """Refused before ("replace it with ZeroPadShortcut"): now recognized as written."""
    pruner = LeGRPruner(randomize_bn(akamaster_resnet(20)).eval(), example_input())
    assert [(op.target, op.in_channels, op.out_channels) for op in pruner.structure.channel_ops] == [
        ("layer2.0.shortcut@0", 16, 32), ("layer3.0.shortcut@0", 32, 64)
    ]
    g1 = group_with_producer(pruner, "conv1")
    g2 = group_with_producer(pruner, "layer2.0.conv2")
    assert g1.index != g2.index and g1.width == 16 and g2.width == 32
    assert {(m.target, m.role) for m in g1.members if "@" in m.target} == {("layer2.0.shortcut@0", "in")}
    small = pruner.prune(0.4)
    assert small(example_input()).shape == (1, 10)
    assert small.layer2[0].conv2.out_channels < 32 and small.conv1.out_channels < 16


def test_option_a_stage_widths_are_pruned_independently():
    pruner = shared_pruner("resnet56_A")
    g1 = group_with_producer(pruner, "conv1").index
    g2 = group_with_producer(pruner, "layer2.0.conv2").index
    x = torch.randn(2, 3, 32, 32)
    widths = {}
    for protected in (g1, g2):
        kappa = np.zeros(pruner.num_groups)
        kappa[protected] = 1e6  # never pruned
        transform = pruner.identity()
        transform.kappa = kappa
        small = pruner.prune(0.5, transform)
        small(x).sum().backward()
        s1, s2 = small.conv1.out_channels, small.layer2[0].conv2.out_channels
        assert small.layer2[0].shortcut.in_channels == s1 == small.layer1[8].conv2.out_channels
        assert small.layer2[0].shortcut.out_channels == s2 == small.layer2[8].conv2.out_channels
        assert small.layer3[0].shortcut.in_channels == s2
        widths[protected] = (s1, s2)
    assert widths[g1][0] == 16 and widths[g1][1] < 32
    assert widths[g2][1] == 32 and widths[g2][0] < 16
    # and the plain budget: both shrink, each by its own amount
    small = pruner.prune(0.5)
    assert small(x).shape == (2, 10)
    assert count_flops(small, x[:1]) <= 0.5 * pruner.total_flops


def test_zero_pad_shortcut_pruner_keeps_the_surviving_channels_in_place():
    torch.manual_seed(0)
    full = ZeroPadShortcut(8, 16, stride=2)
    x = torch.randn(2, 8, 6, 6)
    removed_in, removed_out = [1, 6], [0, 5, 9, 15]  # out 5 and 9 carry inputs 1 and 5
    pruned = ZeroPadShortcutPruner().prune_out_channels(copy.deepcopy(full), removed_out)
    pruned = ZeroPadShortcutPruner().prune_in_channels(pruned, removed_in)
    kept_in = [c for c in range(8) if c not in removed_in]
    kept_out = [c for c in range(16) if c not in removed_out]
    masked = x.clone()
    masked[:, removed_in] = 0
    expected = full(masked)[:, kept_out]
    assert (pruned.in_channels, pruned.out_channels) == (6, 12)
    assert torch.equal(pruned(x[:, kept_in]), expected)
    assert expected[:, kept_out.index(4)].abs().sum() > 0  # a surviving input channel really lands


# ------------------------------------------------------------------------------------ criteria
class Tiny(nn.Module):
    def __init__(self, bn2: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 2, bias=False)
        self.bn1 = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 2, 1)
        self.bn2 = nn.BatchNorm2d(2) if bn2 else nn.Identity()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            if bn2:
                self.bn2.weight.copy_(torch.tensor([3.0, -4.0]))
            self.conv1.weight.copy_(
                torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[-1.0, 0.0], [0.0, 0.0]]], [[[0.5, 0.5], [0.5, -0.5]]]])
            )
            self.bn1.weight.copy_(torch.tensor([-2.0, 0.5, 1.0]))
            self.conv2.weight.copy_(torch.tensor([[1.0, -1.0, 2.0], [0.0, 3.0, 0.0]]).view(2, 3, 1, 1))

    def forward(self, x):
        x = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize(
    "criterion, conv1, conv2",
    [("l2", [30.0, 1.0, 1.0], [6.0, 9.0]), ("l1", [10.0, 1.0, 2.0], [4.0, 3.0]), ("bn", [2.0, 0.5, 1.0], [3.0, 4.0])],
)
def test_criteria_by_hand(criterion, conv1, conv2):
    pruner = LeGRPruner(Tiny(bn2=criterion == "bn"), torch.randn(1, 1, 5, 5), criterion=criterion)
    scores = {g.name: s for g, s in zip(pruner.structure.groups, pruner.base_scores)}
    assert scores.keys() == {"conv1", "conv2"}
    np.testing.assert_allclose(scores["conv1"], conv1, rtol=1e-6)
    np.testing.assert_allclose(scores["conv2"], conv2, rtol=1e-6)
    assert pruner.identity().criterion == criterion


def test_bn_criterion_needs_a_batchnorm_in_every_group():
    with pytest.raises(ValueError, match="'bn' found nothing to score in group 'conv2'"):
        LeGRPruner(Tiny(), torch.randn(1, 1, 5, 5), criterion="bn")


def test_lowest_scored_filter_goes_first():
    pruner = LeGRPruner(Tiny(), torch.randn(1, 1, 5, 5), safeguard=0.0)
    (g,) = [g for g in pruner.structure.groups if g.name == "conv1"]
    kappa = np.zeros(pruner.num_groups)
    kappa[g.index] = -1e6  # conv1's channels rank below everything else
    transform = pruner.identity()
    transform.kappa = kappa
    selection = pruner.select(0.9, transform)
    assert list(selection.removed[g.index]) == [1]  # the smallest filter (l2 = 1, tie broken by index)


@pytest.mark.parametrize("criterion", ["l2", "l1", "bn"])
def test_residual_group_score_is_the_mean_over_its_filters(criterion):
    torch.manual_seed(0)
    model = randomize_bn(cifar_resnet(20, shortcut="B")).eval()
    pruner = LeGRPruner(model, example_input(), criterion=criterion)

    def per_filter(conv, bn):
        w = conv.weight.detach().double().flatten(1)
        return {"l2": w.pow(2).sum(1), "l1": w.abs().sum(1), "bn": bn.weight.detach().double().abs()}[criterion]

    stage1 = [(model.conv1, model.bn1)] + [(b.conv2, b.bn2) for b in model.layer1]
    stage2 = [tuple(model.layer2[0].shortcut)] + [(b.conv2, b.bn2) for b in model.layer2]
    for members, target in ((stage1, "conv1"), (stage2, "layer2.0.shortcut.0")):
        expected = torch.stack([per_filter(c, b) for c, b in members]).mean(0).numpy()
        assert len(members) == 4
        np.testing.assert_allclose(pruner.base_scores[group_with_producer(pruner, target).index], expected, rtol=1e-6)
    plain = group_with_producer(pruner, "layer3.1.conv1")
    np.testing.assert_allclose(
        pruner.base_scores[plain.index], per_filter(model.layer3[1].conv1, model.layer3[1].bn1).numpy(), rtol=1e-6
    )


def test_unknown_criterion_is_refused():
    with pytest.raises(ValueError, match=r"`criterion` can be l2, l1, bn.*got 'l3'"):
        LeGRPruner(cifar_resnet(20), example_input(), criterion="l3")


# ---------------------------------------------------------------------- nothing is skipped silently
class Mixed(nn.Module):
    """One layer for each reason a layer's channels are not prunable, beside prunable ones."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.kept = nn.Conv2d(8, 8, 3, padding=1)  # ignored by the user
        self.shuffled = nn.Conv2d(8, 8, 1)  # its output goes through a channel shuffle
        self.after = nn.Conv2d(8, 16, 1)
        self.unused = nn.Conv2d(16, 4, 1)  # never called
        self.hidden = nn.Linear(16, 12)
        self.head = nn.Linear(12, 10)

    def forward(self, x):
        x = self.kept(torch.relu(self.stem(x)))
        x = self.after(F.channel_shuffle(self.shuffled(x), 2))
        return self.head(torch.relu(self.hidden(x.mean((2, 3)))))


def test_summary_says_for_every_conv_and_linear_whether_and_why():
    torch.manual_seed(0)
    pruner = LeGRPruner(Mixed(), torch.randn(1, 3, 8, 8), ignored_layers=["kept"])
    rows = {r["name"]: r for r in pruner.structure.layer_table()}
    assert list(rows) == ["stem", "kept", "shuffled", "after", "unused", "hidden", "head"]
    assert [n for n, r in rows.items() if r["prunable"]] == ["after", "hidden"]
    assert rows["stem"]["reason"] == "it touches ignored layer 'kept'"
    assert rows["kept"]["reason"] == "ignored by the user (`ignored_layers`)"
    assert rows["shuffled"]["reason"] == (
        "its channels pass through channel_shuffle in the model's own forward, which moves channels in a way the"
        " tracer cannot follow"
    )
    assert rows["unused"]["reason"].startswith("not traced: the example input does not run it")
    assert rows["head"]["reason"] == "its channels are outputs of the model"
    assert rows["hidden"]["input_groups"] == [rows["after"]["group"]]
    json.dumps(rows)  # JSON-able as it is
    text = pruner.structure.summary()
    assert all(name in text for name in rows) and "not prunable: its channels are outputs of the model" in text
    assert text.startswith("Mixed: 2 prunable channel groups, 28 channels; 2 of 7 conv/linear layers")


def test_summary_lists_the_recognized_shortcuts_and_grouped_steps():
    from tests.zoo import build_zoo

    pruner = LeGRPruner(build_zoo("option_a_legr_cat_zeros"), example_input())
    text = pruner.structure.summary()
    assert "recognized torch.cat with zero channels in features.2.0.shortcut's forward (call 0): 16 -> 32 channels" in text
    grouped = LeGRPruner(build_zoo("resnext_c4"), example_input()).structure
    assert "layers.0.0.conv2" in grouped.summary() and "(steps of 4)" in grouped.summary()
    assert "in steps of 4" in grouped.describe()


class Multiplier(nn.Module):
    """A depthwise conv with a channel multiplier (groups = in_channels < out_channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.dw, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 8, 3, padding=1, groups=4), nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(self.b(self.dw(self.a(x))).mean((2, 3)))


def test_a_group_tied_into_one_step_is_reported():
    pruner = LeGRPruner(Multiplier(), torch.randn(1, 3, 8, 8))
    rows = {r["name"]: r for r in pruner.structure.layer_table()}
    assert rows["a"]["reason"] == "the grouped layers it feeds ('dw' (groups=4)) tie all its 4 channels into one step"
    assert rows["dw"]["prunable"] and rows["dw"]["step"] == 4  # its output: 2 per group, offsets 0 and 1
    assert pruner.prune(pruner.min_flops).dw.out_channels == 4


class Straddle(nn.Module):
    """A grouped conv whose groups take 3 channels of one producer and 1 of another."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 2, 1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.g(torch.cat([self.a(x), self.b(x)], 1)).mean((2, 3)))


def test_grouped_conv_groups_that_mix_producers_are_reported():
    pruner = LeGRPruner(Straddle(), torch.randn(1, 3, 8, 8))
    rows = {r["name"]: r for r in pruner.structure.layer_table()}
    for name in ("a", "b"):
        assert rows[name]["reason"] == (
            "Conv2d 'g' (groups=2) has channels of this group and of others at the same in-group offset, so no"
            " offset can be removed from all its groups"
        )
    assert rows["g"]["prunable"]


# -------------------------------------------------------------------------- clear failures, by name
class Double(torch.autograd.Function):
    """A user's op that torch-pruning treats as element-wise although it doubles the channels."""

    @staticmethod
    def forward(ctx, x):
        return torch.cat([x, x], 1)

    @staticmethod
    def backward(ctx, grad):
        half = grad.shape[1] // 2
        return grad[:, :half] + grad[:, half:]


class Doubling(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 8, 1)
        self.c, self.fc = nn.Conv2d(8, 4, 1), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.c(Double.apply(self.a(x)) + self.b(x)).mean((2, 3)))


def test_an_op_the_tracer_cannot_follow_is_named_not_an_index_error():
    with pytest.raises(ValueError, match=r"Cannot follow the channels of 'b' in Doubling: they reach 'a' \(4 channels\)"
                       r" as channel 7, through the output of DoubleBackward, an operation") as err:
        LeGRPruner(Doubling(), torch.randn(1, 3, 8, 8))
    assert "`ignored_layers`" in str(err.value)


class RunningScale(nn.Module):
    """A custom layer with a per-channel buffer torch-pruning cannot know about."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.linspace(0.5, 1.5, channels).view(1, -1, 1, 1))

    def forward(self, x):
        return x * self.scale


class WithBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.norm, self.b, self.fc = nn.Conv2d(3, 8, 1), RunningScale(8), nn.Conv2d(8, 4, 1), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.b(self.norm(self.a(x))).mean((2, 3)))


def test_a_layer_that_breaks_once_pruned_is_named_when_the_pruner_is_built():
    with pytest.raises(ValueError, match=r"WithBuffer does not run once pruned: 'b' \(Conv2d\) fails with"
                       r" RuntimeError: .* 'norm' \(RunningScale\) keeps per-channel buffers .* give it a pruner"):
        LeGRPruner(WithBuffer(), torch.randn(1, 3, 8, 8))


class RunningScalePruner(BasePruningFunc):
    """The recipe of docs/supported-architectures.md, "Prune a custom layer"."""

    TARGET_MODULES = RunningScale

    def prune_out_channels(self, layer, idxs):
        keep = [i for i in range(layer.scale.shape[1]) if i not in set(idxs)]
        layer.scale = layer.scale[:, keep].clone()
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer):
        return layer.scale.shape[1]

    get_in_channels = get_out_channels


def test_a_layer_with_a_buffer_prunes_with_its_pruner():
    pruners = {RunningScale: RunningScalePruner()}
    torch.manual_seed(0)
    model, x = WithBuffer().eval(), torch.randn(2, 3, 8, 8)
    small = LeGRPruner(model, x[:1], customized_pruners=pruners).prune(0.4).eval()
    assert small.norm.scale.shape[1] == small.a.out_channels < 8
    rebuilt = restore(WithBuffer(), state_dict=small.state_dict(), customized_pruners=pruners).eval()
    assert torch.equal(rebuilt(x), small(x))


def test_bn_criterion_on_linear_hidden_features_says_what_to_do():
    from tests.models import vgg_small

    model = vgg_small().eval()
    with pytest.raises(ValueError, match=r"'bn' found nothing to score in group 'classifier.1'.*'l2', 'l1'"):
        LeGRPruner(model, example_input(), criterion="bn")
    ignoring = LeGRPruner(model, example_input(), criterion="bn", ignored_layers=["classifier.1"])
    assert ignoring.num_groups == 5  # the hidden layer, and the last conv whose channels it reads
