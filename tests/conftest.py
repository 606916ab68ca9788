"""Shared fixtures: one finished tiny LeGR run, made once per session, for the tests that only read it."""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List

import lightning.pytorch as pl
import pytest

from tests.lightning_helpers import SMALL_SEARCH, tiny_data, tiny_module, trainer

collect_ignore = ["scripts"]  # scripts the tests launch in processes of their own, not tests


@dataclass
class FinishedRun:
    """A LeGR run over two budgets, fine-tuned and timed, with what it logged."""

    callback: "lightning_legr.LeGRCallback"  # noqa: F821
    trainer: pl.Trainer
    root: Path  # the Trainer's default_root_dir (its CSV logs are in root/logs)
    dirpath: Path  # the run directory
    log: List[str]  # every message logged at INFO and above, from the Trainer's construction to the end of fit


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


FINISHED_SETTINGS = dict(SMALL_SEARCH, flops=[0.4, 0.7], finetune_epochs=2, latency=True, memory_format="auto")


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> FinishedRun:
    from lightning_legr import LeGRCallback

    root = tmp_path_factory.mktemp("finished")
    lightning_logger = logging.getLogger("lightning.pytorch")
    handler, level = _Collect(), lightning_logger.level
    lightning_logger.addHandler(handler)
    lightning_logger.setLevel(logging.INFO)
    try:
        callback = LeGRCallback(dirpath=str(root / "legr"), **FINISHED_SETTINGS)
        t = trainer(root, [callback], max_epochs=2)
        t.fit(tiny_module(), datamodule=tiny_data())
    finally:
        lightning_logger.removeHandler(handler)
        lightning_logger.setLevel(level)
    return FinishedRun(callback, t, root, root / "legr", handler.messages)
