"""The learned transform: JSON files, identity, and refusing a transform from another model or criterion."""

import json

import numpy as np
import pytest
import torch

from lightning_legr import LeGRPruner, Transform
from lightning_legr.models import cifar_resnet
from tests.models import example_input, shared_pruner


@pytest.fixture(scope="module")
def pruner():
    return shared_pruner("vgg_small")


def learned(pruner, seed=0):
    rng = np.random.default_rng(seed)
    return Transform(
        np.exp(rng.normal(0, 1, pruner.num_groups)),
        rng.normal(0, 1, pruner.num_groups),
        pruner.structure.signature(),
        "l2",
        {"fitness": 0.25, "generation": 7},
    )


def test_json_round_trip(pruner, tmp_path):
    transform = learned(pruner)
    path = tmp_path / "sub" / "transform.json"
    transform.save(path)
    loaded = Transform.load(path)
    assert loaded == transform
    np.testing.assert_array_equal(loaded.alpha, transform.alpha)  # bit for bit, not approximately
    np.testing.assert_array_equal(loaded.kappa, transform.kappa)
    assert loaded.info == transform.info
    data = json.loads(path.read_text())
    assert data["format"] == "lightning-legr/transform" and data["criterion"] == "l2"
    assert [(g["name"], g["width"]) for g in data["groups"]] == pruner.structure.signature()
    assert [p.name for p in path.parent.iterdir()] == ["transform.json"]  # no temporary file left behind
    # the loaded transform selects exactly what the original does
    a, b = pruner.select(0.5, transform), pruner.select(0.5, loaded)
    assert all(np.array_equal(x, y) for x, y in zip(a.removed, b.removed))


def test_equality_compares_values(pruner):
    transform = learned(pruner)
    other = learned(pruner)
    assert other == transform
    other.kappa = other.kappa.copy()
    other.kappa[0] += 1e-12
    assert other != transform
    assert learned(pruner) != Transform.identity(pruner.structure.signature())


def test_identity(pruner):
    identity = pruner.identity()
    assert identity == Transform.identity(pruner.structure.signature(), "l2")
    assert identity.alpha.tolist() == [1.0] * pruner.num_groups
    assert identity.kappa.tolist() == [0.0] * pruner.num_groups
    a, b = pruner.select(0.4), pruner.select(0.4, identity)
    assert all(np.array_equal(x, y) for x, y in zip(a.removed, b.removed))


def test_a_transform_changes_the_ranking(pruner):
    """A large kappa protects a group; a very negative one sends it to the safeguard first."""
    g = next(g.index for g in pruner.structure.groups if g.name == "features.4.0")
    up, down = pruner.identity(), pruner.identity()
    up.kappa = np.where(np.arange(pruner.num_groups) == g, 1e9, 0.0)
    down.kappa = np.where(np.arange(pruner.num_groups) == g, -1e9, 0.0)
    assert pruner.select(0.5, up).widths[g] == pruner.structure.widths[g]
    assert pruner.select(0.5, down).widths[g] == pruner.selector.min_widths[g]


def test_refuses_a_transform_from_another_model(pruner, tmp_path):
    other = LeGRPruner(cifar_resnet(20), example_input())
    path = tmp_path / "resnet20.json"
    other.identity().save(path)
    transform = Transform.load(path)
    with pytest.raises(ValueError, match="learned on another model") as err:
        pruner.select(0.5, transform)
    message = str(err.value)
    assert f"has {other.num_groups} channel groups" in message and f"has {pruner.num_groups}" in message
    assert repr(other.structure.signature()[0]) in message  # names the first differing group
    with pytest.raises(ValueError, match="learned on another model"):
        pruner.prune(0.5, transform)


def test_refuses_a_transform_with_other_widths(pruner):
    groups = pruner.structure.signature()
    groups[2] = (groups[2][0], groups[2][1] + 1)
    transform = Transform.identity(groups)
    with pytest.raises(ValueError, match=rf"group 2 is \('{groups[2][0]}', {groups[2][1]}\) there"):
        pruner.select(0.5, transform)


def test_refuses_a_transform_from_another_criterion(pruner):
    l1 = LeGRPruner(pruner.model, example_input(), criterion="l1")
    with pytest.raises(ValueError, match=r"criterion 'l2'.*uses 'l1'.*criterion='l2'"):
        l1.select(0.5, learned(pruner))
    assert l1.select(0.5, l1.identity()).ratio <= 0.5


def test_refuses_non_transforms(pruner):
    with pytest.raises(TypeError, match="`transform` must be a lightning_legr.Transform"):
        pruner.select(0.5, {"alpha": 1})


@pytest.mark.parametrize(
    "alpha, kappa, match",
    [
        ([1.0, 1.0], [0.0], "one alpha and one kappa per group"),
        ([1.0, -1.0], [0.0, 0.0], "alpha must be positive"),
        ([1.0, 0.0], [0.0, 0.0], "alpha must be positive"),
        ([1.0, float("nan")], [0.0, 0.0], "finite"),
        ([1.0, 1.0], [0.0, float("inf")], "finite"),
    ],
)
def test_invalid_transforms(alpha, kappa, match):
    with pytest.raises(ValueError, match=match):
        Transform(alpha, kappa, [("a", 4), ("b", 4)])


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No transform file"):
        Transform.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Transform.load(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"alpha": [1.0]}))
    with pytest.raises(ValueError, match="not a lightning-legr transform file"):
        Transform.load(other)
    future = tmp_path / "future.json"
    data = Transform.identity([("a", 4)]).to_dict()
    data["version"] = 99
    future.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="version 99"):
        Transform.load(future)


def test_pruned_model_from_a_loaded_transform_runs(pruner, tmp_path):
    learned(pruner, 3).save(tmp_path / "t.json")
    small = pruner.prune(0.3, Transform.load(tmp_path / "t.json"))
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)
