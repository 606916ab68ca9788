"""BatchNorm recalibration: recompute running statistics of a pruned network, weights untouched.

Removing channels changes what every later layer sees, so the running statistics a BatchNorm
collected on the full network no longer describe its inputs. A few forward passes on training data
fix that, and a pruned network's loss then reflects its weights rather than stale statistics, which
makes it a far better search signal when candidates are scored without fine-tuning (tau = 0).
"""

from typing import Iterable

import torch
from torch import nn

from lightning_legr.core.structure import ExampleInputs, run_model

__all__ = ["recalibrate_batchnorm"]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, inputs: Iterable[ExampleInputs]) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them from ``inputs``, as a plain
    average over the batches. Weights do not change; training flags are restored.

    Returns the number of batches used (0 if the model has no BatchNorm with running statistics).

    Example::

        >>> from lightning_legr import prune
        >>> from lightning_legr.models import cifar_resnet
        >>> pruned = prune(cifar_resnet(20), torch.randn(1, 3, 32, 32), flops=0.5)
        >>> recalibrate_batchnorm(pruned, [torch.randn(8, 3, 32, 32) for _ in range(3)])
        3
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    flags = [(m, m.training) for m in model.modules()]
    momenta = [(m, m.momentum) for m in norms]
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    model.train()
    count = 0
    try:
        for batch in inputs:
            run_model(model, batch)
            count += 1
    finally:
        if count == 0:  # nothing to estimate from: keep the old statistics
            for m, state in zip(norms, saved):
                m.load_state_dict(state)
        for m, momentum in momenta:
            m.momentum = momentum
        for m, flag in flags:
            m.training = flag
    return count
