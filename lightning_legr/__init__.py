"""lightning-legr: LeGR filter pruning (Chin et al., CVPR 2020) for PyTorch and Lightning.

The algorithm core (structure, criteria, selection, surgery, evolution) needs only torch,
torch-pruning, numpy and ptflops; the Lightning parts are imported on first use, or at once when
Lightning is already imported.
"""

import sys as _sys

from lightning_legr.criteria import BNScale, Criterion, L1Norm, SquaredL2Norm
from lightning_legr.evolution import RegularizedEvolution
from lightning_legr.flops import count_flops, count_params
from lightning_legr.pruner import LeGRPruner, prune
from lightning_legr.search import LeGRSearch, learn_transform
from lightning_legr.selection import Selection
from lightning_legr.shortcuts import ZeroPadShortcut
from lightning_legr.structure import Structure
from lightning_legr.surgery import pruning_record, restore
from lightning_legr.transform import Transform

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
