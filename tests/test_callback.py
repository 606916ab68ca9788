"""LeGRCallback end to end: fit, search, budgets, files, logging, resume, and early errors."""

import csv
import itertools
import json
import logging
import math
import os
import shutil
import warnings

import lightning.pytorch as pl
import pytest
import torch

import lightning_legr.core.search as search_module
from lightning.pytorch.callbacks import Callback
from lightning_legr import LeGRCallback, Transform, count_flops, load_pruned
from lightning_legr.checkpoint import save_module_checkpoint
from lightning_legr.core.errors import ConfigurationError
from lightning_legr._random import seeded
from lightning_legr.demos.digits import DigitsClassifier, DigitsDataModule
from tests.lightning_helpers import SMALL_SEARCH, CountingClassifier, LinearOnly, tiny_data, tiny_module, trainer


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_fit_search_two_budgets_and_reload(finished_run):
    callback, dirpath = finished_run.callback, finished_run.dirpath
    assert [r["budget"] for r in callback.results] == [1.0, 0.7, 0.4]
    base = callback.results[0]
    for row in callback.results[1:]:
        assert row["flops_ratio"] <= row["budget"] + 1e-9
        # an 8-channel net is coarse: one channel of an early group is up to 12% of its FLOPs
        assert abs(row["flops_ratio"] - row["budget"]) / row["budget"] < 0.1
        assert row["params"] < base["params"]
        assert row["metric_after"] is not None and row["metric_before"] is not None
        assert row["checkpoint"] == str(dirpath / f"flops_{row['budget']:.2f}" / "best.ckpt")  # absolute
        loaded = load_pruned(row["checkpoint"], DigitsClassifier)
        assert count_flops(loaded, torch.zeros(1, 1, 8, 8)) == row["flops"]
        saved = torch.load(row["checkpoint"], weights_only=True)["state_dict"]
        assert all(torch.equal(saved[k], v) for k, v in loaded.state_dict().items() if isinstance(v, torch.Tensor))

    # files: table, plots, transform, search state; the base model is kept, not overwritten
    assert len(read_csv(dirpath / "results.csv")) == 3
    assert json.loads((dirpath / "results.json").read_text())["results"][2]["budget"] == 0.4
    for name in ("metric_vs_flops.png", "widths_0.40.png", "widths_0.70.png"):
        assert (dirpath / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    transform = Transform.load(dirpath / "transform.json")
    assert transform == callback.transform and transform.info["search_flops"] == 0.4
    assert json.loads((dirpath / "search_state.json").read_text())["evolution"]["generation"] == 5
    base_weights = torch.load(dirpath / "base.ckpt", weights_only=True)["state_dict"]
    assert base_weights["model.classifier.weight"].shape[1] == 32
    summary = (dirpath / "structure.txt").read_text()
    layers = json.loads((dirpath / "layers.json").read_text())["layers"]
    assert [r["name"] for r in layers] == [n for n, m in tiny_module().named_modules()
                                           if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert layers[-1]["name"] == "model.classifier" and not layers[-1]["prunable"]
    assert all(r["prunable"] for r in layers[:-1]) and all(r["name"] in summary for r in layers)
    assert summary.strip() in finished_run.log  # printed at the start of the search too

    # the Trainer's logger got the search and the fine-tuning, the latter under a per-budget prefix
    rows = read_csv(finished_run.trainer.logger.log_dir + "/metrics.csv")
    assert len([r for r in rows if r.get("legr/best")]) == 5
    assert any(r.get("legr/width/model.features.0.0") for r in rows)
    assert any(r.get("flops_0.40-val_loss") for r in rows) and any(r.get("flops_0.70-val_loss") for r in rows)
    best = [float(r["legr/best"]) for r in rows if r.get("legr/best")]
    assert best == sorted(best, reverse=True)  # best-so-far never gets worse (mode min)

    # what every generation cost, in the logs and in the search state
    search_rows = [r for r in rows if r.get("legr/best")]
    assert all(float(r["legr/seconds"]) > 0 for r in search_rows)
    assert all(float(r["legr/seconds/bn"]) > 0 for r in search_rows if r["legr/cached"] == "0.0")
    assert not any(r["legr/seconds/bn"] for r in search_rows if r["legr/cached"] == "1.0")  # not evaluated
    hits = [float(r["legr/cache_hits"]) for r in search_rows]
    assert hits == list(itertools.accumulate(float(r["legr/cached"]) for r in search_rows))
    records = json.loads((dirpath / "search_state.json").read_text())["generations"]
    assert [r["generation"] for r in records] == list(range(5))
    assert [float(r["cached"]) for r in records] == [float(r["legr/cached"]) for r in search_rows]
    assert all(r["split"]["bn"] > 0 for r in records if not r["cached"])  # bn_batches=4 by default


def test_fast_path_scores_as_a_plain_validation(finished_run, tmp_path):
    """The pruned models were scored on folded, possibly channels_last copies: a plain validate agrees."""
    state = json.loads((finished_run.dirpath / "search_state.json").read_text())
    decision = state["notes"]["fast_path"]
    assert decision["fold_batchnorm"] == 5 and decision["memory_format"] in ("channels_last", "contiguous")
    for row in finished_run.callback.results[1:]:
        pruned = load_pruned(os.path.join(os.path.dirname(row["checkpoint"]), "pruned.ckpt"), DigitsClassifier)
        validate = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                              enable_model_summary=False, default_root_dir=str(tmp_path))
        plain = validate.validate(pruned, datamodule=tiny_data(), verbose=False)[0]["val_loss"]
        assert row["metric_before"] == pytest.approx(plain, rel=1e-5)
        assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in pruned.modules()) == 5  # saved unfolded


def test_results_files_hold_paths_relative_to_the_run_directory(finished_run):
    dirpath = finished_run.dirpath
    expected = ["base.ckpt", "flops_0.70/best.ckpt", "flops_0.40/best.ckpt"]
    assert [r["checkpoint"] for r in read_csv(dirpath / "results.csv")] == expected
    assert [r["checkpoint"] for r in json.loads((dirpath / "results.json").read_text())["results"]] == expected
    assert [r["checkpoint"] for r in json.loads((dirpath / "budgets.json").read_text())["rows"]] == expected[1:]
    for path in dirpath.rglob("*.json"):
        assert str(dirpath) not in path.read_text(), path  # nothing in the run directory names where it is


def test_every_json_file_is_strict(finished_run):
    for path in finished_run.dirpath.rglob("*.json"):
        json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{path} holds {name}"))


def test_one_logger_version_for_the_whole_run(finished_run):
    assert sorted(os.listdir(finished_run.root / "logs")) == ["version_0"]


def test_console_announces_each_budget_once_and_repeats_no_lightning_lines(finished_run):
    log = finished_run.log
    assert [m for m in log if m.startswith("LeGR: fine-tuning")] == [
        "LeGR: fine-tuning 70% of the FLOPs, 1 of 2", "LeGR: fine-tuning 40% of the FLOPs, 2 of 2",
    ]
    assert sum(m.startswith("LeGR: learning the ranking, 5 candidates at 40% of the FLOPs") for m in log) == 1
    # the outer Trainer's lines once; the companion Trainers (5 candidates, 2 fine-tunes, checks) add none
    assert sum("GPU available" in m for m in log) == 1
    assert sum("Tip:" in m for m in log) <= 2


def test_results_table_fits_100_columns_and_names_the_latency_setup(finished_run):
    table = next(m for m in finished_run.log if m.startswith("\nLeGR results")).strip().splitlines()
    assert max(len(line) for line in table) <= 100, "\n".join(table)
    assert table[1].startswith("budget: share of the FLOPs kept")
    assert "val_loss after pruning" in table[2] and "1 thread, median\u00b1IQR of 5 rounds" in table[3]
    assert table[4] == f"checkpoints in {finished_run.dirpath}"
    header, rule, base, *budgets = table[5:]
    for column in ("budget", "MFLOPs", "FLOPs", "kparams", "params", "pruned", "tuned", "ms @1", "ms @64", "checkpoint"):
        assert column in header
    results = finished_run.callback.results
    assert base.split()[:3] == ["1.00", f"{results[0]['flops'] / 1e6:.2f}", "100.0%"]
    assert [line.split()[0] for line in budgets] == ["0.70", "0.40"]
    assert [line.split()[-1] for line in budgets] == ["flops_0.70/best.ckpt", "flops_0.40/best.ckpt"]
    assert f"{results[1]['metric_after']:.4f}" in budgets[0].split()
    assert f"{results[1]['latency_b1_ms']:.2f}\u00b1{results[1]['latency_b1_iqr_ms']:.2f}" in budgets[0].split()


def test_latency_is_measured_on_one_thread_with_its_spread(finished_run):
    for path in (finished_run.dirpath / "results.json", finished_run.dirpath / "results.csv"):
        rows = json.loads(path.read_text())["results"] if path.suffix == ".json" else read_csv(path)
        for row in rows:
            assert float(row["latency_b1_ms"]) > 0 and float(row["latency_b64_ms"]) > 0
            assert float(row["latency_b1_iqr_ms"]) >= 0 and float(row["latency_b64_iqr_ms"]) >= 0
            assert int(row["latency_threads"]) == 1 and int(row["latency_rounds"]) == 5


def test_state_dict_round_trip(finished_run):
    copy = LeGRCallback(flops=[0.5])
    copy.load_state_dict(finished_run.callback.state_dict())
    assert copy.transform == finished_run.callback.transform and copy.results == finished_run.callback.results


def test_saved_transform_skips_the_search(tmp_path):
    module = tiny_module()
    signature_source = LeGRCallback(flops=[0.5], dirpath=str(tmp_path / "a"), **SMALL_SEARCH)
    trainer(tmp_path / "a", [signature_source]).fit(module, datamodule=tiny_data())
    path = tmp_path / "a" / "transform.json"

    callback = LeGRCallback(flops=[0.3], transform=str(path), dirpath=str(tmp_path / "b"), **SMALL_SEARCH)
    trainer(tmp_path / "b", [callback], max_epochs=0).fit(tiny_module(), datamodule=tiny_data())
    assert not (tmp_path / "b" / "search_state.json").exists()
    assert callback.transform == Transform.load(path)
    assert [r["budget"] for r in callback.results] == [1.0, 0.3]


def test_mode_max_on_accuracy(tmp_path):
    callback = LeGRCallback(flops=[0.5], monitor="val_acc", mode="max", dirpath=str(tmp_path / "legr"), **SMALL_SEARCH)
    trainer(tmp_path, [callback], max_epochs=2).fit(tiny_module(), datamodule=tiny_data())
    rows = read_csv(trainer_log(tmp_path))
    best = [float(r["legr/best"]) for r in rows if r.get("legr/best")]
    assert best == sorted(best) and 0 <= best[-1] <= 1  # accuracy, best-so-far only rises
    assert callback.transform.info["best_metric"] == pytest.approx(best[-1])


def trainer_log(tmp_path):
    return os.path.join(str(tmp_path), "logs", "version_0", "metrics.csv")


def kill_search_at_step(monkeypatch, n):
    """Make the search's n-th step raise RuntimeError("killed"); returns the step counter to reset."""
    calls = {"n": 0}
    real_step = search_module.LeGRSearch.step

    def dying_step(self):
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError("killed")
        return real_step(self)

    monkeypatch.setattr(search_module.LeGRSearch, "step", dying_step)
    return calls


def test_interrupted_search_resumes_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    settings = dict(SMALL_SEARCH, generations=8, population=4, finetune_epochs=0)
    reference = LeGRCallback(flops=[0.5], dirpath=str(tmp_path / "ref"), **settings)
    trainer(tmp_path / "ref", [reference]).fit(tiny_module(CountingClassifier), datamodule=tiny_data())

    # A second run of the same command: the pretraining finished (base.ckpt), then the search died.
    run = tmp_path / "run"
    run.mkdir()
    for name in ("run.json", "base.ckpt"):
        shutil.copy(tmp_path / "ref" / name, run / name)
    calls = kill_search_at_step(monkeypatch, 4)
    CountingClassifier.steps = 0
    with pytest.raises(RuntimeError, match="killed"):
        trainer(run, [LeGRCallback(flops=[0.5], dirpath=str(run), **settings)]).fit(
            CountingClassifier(width=8), datamodule=tiny_data()
        )
    assert json.loads((run / "search_state.json").read_text())["evolution"]["generation"] == 3
    assert not list(run.rglob(".tmp-*"))

    calls["n"] = -100  # no more deaths; count the generations the resumed run evaluates
    resumed = LeGRCallback(flops=[0.5], dirpath=str(run), **settings)
    trainer(run, [resumed]).fit(CountingClassifier(width=8), datamodule=tiny_data())
    assert calls["n"] == -100 + 5  # generations 3..7 only
    assert CountingClassifier.steps == 0  # pretraining was not repeated: base.ckpt was reused
    assert resumed.transform == reference.transform


def test_finished_budgets_are_kept_on_rerun(tmp_path):
    settings = dict(SMALL_SEARCH, finetune_epochs=0)
    first = LeGRCallback(flops=[0.5, 0.8], dirpath=str(tmp_path / "legr"), **settings)
    trainer(tmp_path, [first]).fit(tiny_module(), datamodule=tiny_data())
    stamp = os.path.getmtime(first.results[1]["checkpoint"])
    again = LeGRCallback(flops=[0.8, 0.5], dirpath=str(tmp_path / "legr"), **settings)  # the order does not matter
    trainer(tmp_path, [again]).fit(tiny_module(), datamodule=tiny_data())
    assert os.path.getmtime(again.results[1]["checkpoint"]) == stamp
    assert [r["flops"] for r in again.results] == [r["flops"] for r in first.results]


# ---------------------------------------------------------------------- errors before any compute
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(flops=[]), "`flops` is empty"),
        (dict(flops=[0.0]), r"`flops` must be in \(0, 1\]"),
        (dict(flops=[1.5]), r"`flops` must be in \(0, 1\]"),
        (dict(flops=[0.5, 0.5]), "more than once"),
        (dict(flops=[0.5, 1.0]), r"`flops` lists 1\.0, the unpruned model, which is always the first row"),
        (dict(flops=[0.5], search_flops=1.0), r"`search_flops` lists 1\.0"),
        (dict(flops=[0.5], mode="avg"), "`mode` can be min or max, got 'avg'"),
        (dict(flops=[0.5], population=4, sample_size=8), "`sample_size`"),
        (dict(flops=[0.5], tau=-1), "`tau`"),
        (dict(flops=[0.5], criterion="l3"), "`criterion`"),
        (dict(flops=[0.5], transform="no/such/transform.json"), "No transform file"),
        (dict(flops=[0.5], sigma=float("nan")), r"`sigma` must be a finite number > 0 .*got nan"),
        (dict(flops=[0.5], sigma=float("inf")), r"`sigma` must be a finite number > 0 .*got inf"),
        (dict(flops=[0.5], sigma=-1.0), r"`sigma` must be a finite number > 0 .*got -1\.0"),
        (dict(flops=[0.5], ignored_layers="model.features.0"),
         r"`ignored_layers` must be a list of module names, got the string 'model.features.0'; write \['model"),
        (dict(flops=[0.5], dirpath=3), "`dirpath` must be a path .*got int 3"),
        (dict(flops=[0.5], seed=-1), "`seed` must be an integer >= 0, got -1"),
        (dict(flops=[0.5], seed=0.5), "`seed` must be an integer >= 0, got 0.5"),
        (dict(flops=[0.5], latency="yes"), "`latency` must be True or False, got 'yes'"),
        (dict(flops=[0.5], latency_threads=0), "`latency_threads` must be an integer >= 1, got 0"),
        (dict(flops=[0.5], tau_lr=float("nan")), "`tau_lr` must be a number > 0 or None"),
        (dict(flops=[0.5], criterion=object()), "`criterion` can be"),
        (dict(flops=[0.5], ignored_layers=[torch.nn.Conv2d(1, 1, 1)]), "`ignored_layers` must be module names"),
        (dict(flops=[0.5], bn_batches=-1), "`bn_batches`"),
        (dict(flops=[0.5], reuse_fitness=1), "`reuse_fitness` must be True or False, got 1"),
        (dict(flops=[0.5], memory_format="nhwc"), "`memory_format` can be auto, channels_last, contiguous"),
        (dict(flops=[0.5], early_rejection=1), "`early_rejection` must be True or False, got 1"),
        (dict(flops=[0.5], early_rejection=True), r"`early_rejection=True` needs `fitness_batches` \(e.g. 40\)"),
        (dict(flops=[0.5], early_rejection=True, fitness_batches=8), r"needs `fitness_batches` > 8 \(e.g. 40\), got 8"),
        (dict(flops=[0.5], search_flops=[0.2, 2.0]), r"`search_flops` must be in \(0, 1\]"),
    ],
)
def test_bad_settings_are_refused_at_construction(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        LeGRCallback(**kwargs)


def test_settings_that_do_nothing_useful_are_warned():
    with pytest.warns(UserWarning, match=r"`generations` \(4\) <= `population` \(4\)"):
        LeGRCallback(flops=[0.5], generations=4, population=4, sample_size=2)
    with pytest.warns(UserWarning, match=r"mode='max'\) with monitor='val_loss': the name says loss"):
        LeGRCallback(flops=[0.5], mode="max")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LeGRCallback(flops=[0.5], mode="max", monitor="val_acc")


def fit_fails(tmp_path, callback, module=None, match="", max_epochs=3, **fit_kwargs):
    CountingClassifier.steps = 0
    module = module or CountingClassifier(width=8)
    with pytest.raises(ConfigurationError, match=match):
        trainer(tmp_path, [callback], max_epochs=max_epochs).fit(module, **fit_kwargs)
    assert CountingClassifier.steps == 0


def test_no_validation_data(tmp_path):
    data = tiny_data()
    data.setup()
    fit_fails(
        tmp_path, LeGRCallback(flops=[0.5], dirpath=str(tmp_path / "l")), match="needs validation data",
        train_dataloaders=data.train_dataloader(),
    )


def test_monitor_not_logged_lists_what_is(tmp_path):
    callback = LeGRCallback(flops=[0.5], monitor="val_f1", dirpath=str(tmp_path / "l"))
    fit_fails(tmp_path, callback, match=r"`monitor='val_f1'` is not logged .* logs val_acc, val_loss", datamodule=tiny_data())


def test_model_that_cannot_be_pruned(tmp_path):
    fit_fails(tmp_path, LeGRCallback(flops=[0.5], dirpath=str(tmp_path / "l")), module=LinearOnly(),
              match="no prunable convolution", datamodule=tiny_data())


def test_unreachable_budget(tmp_path):
    callback = LeGRCallback(flops=[0.01], safeguard=0.5, dirpath=str(tmp_path / "l"))
    fit_fails(tmp_path, callback, match="cannot be reached", datamodule=tiny_data())


def test_dirpath_of_another_run(tmp_path):
    (tmp_path / "l").mkdir()
    LeGRCallback(flops=[0.5])  # valid settings
    (tmp_path / "l" / "run.json").write_text(json.dumps({"format": "lightning-legr/run", "settings": {"legr": {"flops": [0.3]}}}))
    fit_fails(tmp_path, LeGRCallback(flops=[0.5], dirpath=str(tmp_path / "l")), match="holds another LeGR run",
              datamodule=tiny_data())


def test_dirpath_of_another_model(tmp_path):
    dirpath = str(tmp_path / "legr")
    settings = dict(SMALL_SEARCH, generations=3, population=2, sample_size=1, finetune_epochs=0)
    trainer(tmp_path, [LeGRCallback(flops=[0.5], dirpath=dirpath, **settings)], max_epochs=0).fit(
        tiny_module(), datamodule=tiny_data()
    )
    # another LightningModule class, even of the same architecture, is another run
    fit_fails(tmp_path, LeGRCallback(flops=[0.5], dirpath=dirpath, **settings), datamodule=tiny_data(), max_epochs=0,
              match=r"holds another LeGR run; these settings differ: module.class: "
                    r"'lightning_legr.demos.digits.DigitsClassifier' there, 'tests.lightning_helpers.CountingClassifier'"
                    r" here\. Use another dirpath")
    # so are other hyperparameters of the same class, and another number of pretraining epochs
    fit_fails(tmp_path, LeGRCallback(flops=[0.5], dirpath=dirpath, **settings), module=tiny_module(CountingClassifier, lr=0.5),
              match=r"module.class: .*; module.hparams.lr: 0.05 there, 0.5 here; trainer.max_epochs: 0 there, 3 here\.",
              datamodule=tiny_data(), max_epochs=3)
    # a base.ckpt that does not load into the module is refused before any training
    save_module_checkpoint(tiny_module(width=16), tmp_path / "legr" / "base.ckpt")
    fit_fails(tmp_path, LeGRCallback(flops=[0.5], dirpath=dirpath, **settings), module=tiny_module(), datamodule=tiny_data(),
              max_epochs=0, match=r"holds the base.ckpt of another model: its weights do not load into this "
                                  r"DigitsClassifier \(Error\(s\) in loading state_dict")


def test_transform_of_another_model(tmp_path):
    path = tmp_path / "t.json"
    Transform.identity([("conv1", 16), ("layer1.0.conv1", 16)]).save(path)
    callback = LeGRCallback(flops=[0.5], transform=str(path), dirpath=str(tmp_path / "l"))
    fit_fails(tmp_path, callback, match="learned on another model", datamodule=tiny_data())


def test_data_module_is_left_with_the_outer_trainer(tmp_path):
    data = tiny_data()
    t = trainer(tmp_path, [LeGRCallback(flops=[0.5], dirpath=str(tmp_path / "legr"), **SMALL_SEARCH)])
    t.fit(DigitsClassifier(width=8), datamodule=data)
    assert data.trainer is t
    assert isinstance(data, DigitsDataModule)


def test_several_search_budgets_and_odd_budget_names(tmp_path):
    callback = LeGRCallback(
        flops=[0.333, 0.7], search_flops=[0.333, 0.7], dirpath=str(tmp_path / "legr"), **dict(SMALL_SEARCH, finetune_epochs=0)
    )
    trainer(tmp_path, [callback]).fit(tiny_module(), datamodule=tiny_data())
    assert callback.transform.info["search_flops"] == [0.333, 0.7]
    assert (tmp_path / "legr" / "flops_0.333" / "pruned.ckpt").exists()
    assert (tmp_path / "legr" / "widths_0.70.png").exists()


def test_resumed_run_does_not_train_even_with_min_epochs(tmp_path):
    settings = dict(SMALL_SEARCH, finetune_epochs=0)
    trainer(tmp_path, [LeGRCallback(flops=[0.5], dirpath=str(tmp_path / "legr"), **settings)]).fit(
        tiny_module(CountingClassifier), datamodule=tiny_data()
    )
    CountingClassifier.steps = 0
    again = trainer(tmp_path, [LeGRCallback(flops=[0.5], dirpath=str(tmp_path / "legr"), **settings)], min_epochs=2)
    again.fit(CountingClassifier(width=8), datamodule=tiny_data())
    assert CountingClassifier.steps == 0


def test_bn_recalibration_improves_the_pruned_score(tmp_path):
    first = LeGRCallback(flops=[0.3], dirpath=str(tmp_path / "first"), **dict(SMALL_SEARCH, finetune_epochs=0))
    trainer(tmp_path / "first", [first], max_epochs=3).fit(tiny_module(), datamodule=tiny_data())
    weights = torch.load(tmp_path / "first" / "base.ckpt", weights_only=True)["state_dict"]
    scores = {}
    for bn_batches in (0, 4):  # the same weights and transform: only the recalibration differs
        module = tiny_module()
        module.load_state_dict(weights)
        callback = LeGRCallback(flops=[0.3], bn_batches=bn_batches, transform=str(tmp_path / "first" / "transform.json"),
                                dirpath=str(tmp_path / f"bn{bn_batches}"), **dict(SMALL_SEARCH, finetune_epochs=0))
        trainer(tmp_path / f"bn{bn_batches}", [callback], max_epochs=0).fit(module, datamodule=tiny_data())
        scores[bn_batches] = callback.results[1]["metric_before"]
    assert scores[4] < scores[0]


# ---------------------------------------------------------------------- reproducible scoring
@pytest.mark.parametrize(
    "scoring", [dict(bn_batches=4), dict(bn_batches=2, tau=2, fitness_batches=1)], ids=["bn_batches", "tau"]
)
def test_resumed_search_scores_candidates_as_an_uninterrupted_one(tmp_path, monkeypatch, scoring):
    """The BatchNorm batches and the tau batches come from shuffled training data: they must not depend on
    the global random state, which differs in a resumed process."""
    settings = dict(SMALL_SEARCH, generations=6, population=3, finetune_epochs=0, **scoring)

    def fit(name, global_seed):
        module = tiny_module(CountingClassifier)
        torch.manual_seed(global_seed)  # another global random state for every run, as in another process
        CountingClassifier.steps = 0
        callback = LeGRCallback(flops=[0.5], dirpath=str(tmp_path / name), **settings)
        trainer(tmp_path / name, [callback], max_epochs=0).fit(module, datamodule=tiny_data())
        return json.loads((tmp_path / name / "search_state.json").read_text())

    reference = fit("ref", 1)
    assert CountingClassifier.steps == settings["generations"] * settings.get("tau", 0)  # tau steps per candidate

    calls = kill_search_at_step(monkeypatch, 4)
    with pytest.raises(RuntimeError, match="killed"):
        fit("run", 2)
    killed = json.loads((tmp_path / "run" / "search_state.json").read_text())
    calls["n"] = -100
    resumed = fit("run", 3)
    assert calls["n"] == -100 + 3  # generations 3..5 ran in the resumed process
    assert resumed["evolution"] == reference["evolution"]
    assert resumed["fitness_cache"] == reference["fitness_cache"]
    assert resumed["notes"] == killed["notes"]  # the fast-path decision of the first process is kept, timings too
    assert [r["cached"] for r in resumed["generations"]] == [r["cached"] for r in reference["generations"]]
    cached = sum(r["cached"] for r in reference["generations"])
    if "tau" in scoring:  # the tau steps make the fitness random: never reused
        assert reference["fitness_cache"] == [] and cached == 0 and reference["notes"] == {}  # no fast path
    else:
        assert len(reference["fitness_cache"]) == settings["generations"] - cached
        assert all(len(e["widths"]) == 1 for e in reference["fitness_cache"])  # one search budget


def test_seeded_block_leaves_the_global_random_state_alone():
    torch.manual_seed(5)
    before = torch.get_rng_state()
    with seeded(123):
        inside = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(123)
    assert torch.equal(inside, torch.rand(3))


class StopAtTrainStart(Callback):
    """Records the global random state the pretraining starts with, then stops the fit."""

    def on_train_start(self, trainer, pl_module):
        self.state = torch.get_rng_state()
        raise RuntimeError("stop")


def test_checks_at_fit_start_leave_the_pretraining_random_state_alone(tmp_path):
    states = []
    for callbacks in ([], [LeGRCallback(flops=[0.5], dirpath=str(tmp_path / "legr"))]):
        probe = StopAtTrainStart()
        module = tiny_module()
        with pytest.raises(RuntimeError, match="stop"):
            trainer(tmp_path, [*callbacks, probe], logger=False).fit(module, datamodule=tiny_data())
        states.append(probe.state)
    assert torch.equal(*states)


# ---------------------------------------------------------------------- already trained models
def test_already_trained_model_with_max_epochs_0(tmp_path):
    module = tiny_module(CountingClassifier)
    trainer(tmp_path / "pre", [], max_epochs=1, logger=False).fit(module, datamodule=tiny_data())
    weights = {k: v.clone() for k, v in module.state_dict().items()}
    CountingClassifier.steps = 0
    callback = LeGRCallback(flops=[0.5], dirpath=str(tmp_path / "legr"), **dict(SMALL_SEARCH, finetune_epochs=0))
    trainer(tmp_path, [callback], max_epochs=0).fit(module, datamodule=tiny_data())
    assert CountingClassifier.steps == 0
    assert [r["budget"] for r in callback.results] == [1.0, 0.5]
    base = torch.load(tmp_path / "legr" / "base.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(base[k], v) for k, v in weights.items())


def test_fit_resumed_from_a_checkpoint_with_no_epochs_left(tmp_path):
    pretraining = trainer(tmp_path / "pre", [], max_epochs=1, logger=False, enable_checkpointing=False)
    pretraining.fit(tiny_module(), datamodule=tiny_data())
    path = str(tmp_path / "pretrained.ckpt")
    pretraining.save_checkpoint(path)

    CountingClassifier.steps = 0
    callback = LeGRCallback(flops=[0.5], dirpath=str(tmp_path / "legr"), **dict(SMALL_SEARCH, finetune_epochs=0))
    trainer(tmp_path, [callback], max_epochs=1).fit(tiny_module(CountingClassifier), datamodule=tiny_data(), ckpt_path=path)
    assert CountingClassifier.steps == 0
    assert [r["budget"] for r in callback.results] == [1.0, 0.5]
    base = torch.load(tmp_path / "legr" / "base.ckpt", weights_only=True)["state_dict"]
    pretrained = torch.load(path, weights_only=True)["state_dict"]
    assert all(torch.equal(base[k], v) for k, v in pretrained.items())


# ---------------------------------------------------------------------- results
def test_finetuning_that_makes_the_model_worse_keeps_the_pruned_one(tmp_path):
    module = tiny_module()
    trainer(tmp_path / "pre", [], max_epochs=3, logger=False).fit(module, datamodule=tiny_data())
    module.hparams.lr = 5.0  # fine-tuning diverges
    callback = LeGRCallback(flops=[0.7], dirpath=str(tmp_path / "legr"), **SMALL_SEARCH)
    with pytest.warns(UserWarning, match="did not improve on the pruned model .* Lower the learning rate"):
        trainer(tmp_path, [callback], max_epochs=0).fit(module, datamodule=tiny_data())
    row = callback.results[1]
    assert row["metric_after"] > row["metric_before"]  # the table still shows what fine-tuning gave
    assert row["checkpoint"] == str(tmp_path / "legr" / "flops_0.70" / "pruned.ckpt")
    assert (tmp_path / "legr" / "flops_0.70" / "best.ckpt").exists()
    assert json.loads((tmp_path / "legr" / "results.json").read_text())["results"][1]["checkpoint"] == "flops_0.70/pruned.ckpt"
    pruned = load_pruned(row["checkpoint"], DigitsClassifier)
    assert count_flops(pruned, torch.zeros(1, 1, 8, 8)) == row["flops"]


def test_pruned_starting_point_is_saved_when_finetuning_helps(tmp_path):
    callback = LeGRCallback(flops=[0.5], dirpath=str(tmp_path / "legr"), **dict(SMALL_SEARCH, finetune_epochs=2))
    trainer(tmp_path, [callback], max_epochs=0).fit(tiny_module(), datamodule=tiny_data())  # untrained: tuning helps
    row = callback.results[1]
    assert row["metric_after"] < row["metric_before"]
    assert row["checkpoint"].endswith(os.path.join("flops_0.50", "best.ckpt"))
    assert (tmp_path / "legr" / "flops_0.50" / "pruned.ckpt").exists()




# ---------------------------------------------------------------------- NaN and infinite metrics
class BrokenMetric(DigitsClassifier):
    """Logs ``val_score`` (higher is better): ``bad`` for every network whose parameter count is a multiple of ``every``,
    the negative loss otherwise; every network when ``every`` is 1. Also warns, as a user's code may."""

    bad = float("nan")
    every = 3

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        loss = torch.nn.functional.cross_entropy(self(batch[0]), batch[1])
        params = sum(p.numel() for p in self.parameters())
        self.log("val_score", -loss if params % self.every else torch.tensor(self.bad))
        warnings.warn("a warning of the user's own", UserWarning)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_candidate_with_a_non_finite_metric_counts_as_the_worst(tmp_path, bad, monkeypatch):
    monkeypatch.setattr(BrokenMetric, "bad", bad)
    settings = dict(SMALL_SEARCH, generations=8, population=4, finetune_epochs=0)
    callback = LeGRCallback(flops=[0.5], monitor="val_score", mode="max", dirpath=str(tmp_path / "legr"), **settings)
    with pytest.warns(UserWarning, match="a warning of the user's own"):  # the user's own warnings still show
        trainer(tmp_path, [callback], max_epochs=0).fit(tiny_module(BrokenMetric), datamodule=tiny_data())
    rows = read_csv(trainer_log(tmp_path))
    flags = [float(r["legr/non_finite"]) for r in rows if r.get("legr/non_finite")]
    assert len(flags) == 8 and 0 < sum(flags) < 8  # some candidates were broken, and logged as such
    best = [float(r["legr/best"]) for r in rows if r.get("legr/best")]
    assert all(math.isfinite(b) for b in best)  # +inf in mode max never becomes the best
    state = json.loads((tmp_path / "legr" / "search_state.json").read_text())
    assert None in state["evolution"]["fitness"] + [h[0] for h in state["evolution"]["history"]]
    assert "NaN or infinite" in state["evolution"]["note"]
    assert math.isfinite(callback.transform.info["best_metric"])


def test_a_search_where_every_candidate_is_nan_stops_naming_the_monitor(tmp_path, monkeypatch):
    monkeypatch.setattr(BrokenMetric, "every", 1)  # every network
    settings = dict(SMALL_SEARCH, generations=8, population=4, finetune_epochs=0)
    callback = LeGRCallback(flops=[0.5], monitor="val_score", mode="max", dirpath=str(tmp_path / "legr"), **settings)
    with pytest.raises(ValueError, match=r"Every one of the 4 candidates so far scored NaN or infinity on `monitor='val_score'`"):
        trainer(tmp_path, [callback], max_epochs=0).fit(tiny_module(BrokenMetric), datamodule=tiny_data())
    state = json.loads((tmp_path / "legr" / "search_state.json").read_text())
    assert state["evolution"]["generation"] == 3  # the state of the last good write: the run stopped at once
