"""The torch-pruning extension alone (core/graph.py): channel padding recognized while tracing,
replayed in a pruned model, hand-written LayerNorms, and ops whose channel mapping cannot be followed."""

import copy
import pickle
import warnings

import pytest
import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F

from lightning_legr.core.graph import (
    ChannelPad,
    ExtendedGraph,
    LayerNormLikePruner,
    default_pruners,
    install_channel_op,
    installed_channel_op,
)
from lightning_legr.core.shortcuts import PlacementPruner
from lightning_legr.core.structure import run_model
from tests.zoo import LayerNorm


class Padded(nn.Module):
    """conv a (4) -> channel placement -> + conv b (8) -> conv c: the placement is ``how``."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 5, 1)
        self.register_buffer("zero_buffer", torch.zeros(1, 4, 1, 1))
        self.how = how

    def forward(self, x):
        y = self.a(x)
        if self.how == "pad":
            y = F.pad(y, (0, 0, 0, 0, 3, 1))
        elif self.how == "pad_spatial_too":
            y = F.pad(y, (1, 1, 0, 0, 3, 1))[..., 1:-1]
        elif self.how == "pad_value":
            y = F.pad(y, (0, 0, 0, 0, 3, 1), value=0.5)
        elif self.how == "zeros":
            n = y.size(0)
            y = torch.cat((torch.zeros(n, 3, 8, 8), y, torch.zeros(n, 1, 8, 8, device=y.device)), 1)
        elif self.how == "zeros_like":
            y = torch.cat([torch.zeros_like(y)[:, :3], y, torch.zeros_like(y[:, :1])], dim=1)
        elif self.how == "mul0":
            y = torch.cat((y.mul(0)[:, :3], y, (0 * y)[:, :1]), dim=-3)
        elif self.how == "new_zeros":
            y = torch.cat((y.new_zeros(y.size(0), 3, 8, 8), y, y.new_full((y.size(0), 1, 8, 8), 0.0)), 1)
        elif self.how == "buffer":
            n = y.size(0)
            y = torch.cat((self.zero_buffer[:, :3].expand(n, 3, 8, 8), y, self.zero_buffer[:, :1].expand(n, 1, 8, 8).to(y)), 1)
        return self.c(F.relu(y + self.b(x)))


HOWS = ["pad", "pad_spatial_too", "pad_value", "zeros", "zeros_like", "mul0", "new_zeros", "buffer"]
X = torch.randn(1, 3, 8, 8)


def trace(model, x=X, graph=None):
    graph = graph or ExtendedGraph()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return graph.build_dependency(model, x, forward_fn=run_model, verbose=False)


def traced_and_installed(how):
    """A Padded model that replays its channel op (installed, not yet pruned), and the op as traced."""
    model = Padded(how).eval()
    (op,) = trace(model).tracer.ops
    install_channel_op(model, op.describe())
    return model, op


def out_group(graph, module):
    group = graph.get_pruning_group(module, tp.prune_conv_out_channels, list(range(module.out_channels)))
    return {(item.dep.target.module, graph.is_out_channel_pruning_fn(item.dep.handler)): item.idxs for item in group}


@pytest.mark.parametrize("how", HOWS)
def test_channel_placement_is_recognized_with_its_offsets(how):
    model = Padded(how).eval()
    graph = trace(model)
    (op,) = graph.tracer.ops
    assert (op.kind, op.host, op.index) == ("pad" if how.startswith("pad") else "cat", "", 0)
    assert (op.in_channels, op.out_channels) == (4, 8)
    assert op.src.tolist() == [0, 1, 2, 3] and op.dst.tolist() == [3, 4, 5, 6]
    assert op.fill == (0.5 if how == "pad_value" else 0.0)
    # conv a's group reaches the placement's input only; conv b's (8 channels) its output, not conv a
    group_a, group_b = out_group(graph, model.a), out_group(graph, model.b)
    assert group_a[(op, False)] == [0, 1, 2, 3] and (op, True) not in group_a
    assert group_b[(op, True)] == list(range(8)) and (model.a, True) not in group_b


@pytest.mark.parametrize("how", ["pad", "zeros"])
def test_plain_torch_pruning_couples_the_stages_wrongly(how):
    """The defect the extension fixes: F.pad is an identity to torch-pruning, cat loses its offsets."""
    model = Padded(how).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = tp.DependencyGraph().build_dependency(model, X, verbose=False)
    group_b = out_group(graph, model.b)
    assert (model.a, True) in group_b  # stage channels tied one to one
    assert max(group_b[(model.a, True)]) >= model.a.out_channels  # and past conv a's 4 channels


@pytest.mark.parametrize("how", HOWS)
def test_replayed_placement_computes_the_pruned_mapping(how):
    model = Padded(how).eval()
    (op,) = trace(model).tracer.ops
    x = torch.randn(2, 3, 8, 8)
    reference = model(x)
    pruned = copy.deepcopy(model)
    installed = install_channel_op(pruned, op.describe())
    assert installed_channel_op(pruned, op.target) is installed and installed is not op
    assert torch.equal(pruned(x), reference)  # installed, unpruned: the same computation
    # remove input channel 1 (conv a's filter) and output channel 0 (a zero) and 4 (input channel 1's place)
    tp.prune_conv_out_channels(pruned.a, [1])
    PlacementPruner().prune_in_channels(installed, [1])
    PlacementPruner().prune_out_channels(installed, [0, 4])
    tp.prune_conv_out_channels(pruned.b, [0, 4])
    tp.prune_conv_in_channels(pruned.c, [0, 4])
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for conv, channels in ((masked.a, [1]), (masked.b, [0, 4])):
            conv.weight[channels] = 0
            conv.bias[channels] = 0
        masked.c.weight[:, [0, 4]] = 0
    fill_shift = 0.5 * masked.c.weight[:, 0].sum(0) if how == "pad_value" else 0  # channel 0 was 0.5, now gone
    torch.testing.assert_close(pruned(x), masked(x) - fill_shift, rtol=1e-5, atol=1e-6)
    assert (installed.in_channels, installed.out_channels) == (3, 6)


def test_replay_refuses_a_feature_map_of_the_wrong_width():
    model, op = traced_and_installed("pad")
    tp.prune_conv_out_channels(model.a, [0])  # the op still expects 4 input channels
    with pytest.raises(RuntimeError, match=r"F.pad on the channel axis in the model's forward \(call 0\) got 3 channels"):
        model(X)


def test_a_pruned_model_is_traced_again_through_its_replayed_ops():
    model, op = traced_and_installed("zeros")
    PlacementPruner().prune_out_channels(installed_channel_op(model, op.target), [0])
    tp.prune_conv_out_channels(model.b, [0])
    tp.prune_conv_in_channels(model.c, [0])
    graph = trace(model)
    (again,) = graph.tracer.ops
    assert again is installed_channel_op(model, op.target)
    assert (again.in_channels, again.out_channels) == (4, 7)
    assert out_group(graph, model.a)[(again, False)] == [0, 1, 2, 3]


class TwoHosts(nn.Module):
    """Calls counted per host: a spatial pad (not a channel op) before the channel pad, and a
    child host whose channel op the parent never sees."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.child = Padded("zeros")
        self.c = nn.Conv2d(4 + 4 + 5, 6, 1)

    def forward(self, x):
        y = F.pad(self.a(x), (1, 1, 1, 1))[..., 1:-1, 1:-1]  # call 0: spatial only
        z = self.child(x)  # the child's cat: its own call 0
        y = F.pad(y, (0, 0, 0, 0, 0, 4))  # call 1
        return self.c(torch.cat([y, z], 1))  # call 2: a plain concatenation


def test_calls_are_counted_per_host():
    model = TwoHosts().eval()
    ops = trace(model).tracer.ops
    assert sorted((op.host, op.index, op.kind) for op in ops) == [("", 1, "pad"), ("child", 0, "cat")]
    pruned = copy.deepcopy(model)
    for op in ops:
        install_channel_op(pruned, op.describe())
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(pruned(x), model(x))
    assert pruned.child.__dict__["_legr_channel_ops"].ops.keys() == {0}


def test_installed_ops_survive_deepcopy_and_pickling():
    model, op = traced_and_installed("pad")
    PlacementPruner().prune_in_channels(installed_channel_op(model, op.target), [2])
    tp.prune_conv_out_channels(model.a, [2])
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert installed_channel_op(clone, op.target) is not installed_channel_op(model, op.target)
        assert torch.equal(clone(x), expected)


def test_an_installed_op_from_another_model_is_refused():
    model, op = traced_and_installed("pad")
    other = dict(op.describe(), in_channels=5)
    with pytest.raises(ValueError, match="expects .* to map 5 -> 8 channels; this model's maps 4 -> 8"):
        install_channel_op(model, other)
    with pytest.raises(ValueError, match="no module 'nowhere'"):
        install_channel_op(model, dict(op.describe(), host="nowhere"))


class Concat(nn.Module):
    def __init__(self, zeros: bool) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(10 if zeros else 8, 2, 1)
        self.zeros = zeros

    def forward(self, x):
        parts = [self.a(x), self.b(x)] + ([torch.zeros(x.size(0), 2, 8, 8)] if self.zeros else [])
        return self.c(torch.cat(parts, 1))


def test_a_plain_concatenation_is_left_to_torch_pruning():
    assert trace(Concat(zeros=False).eval()).tracer.ops == []


def test_two_feature_maps_among_zeros_are_refused_by_name():
    with pytest.raises(ValueError, match=r"torch.cat in the model's forward concatenates 2 feature maps with zero"):
        trace(Concat(zeros=True).eval())


def test_a_concatenation_with_a_constant_is_noted_as_regrouping():
    class Coords(nn.Module):  # CoordConv-style: constant channels in front of the features
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(6, 2, 1)
            self.register_buffer("grid", torch.linspace(-1, 1, 8).expand(1, 2, 8, 8).clone())

        def forward(self, x):
            return self.b(torch.cat([self.grid.expand(x.size(0), -1, -1, -1), self.a(x)], 1))

    graph = trace(Coords().eval())
    assert graph.tracer.ops == []
    assert list(graph.tracer.regrouping.values()) == [("torch.cat with a constant tensor", "")]


class Shuffle(nn.Module):
    def __init__(self, manual: bool) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
        self.manual = manual

    def forward(self, x):
        y = self.a(x)
        if self.manual:  # ShuffleNet's channel_shuffle
            n, c, h, w = y.shape
            y = torch.transpose(y.view(n, 2, c // 2, h, w), 1, 2).contiguous().view(n, -1, h, w)
        else:
            y = F.channel_shuffle(y, 2)
        return self.b(y)


@pytest.mark.parametrize("manual", [True, False])
def test_channel_shuffles_are_noted_as_regrouping(manual):
    graph = trace(Shuffle(manual).eval())
    ((op, host),) = graph.tracer.regrouping.values()
    assert host == "" and op == ("transpose of a split channel axis" if manual else "channel_shuffle")


def test_a_view_without_transpose_is_not_regrouping():
    class Grouped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = self.a(x)
            n, c, h, w = y.shape
            return self.b(y.view(n, 2, c // 2, h, w).permute(0, 1, 2, 4, 3).reshape(n, c, w, h))

    assert trace(Grouped().eval()).tracer.regrouping == {}


def test_hand_written_layer_norms_get_a_pruner():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), LayerNorm(4, data_format="channels_first"), nn.LayerNorm(4))
    pruners = default_pruners(model)
    assert isinstance(pruners[LayerNorm], LayerNormLikePruner) and nn.LayerNorm not in pruners
    norm = model[1]
    with torch.no_grad():
        norm.weight.copy_(torch.arange(4.0))
    LayerNormLikePruner().prune_out_channels(norm, [1, 2])
    assert norm.normalized_shape == (2,) and norm.weight.tolist() == [0.0, 3.0] and norm.bias.shape == (2,)


def test_channel_pad_describes_itself_as_plain_data():
    op = ChannelPad("cat", "layer2.0.shortcut", 0, 16, 32, range(16), range(16), 0.0, 0)
    description = op.describe()
    assert all(isinstance(v, (int, float, str, list)) for v in description.values())
    assert ChannelPad.from_description(description).describe() == description
    assert op.target == "layer2.0.shortcut@0"
