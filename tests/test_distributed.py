"""LeGR on a multi-process Trainer: DDP on CPU with gloo, 2 processes launched by Lightning itself.

The process-launching tests share their runs (a module fixture) and use a tiny network: about a minute in all.
"""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

from lightning_legr.core.errors import ConfigurationError
from lightning_legr.distributed import Ranks, RankWorkers, check_strategy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "scripts", "ddp_run.py")


def launch(root, *args, expect_ok=True):
    """Run the script as a user would (`python script.py`); Lightning starts the other rank itself."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, SCRIPT, str(root), *args], env=env, capture_output=True, text=True,
                          timeout=300)
    if expect_ok:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def ended(root):
    return [json.loads((root / f"rank{r}.json").read_text()) for r in range(2) if (root / f"rank{r}.json").exists()]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    launch(root, "--strategy", "ddp_find_unused_parameters_true", "--finetune-epochs", "2")
    return root, ended(root)


@pytest.mark.slow
def test_fit_search_two_budgets_and_reload_on_two_ranks(two_ranks):
    root, (zero, one) = two_ranks
    assert zero["world_size"] == one["world_size"] == 2
    assert zero["results"] == one["results"] and zero["transform"] == one["transform"]  # every rank ends the same
    assert [r["budget"] for r in zero["results"]] == [1.0, 0.7, 0.4]
    for row, reloaded in zip(zero["results"][1:], zero["reloaded"]):
        assert reloaded == {"flops": row["flops"], "same_weights": True}
        assert row["flops_ratio"] <= row["budget"] and row["metric_after"] is not None
    # the search ran two candidates per step: 9 generations, all in the state
    state = json.loads((root / "legr" / "search_state.json").read_text())
    assert state["evolution"]["generation"] == 9
    # fine-tuning (and pretraining) ran on both ranks, each on half of the 9 training batches
    assert zero["steps"] == one["steps"] == 5 * (1 + 2 * 2)


@pytest.mark.slow
def test_files_are_written_by_rank_zero_only(two_ranks):
    root, (zero, one) = two_ranks
    assert one["writes"] == []
    written = set(zero["writes"])
    for name in ("legr/run.json", "legr/base.ckpt", "legr/transform.json", "legr/search_state.json",
                 "legr/budgets.json", "legr/results.csv", "legr/flops_0.40/pruned.ckpt"):
        assert name in written
    assert zero["writes"].count("legr/transform.json") == 1 and zero["writes"].count("legr/run.json") == 1
    assert not list(root.rglob(".tmp-*"))


@pytest.mark.slow
def test_a_run_killed_on_all_ranks_resumes_to_the_same_result(two_ranks, tmp_path):
    _, (reference, _) = two_ranks
    died = launch(tmp_path, "--finetune-epochs", "2", "--die-after-steps", "2", expect_ok=False)
    assert died.returncode != 0 and not ended(tmp_path)
    assert json.loads((tmp_path / "legr" / "search_state.json").read_text())["evolution"]["generation"] == 4
    died = launch(tmp_path, "--finetune-epochs", "2", "--die-in-finetune", "1", expect_ok=False)  # mid fine-tune
    assert died.returncode != 0 and not ended(tmp_path)
    assert torch.load(tmp_path / "legr" / "flops_0.70" / "last.ckpt", weights_only=True)["epoch"] == 0
    launch(tmp_path, "--finetune-epochs", "2")
    zero, one = ended(tmp_path)
    assert zero["transform"] == reference["transform"]  # the same search as the uninterrupted run of 2 ranks
    strip = lambda rows: [dict(r, checkpoint=os.path.relpath(r["checkpoint"], os.path.dirname(r["checkpoint"])))  # noqa: E731
                          for r in rows]
    assert strip(zero["results"]) == strip(reference["results"]) and zero["results"] == one["results"]
    assert zero["steps"] == 5 * (1 + 2)  # the last epoch of the first fine-tune, then the second; no pretraining


@pytest.mark.slow
def test_two_nodes_launched_by_torchrun(two_ranks, tmp_path):
    """num_nodes=2, one process each, started by torchrun (as a cluster scheduler would) on this machine."""
    _, (reference, _) = two_ranks
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    port = str(29500 + os.getpid() % 1000)
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank",
             str(n), "--master_addr", "127.0.0.1", "--master_port", port, SCRIPT, str(tmp_path), "--devices", "1",
             "--num-nodes", "2", "--finetune-epochs", "1"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for n in (0, 1)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    zero, one = ended(tmp_path)
    assert zero["world_size"] == 2 and zero["transform"] == reference["transform"] == one["transform"]
    assert zero["results"] == one["results"] and one["writes"] == []
    assert zero["steps"] == one["steps"] == 5 * (1 + 2)  # sharded pretraining and fine-tuning on both nodes


@pytest.mark.slow
def test_one_rank_of_ddp_is_the_single_process_search(tmp_path):
    launch(tmp_path / "ddp", "--devices", "1", "--strategy", "ddp", "--epochs", "0", "--finetune-epochs", "0")
    launch(tmp_path / "plain", "--devices", "1", "--strategy", "auto", "--epochs", "0", "--finetune-epochs", "0")
    (ddp,), (plain,) = ended(tmp_path / "ddp"), ended(tmp_path / "plain")
    assert ddp["transform"] == plain["transform"]
    assert [r["metric_before"] for r in ddp["results"]] == [r["metric_before"] for r in plain["results"]]


@pytest.mark.slow
def test_latency_budgets_on_two_ranks_are_timed_by_rank_zero_only(tmp_path):
    """Rank 0 measures the table, the floor and every budget's network; the other rank times nothing and
    ends with rank 0's figures."""
    launch(tmp_path, "--latency-budgets", "0.6", "0.8", "--epochs", "0", "--generations", "4")
    zero, one = ended(tmp_path)
    # the unpruned network for the table, then the floor and >= 1 network per budget, each beside the unpruned one
    assert zero["timed"]["layers"] > 0 and zero["timed"]["networks"] >= 1 + 2 + 2 * 2
    assert one["timed"] == {"layers": 0, "networks": 0}
    assert zero["results"] == one["results"] and zero["transform"] == one["transform"]
    base, *rows = zero["results"]
    assert [r["budget"] for r in rows] == [0.8, 0.6] and all(r["kind"] == "latency" for r in zero["results"])
    for row in rows:
        assert row["latency_within"] and abs(row["latency_ms"] - row["latency_target_ms"]) <= 0.05 * row["latency_target_ms"]
    assert "legr/latency_table.json" in zero["writes"] and one["writes"] == []
    assert [r["flops"] for r in zero["reloaded"]] == [r["flops"] for r in rows]


# ---------------------------------------------------------------------- strategies
@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork"])
def test_spawning_strategies_are_refused_with_what_to_use(strategy):
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, logger=False)
    with pytest.raises(ConfigurationError, match=r"cannot run under strategy='ddp_spawn' .* Use strategy='ddp'"):
        check_strategy(trainer)


@pytest.mark.parametrize("cls", [FSDPStrategy, DeepSpeedStrategy])
def test_sharded_strategies_are_refused_with_how_to_do_it(cls):
    fake = SimpleNamespace(strategy=object.__new__(cls))  # constructing them needs a GPU or deepspeed
    with pytest.raises(ConfigurationError, match=rf"cannot run under {cls.__name__}: .* run LeGR under DDP from that"
                                                 r" checkpoint: model = MyModule.load_from_checkpoint"):
        check_strategy(fake)


def test_single_device_and_ddp_are_accepted():
    check_strategy(pl.Trainer(accelerator="cpu", devices=1, logger=False))
    check_strategy(pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False))


# ---------------------------------------------------------------------- the workers, without processes
def ranks(rank, size=2):
    return SimpleNamespace(rank=rank, size=size)


def gather_of(others):
    """A gather where rank 0 is this process and the other ranks sent ``others``."""
    return lambda mine: [mine, *others]


def test_each_rank_evaluates_its_own_candidate_and_all_get_every_value():
    seen = []
    workers = RankWorkers(ranks(0), gather_of([(2.5, "d", None)]))
    assert workers.map(lambda i: seen.append(i) or 1.5, 2, "d") == [1.5, 2.5] and seen == [0]
    idle = RankWorkers(ranks(1), lambda mine: [(1.5, "d", None), mine])
    assert idle.map(lambda i: pytest.fail("rank 1 has no candidate in a step of one"), 1, "d") == [1.5]


def test_ranks_that_disagree_stop_the_run():
    workers = RankWorkers(ranks(0), gather_of([(2.5, "other", None)]))
    with pytest.raises(RuntimeError, match=r"searches disagree \(evolution fingerprints rank 0: mine, rank 1: other\)"):
        workers.map(lambda i: 1.0, 2, "mine")


def test_a_failure_on_any_rank_stops_every_rank():
    workers = RankWorkers(ranks(0), gather_of([(float("nan"), "d", "KeyError: 'val_loss'")]))
    with pytest.raises(RuntimeError, match="rank 1 failed to evaluate its candidate, so every rank stops: KeyError"):
        workers.map(lambda i: 1.0, 2, "d")

    def broken(i):
        raise KeyError("mine")

    own = RankWorkers(ranks(0), gather_of([(2.0, "d", None)]))
    with pytest.raises(KeyError, match="mine"):
        own.map(broken, 2, "d")


def test_a_decision_of_rank_zero_reaches_every_rank():
    class Strategy:
        def __init__(self, sent):
            self.sent = sent

        def broadcast(self, obj, src=0):
            return self.sent if self.sent is not None else obj

    zero = Ranks(SimpleNamespace(strategy=Strategy(None), global_rank=0, world_size=2))
    assert zero.from_zero(lambda: 7) == 7
    other = Ranks(SimpleNamespace(strategy=Strategy((None, (True, "ConfigurationError", "bad dirpath"))),
                                  global_rank=1, world_size=2))
    with pytest.raises(ConfigurationError, match="^bad dirpath$"):
        other.from_zero(lambda: pytest.fail("only rank 0 runs it"))
    crashed = Ranks(SimpleNamespace(strategy=Strategy((None, (False, "OSError", "disk full"))), global_rank=1,
                                    world_size=2))
    with pytest.raises(RuntimeError, match="rank 0 failed, so every rank stops: OSError: disk full"):
        crashed.from_zero(lambda: None)


def test_ranks_agree_on_reused_fitness_and_send_no_cached_candidate_to_a_rank():
    """Two ranks in two threads: the cache is decided before the workers, from what both ranks share."""
    import threading

    from lightning_legr import LeGRSearch
    from tests.models import shared_pruner

    pruner, batch = shared_pruner("vgg_small"), torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    settings = dict(generations=30, population=4, sample_size=2, mutation_rate=0.3, seed=3, reuse_fitness=True)
    slots, barrier = [None, None], threading.Barrier(2, timeout=60)

    def gather_for(rank):
        def gather(mine):
            slots[rank] = mine
            barrier.wait()
            gathered = list(slots)
            barrier.wait()
            return gathered
        return gather

    def fitness_counting(calls):
        def fitness(pruned):
            calls.append(1)
            with torch.no_grad():
                return pruned.eval()(batch).pow(2).mean().item()
        return fitness

    calls, searches, errors = [[], []], [None, None], []

    def run(rank):
        try:
            search = LeGRSearch(pruner, fitness_counting(calls[rank]), 0.5,
                                workers=RankWorkers(ranks(rank), gather_for(rank)), **settings)
            search.run()
            searches[rank] = search
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    zero, one = searches
    assert zero.evolution.state_dict() == one.evolution.state_dict() and zero.cache == one.cache
    assert 0 < zero.cache_hits and len(calls[0]) + len(calls[1]) == 30 - zero.cache_hits  # none evaluated twice
    single = LeGRSearch(pruner, fitness_counting([]), 0.5, workers=type("Two", (), {"size": 2, "map": (
        lambda self, evaluate, count, digest: [evaluate(i) for i in range(count)])})(), **settings)
    single.run()
    assert single.evolution.state_dict() == zero.evolution.state_dict() and single.cache == zero.cache
