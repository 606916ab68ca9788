"""Base importance of each channel of a group, before the learned per-group affine transform.

A criterion is a small callable, ``criterion(group) -> tensor of per-channel scores`` (higher means
more important), in the manner of torch-pruning's importance objects. New criteria are new classes.

Coupled channels: a residual group's channel is produced by several filters (the stem conv and the
last conv of every block in the stage). Its score is the **mean** over those filters, not the sum.
A sum would grow with the number of blocks, so residual channels would look many times more
important than a plain layer's before any learning; the mean keeps every group on the scale of one
filter, which is what the per-group (alpha, kappa) were designed to recalibrate.
"""

from typing import Dict, Type, Union

import torch
from torch import nn

from lightning_legr.core.errors import ConfigurationError
from lightning_legr.core.structure import ChannelGroup, GroupMember

__all__ = [
    "Criterion", "SquaredL2Norm", "L1Norm", "BNScale", "RandomScores", "WithinGroupRank", "CRITERIA", "get_criterion",
]


class Criterion:
    """Mean over the group's members of a per-member, per-channel score."""

    name = "base"

    def member_scores(self, member: GroupMember) -> Union[torch.Tensor, None]:
        """Scores of ``member.positions`` (one per position), or None if this member does not count."""
        raise NotImplementedError

    def members(self, group: ChannelGroup):
        return group.producers

    @torch.no_grad()
    def __call__(self, group: ChannelGroup) -> torch.Tensor:
        total = torch.zeros(group.width, dtype=torch.float64)
        count = torch.zeros(group.width, dtype=torch.float64)
        for member in self.members(group):
            scores = self.member_scores(member)
            if scores is None:
                continue
            channels = torch.as_tensor(member.channels)
            total.index_add_(0, channels, scores.detach().double().cpu())
            count.index_add_(0, channels, torch.ones_like(channels, dtype=torch.float64))
        if not bool((count > 0).all()):
            raise ValueError(
                f"Criterion {self.name!r} found nothing to score in group {group.name!r}"
                f" (members: {[m.target for m in group.members][:6]}). A group without what the criterion"
                " reads (e.g. the hidden features of a linear layer have no BatchNorm) needs another criterion"
                " ('l2', 'l1'), or its layers in `ignored_layers`."
            )
        return total / count

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _filters(member: GroupMember) -> torch.Tensor:
    """The filters of ``member`` at its positions, one row each."""
    weight = member.module.weight
    dim = 1 if getattr(member.module, "transposed", False) else 0
    idx = torch.as_tensor(member.positions, device=weight.device)
    return weight.index_select(dim, idx).transpose(0, dim).flatten(1)


class SquaredL2Norm(Criterion):
    """``||theta_i||_2^2`` of each filter, as in the paper's code (the default)."""

    name = "l2"

    def member_scores(self, member):
        return _filters(member).pow(2).sum(1)


class L1Norm(Criterion):
    """``||theta_i||_1`` of each filter."""

    name = "l1"

    def member_scores(self, member):
        return _filters(member).abs().sum(1)


class BNScale(Criterion):
    """``|gamma_i|`` of the BatchNorm that normalizes each channel (Network Slimming's criterion)."""

    name = "bn"

    def members(self, group):
        return [m for m in group.members if isinstance(m.module, nn.modules.batchnorm._BatchNorm)]

    def member_scores(self, member):
        if member.module.weight is None:
            return None
        weight = member.module.weight
        return weight.index_select(0, torch.as_tensor(member.positions, device=weight.device)).abs()


class RandomScores(Criterion):
    """Random scores: the random-ranking baseline. Seeded, and different for every group."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __call__(self, group: ChannelGroup) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + group.index)
        return torch.rand(group.width, generator=generator, dtype=torch.float64)

    def __repr__(self) -> str:
        return f"RandomScores(seed={self.seed})"


class WithinGroupRank(Criterion):
    """A channel's rank within its group, as a share in (0, 1]: the uniform-pruning baseline.

    Ranked globally, these scores remove the same share of every group (the lowest by ``base``),
    up to the channel granularity, the safeguard and the exact FLOP budget.
    """

    name = "uniform"

    def __init__(self, base: Union[str, Criterion] = "l2") -> None:
        self.base = get_criterion(base)

    def __call__(self, group: ChannelGroup) -> torch.Tensor:
        order = torch.argsort(self.base(group), stable=True)
        ranks = torch.empty(group.width, dtype=torch.float64)
        ranks[order] = torch.arange(1, group.width + 1, dtype=torch.float64) / group.width
        return ranks

    def __repr__(self) -> str:
        return f"WithinGroupRank({self.base!r})"


CRITERIA: Dict[str, Type[Criterion]] = {c.name: c for c in (SquaredL2Norm, L1Norm, BNScale, RandomScores, WithinGroupRank)}


def get_criterion(criterion: Union[str, Criterion]) -> Criterion:
    """A criterion from its name ("l2", "l1", "bn"; baselines "random", "uniform") or an instance."""
    if isinstance(criterion, Criterion):
        return criterion
    if criterion not in CRITERIA:
        raise ConfigurationError(f"`criterion` can be {', '.join(CRITERIA)} or a Criterion instance, got {criterion!r}")
    return CRITERIA[criterion]()
