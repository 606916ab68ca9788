"""A LeGR run on a multi-process Trainer, for tests/test_distributed.py (Lightning's DDP launcher runs this file
once per rank). Every rank writes what it ended with to <root>/rank<r>.json.

    python tests/scripts/ddp_run.py ROOT [--devices 2] [--strategy ddp] [--epochs 1] [--die-after-steps N] ...
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

import lightning_legr.core._io as io_module  # noqa: E402
from lightning_legr import LeGRCallback, count_flops, load_pruned  # noqa: E402
from lightning_legr.demos.digits import DigitsClassifier  # noqa: E402
from lightning_legr.core.search import LeGRSearch  # noqa: E402
from tests.lightning_helpers import tiny_data, tiny_module  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("root")
parser.add_argument("--devices", type=int, default=2)
parser.add_argument("--strategy", default="ddp")
parser.add_argument("--num-nodes", type=int, default=1)
parser.add_argument("--epochs", type=int, default=1, help="pretraining epochs")
parser.add_argument("--generations", type=int, default=9)
parser.add_argument("--finetune-epochs", type=int, default=1)
parser.add_argument("--die-after-steps", type=int, default=None, help="every rank exits at once, as under kill -9")
parser.add_argument("--die-in-finetune", type=int, default=None, help="... at the start of this fine-tuning epoch")
parser.add_argument("--latency-budgets", type=float, nargs="+", default=None,
                    help="latency budgets instead of FLOP budgets, timed by a deterministic timer that counts its calls")
args = parser.parse_args()

writes = []
real_replace = io_module.os.replace


def counting_replace(src, dst):  # every file the package writes goes through one os.replace
    writes.append(os.path.relpath(dst, args.root))
    return real_replace(src, dst)


io_module.os.replace = counting_replace
if args.die_after_steps is not None:
    real_step, steps = LeGRSearch.step, []

    def dying_step(self):
        if len(steps) == args.die_after_steps:
            os._exit(9)  # no cleanup, no exception handling: as a SIGKILL
        steps.append(1)
        return real_step(self)

    LeGRSearch.step = dying_step


timed = {"layers": 0, "networks": 0}  # what this rank's latency timer measured
if args.latency_budgets is not None:
    import lightning_legr.core.latency as latency_module
    from lightning_legr.core.latency import _LayerCalls
    from tests.core.test_latency import NetworkTimer

    class CountingTimer(NetworkTimer):
        def __call__(self, module, inputs):
            timed["layers" if isinstance(module, _LayerCalls) else "networks"] += 1
            return super().__call__(module, inputs)

    latency_module.BenchmarkTimer = lambda threads=1, rounds=5: CountingTimer(overhead=0.02, scale=1.5)


class Counting(DigitsClassifier):
    """Counts this rank's training steps, and dies on demand at the start of a fine-tuning epoch."""

    steps = 0

    def training_step(self, batch, batch_idx):
        Counting.steps += 1
        return super().training_step(batch, batch_idx)

    def on_train_epoch_start(self):
        finetuning = self.trainer is not trainer
        if finetuning and self.current_epoch == args.die_in_finetune:
            os._exit(9)

budgets = dict(flops=[0.4, 0.7]) if args.latency_budgets is None else dict(latency_budgets=args.latency_budgets)
callback = LeGRCallback(
    **budgets, dirpath=os.path.join(args.root, "legr"), generations=args.generations, population=4,
    sample_size=2, finetune_epochs=args.finetune_epochs, latency=False, seed=3,
    memory_format="contiguous",  # separate runs are compared bit for bit: no timing decides how they evaluate
)
trainer = pl.Trainer(
    accelerator="cpu", devices=args.devices, num_nodes=args.num_nodes, strategy=args.strategy, max_epochs=args.epochs,
    callbacks=[callback],
    logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    default_root_dir=args.root,
)
trainer.fit(tiny_module(Counting), datamodule=tiny_data())

reloaded = []
for row in callback.results[1:]:
    model = load_pruned(row["checkpoint"], Counting)
    saved = torch.load(row["checkpoint"], weights_only=True)["state_dict"]
    same = all(torch.equal(saved[k], v) for k, v in model.state_dict().items() if isinstance(v, torch.Tensor))
    reloaded.append({"flops": count_flops(model, torch.zeros(1, 1, 8, 8)), "same_weights": same})
rank = trainer.global_rank
with open(os.path.join(args.root, f"rank{rank}.json"), "w") as f:
    json.dump({
        "rank": rank, "world_size": trainer.world_size, "results": callback.results,
        "transform": callback.transform.to_dict(), "writes": writes, "reloaded": reloaded, "steps": Counting.steps,
        "timed": timed,
    }, f)
