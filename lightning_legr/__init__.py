"""lightning-legr: LeGR filter pruning (Chin et al., CVPR 2020) for PyTorch and Lightning.

``lightning_legr.core`` is the algorithm (structure, criteria, FLOPs, selection, surgery, evolution,
search) and needs only torch, torch-pruning, numpy and ptflops; the Lightning glue at the top level
(callback, run directory, evaluation, fine-tuning, checkpoints, report, CLI) is imported on first
use, or at once when Lightning is already imported.
"""

import sys as _sys

from lightning_legr.core import (
    BNScale,
    Criterion,
    L1Norm,
    LeGRPruner,
    LeGRSearch,
    RegularizedEvolution,
    Selection,
    SquaredL2Norm,
    Structure,
    Transform,
    ZeroPadShortcut,
    count_flops,
    count_params,
    learn_transform,
    prune,
    pruning_record,
    recalibrate_batchnorm,
    restore,
)

__version__ = "0.1.0"

_LIGHTNING = {"LeGRCallback": "lightning_legr.callback", "load_pruned": "lightning_legr.checkpoint"}

__all__ = [
    "BNScale",
    "Criterion",
    "L1Norm",
    "LeGRPruner",
    "LeGRSearch",
    "RegularizedEvolution",
    "Selection",
    "SquaredL2Norm",
    "Structure",
    "Transform",
    "ZeroPadShortcut",
    "count_flops",
    "count_params",
    "learn_transform",
    "prune",
    "pruning_record",
    "recalibrate_batchnorm",
    "restore",
    *_LIGHTNING,
]


if "lightning.pytorch" in _sys.modules:
    # LightningCLI finds `--trainer.callbacks+=LeGRCallback` by its short name only among imported
    # Callback subclasses; a Lightning user's `import lightning_legr` should be enough for that.
    import lightning_legr.callback  # noqa: E402, F401


def __getattr__(name):
    if name in _LIGHTNING:
        import importlib

        return getattr(importlib.import_module(_LIGHTNING[name]), name)
    raise AttributeError(f"module 'lightning_legr' has no attribute {name!r}")
