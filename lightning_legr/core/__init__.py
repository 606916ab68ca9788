"""The LeGR algorithm without Lightning: torch, torch-pruning, numpy and ptflops only.

The modules follow the pipeline, each depending only on those before it:
shortcuts (the ZeroPadShortcut module) -> graph (the torch-pruning extension: zero-pad shortcuts as
written, hand-written LayerNorms) -> structure (channel groups, traced once) ->
criteria (base filter importance) -> cost (the cost-model protocol) -> flops (FLOPs and parameters)
and latency (a measured per-layer table) -> selection (LeGR-Pruning for one budget) -> surgery
(physical removal, the pruning record) -> calibration (BatchNorm statistics) ->
transform (the learned per-group affine) -> pruner (all of the above for one model) -> evolution
(regularized evolution, numpy only) -> search (the evolution driving the pruner).
"""

from lightning_legr.core.calibration import recalibrate_batchnorm
from lightning_legr.core.criteria import BNScale, Criterion, L1Norm, SquaredL2Norm
from lightning_legr.core.evolution import RegularizedEvolution
from lightning_legr.core.flops import count_flops, count_params
from lightning_legr.core.pruner import LeGRPruner, prune
from lightning_legr.core.search import LeGRSearch, learn_transform
from lightning_legr.core.selection import Selection
from lightning_legr.core.shortcuts import ZeroPadShortcut
from lightning_legr.core.structure import Structure
from lightning_legr.core.surgery import pruning_record, restore
from lightning_legr.core.transform import Transform

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
]
