"""Seeds for the random parts of a run, derived from the callback's ``seed``, in a forked random state."""

import contextlib
import random
from typing import Iterator

import numpy as np
import torch
from lightning.pytorch.utilities.seed import isolate_rng

__all__ = ["BN_BATCHES", "CANDIDATE", "FINETUNE", "FITNESS_ORDER", "derive_seed", "seed_all", "seeded"]

# derive_seed(seed, stream, ...): each use of the run's seed draws from its own stream
BN_BATCHES = 0  # the training batches that recalibrate BatchNorm
CANDIDATE = 1  # with the generation: the batches of one candidate's tau steps
FINETUNE = 2  # with the budget and the epoch: one fine-tuning epoch's data order, dropout, augmentation
CHECKS = 3  # the batches the checks at fit start draw
FITNESS_ORDER = 4  # the order of the fitness batches when candidates can be stopped early


def derive_seed(seed: int, *keys: float) -> int:
    """A seed for one use of ``seed``, named by ``keys``: independent of the seeds of other uses.

    Keys may be budgets (fractions): they are named by their value to six decimals.
    """
    words = [int(round(k * 1_000_000)) if isinstance(k, float) else int(k) for k in keys]
    return int(np.random.SeedSequence([seed, *words]).generate_state(1)[0])


def seed_all(seed: int) -> None:
    """Seed Python's, numpy's and torch's (CPU and every CUDA device's) global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with the global generators seeded to ``seed``; the caller's state is restored after.

    A shuffling DataLoader takes its order from the global generator, whose state differs from one
    process to the next (a resumed run, other code before it). Seeding it makes the batches a
    candidate sees a function of the run's seed alone.
    """
    with isolate_rng():
        seed_all(seed)
        yield
