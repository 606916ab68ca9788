"""Parameter budgets through the Lightning glue: LeGRCallback(params=...), the CLI, and a transform learned on
FLOPs applied to budgets of the parameters with no new search."""

import json

import pytest
import torch

from lightning_legr import LeGRCallback, Transform, load_pruned
from lightning_legr.cli import DEMO_CONFIG, main
from lightning_legr.core.errors import ConfigurationError
from lightning_legr.core.flops import count_flops, count_params
from lightning_legr.demos.digits import DigitsClassifier
from tests.lightning_helpers import SMALL_SEARCH, tiny_data, tiny_module, trainer
from tests.test_cli import FAST


def _check_rows(results, dirpath, kind="params"):
    base = results[0]
    assert base["params_ratio"] == 1.0 and base["kind"] == kind
    for row in results[1:]:
        loaded = load_pruned(row["checkpoint"], DigitsClassifier)
        params = count_params(loaded)  # counted independently, on the module as it loads back
        assert params == row["params"] and row["kind"] == kind
        assert row["params_ratio"] == pytest.approx(params / base["params"])
        assert row["params_ratio"] <= row["budget"]  # never over
        # a width-8 net is coarse: one channel of a group is several percent of its parameters
        assert row["budget"] - row["params_ratio"] < 0.05
        assert count_flops(loaded, torch.zeros(1, 1, 8, 8)) == row["flops"]
        assert row["checkpoint"].startswith(str(dirpath / f"params_{row['budget']:.2f}"))


def test_a_run_on_parameter_budgets(tmp_path):
    dirpath = tmp_path / "legr"
    callback = LeGRCallback(params=[0.4, 0.7], dirpath=str(dirpath), **SMALL_SEARCH)
    assert callback.params == [0.4, 0.7] and callback.flops is None
    trainer(tmp_path, [callback]).fit(tiny_module(), datamodule=tiny_data())
    assert [r["budget"] for r in callback.results] == [1.0, 0.7, 0.4]
    _check_rows(callback.results, dirpath)
    # the search pruned its candidates to 40% of the parameters, not of the FLOPs
    state = json.loads((dirpath / "search_state.json").read_text())
    assert state["kind"] == "params" and state["budgets"] == [0.4]
    assert callback.transform.info["search_params"] == 0.4 and "search_flops" not in callback.transform.info
    assert json.loads((dirpath / "run.json").read_text())["settings"]["legr"]["params"] == [0.4, 0.7]
    assert (dirpath / "metric_vs_params.png").read_bytes()[:4] == b"\x89PNG"
    assert not (dirpath / "metric_vs_flops.png").exists()

    # the same budgets as FLOPs are another run
    with pytest.raises(ConfigurationError, match=r"legr.flops: '<not set>' there, \[0.4, 0.7\] here"):
        trainer(tmp_path, [LeGRCallback(flops=[0.4, 0.7], dirpath=str(dirpath), **SMALL_SEARCH)]).fit(
            tiny_module(), datamodule=tiny_data()
        )


def test_a_transform_learned_on_flops_cuts_parameter_budgets_without_a_search(finished_run, tmp_path):
    learned = finished_run.dirpath / "transform.json"
    assert Transform.load(learned).info["search_flops"] == 0.4
    dirpath = tmp_path / "legr"
    callback = LeGRCallback(params=[0.5], transform=str(learned), dirpath=str(dirpath), **SMALL_SEARCH)
    t = trainer(tmp_path, [callback], max_epochs=0)
    t.fit(tiny_module(), datamodule=tiny_data(), ckpt_path=None)
    assert not (dirpath / "search_state.json").exists()
    assert callback.transform == Transform.load(learned)
    _check_rows(callback.results, dirpath)


def test_the_prune_subcommand_cuts_parameter_budgets(finished_run, tmp_path):
    again = tmp_path / "again"
    main(["prune", "--config", DEMO_CONFIG, *FAST, f"--trainer.default_root_dir={again}",
          f"--ckpt_path={finished_run.dirpath / 'base.ckpt'}", f"--legr.transform={finished_run.dirpath / 'transform.json'}",
          f"--legr.dirpath={again}", "--legr.flops=null", "--legr.params=[0.5]"])
    results = json.loads((again / "results.json").read_text())["results"]
    assert [(r["budget"], r["kind"]) for r in results] == [(1.0, "params"), (0.5, "params")]
    assert 0.45 < results[1]["params_ratio"] <= 0.5
    assert not (again / "search_state.json").exists()


def test_both_kinds_on_the_command_line_is_one_line_and_status_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", DEMO_CONFIG, *FAST, f"--trainer.default_root_dir={tmp_path}", "--legr.params=[0.5]"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Give one kind of budgets, not `flops` and `params`" in lines[0] and "--legr.flops=null" in lines[0]
    assert not (tmp_path / "legr").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(flops=[0.5], params=[0.5]), "Give one kind of budgets, not `flops` and `params`"),
        (dict(), r"Give the budgets: `flops=\[0.3, 0.5, 0.7\]` .* `params=\[0.3, 0.5\]` .* or `latency_budgets=\[0.5, 0.7\]`"),
        (dict(params=[0.5, 1.0]), r"`params` lists 1\.0, the unpruned model"),
        (dict(params=[0.5, 2.0]), r"`params` must be in \(0, 1\]"),
        (dict(params=[0.5], search_flops=0.3), "`search_flops` was given with budgets of the parameters.* Use `search_params`"),
        (dict(flops=[0.5], search_params=0.3), "`search_params` was given with budgets of the FLOPs.* Use `search_flops`"),
        (dict(params=[0.5], search_params=[0.3, 1.5]), r"`search_params` must be in \(0, 1\]"),
    ],
)
def test_bad_parameter_budgets_are_refused_at_construction(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        LeGRCallback(**kwargs)


def test_an_unreachable_parameter_budget_is_refused_before_training(tmp_path):
    callback = LeGRCallback(params=[0.01], dirpath=str(tmp_path / "legr"), **SMALL_SEARCH)
    with pytest.raises(ConfigurationError, match=r"A parameter budget of 0\.01 cannot be reached: .* leaves at least"):
        trainer(tmp_path, [callback]).fit(tiny_module(), datamodule=tiny_data())
    assert not (tmp_path / "legr" / "base.ckpt").exists()
