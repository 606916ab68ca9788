"""Pruned checkpoints load back into the user's own LightningModule class and resume training."""

import pytest
import torch

from lightning_legr import LeGRPruner, load_pruned, pruning_record
from lightning_legr.checkpoint import save_module_checkpoint
from lightning_legr.demos.digits import DigitsClassifier
from tests.lightning_helpers import tiny_data, tiny_module, trainer


def pruned_module(flops=0.5):
    module = tiny_module(width=16)
    return LeGRPruner(module, module.example_input_array).prune(flops)


def test_load_pruned_gives_identical_outputs_and_class(tmp_path):
    module = pruned_module()
    t = trainer(tmp_path, [], max_epochs=1)
    t.fit(module, datamodule=tiny_data())  # a pruned module trains like any other
    path = str(tmp_path / "pruned.ckpt")
    t.save_checkpoint(path)

    loaded = load_pruned(path, DigitsClassifier)
    assert type(loaded) is DigitsClassifier
    assert "on_load_checkpoint" not in DigitsClassifier.__dict__  # the temporary hook is gone
    x = torch.randn(5, 1, 8, 8)
    module.eval(), loaded.eval()
    assert torch.equal(loaded(x), module(x))
    assert pruning_record(loaded) == pruning_record(module)
    assert loaded.hparams.width == 16


def test_plain_load_from_checkpoint_fails_on_a_pruned_model(tmp_path):
    path = save_module_checkpoint(pruned_module(), tmp_path / "p.ckpt")
    with pytest.raises(RuntimeError):
        DigitsClassifier.load_from_checkpoint(path)
    assert load_pruned(path, DigitsClassifier) is not None


def test_resume_training_from_a_pruned_checkpoint(tmp_path):
    t = trainer(tmp_path, [], max_epochs=1)
    t.fit(pruned_module(0.3), datamodule=tiny_data())
    path = str(tmp_path / "p.ckpt")
    t.save_checkpoint(path)

    resumed = trainer(tmp_path / "again", [], max_epochs=2)
    model = load_pruned(path, DigitsClassifier)
    resumed.fit(model, datamodule=tiny_data(), ckpt_path=path)
    assert resumed.current_epoch == 2 and resumed.global_step == 2 * t.global_step
    # checkpoints saved by any trainer carry the pruning record in the state dict
    again = str(tmp_path / "again.ckpt")
    resumed.save_checkpoint(again)
    assert pruning_record(torch.load(again, weights_only=True)["state_dict"]) == pruning_record(model)


def test_kwargs_override_saved_hyperparameters(tmp_path):
    path = save_module_checkpoint(pruned_module(), tmp_path / "p.ckpt")
    assert load_pruned(path, DigitsClassifier, lr=0.123).hparams.lr == 0.123


def test_unpruned_checkpoint_is_refused_with_advice(tmp_path):
    path = save_module_checkpoint(tiny_module(), tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="load_from_checkpoint instead"):
        load_pruned(path, DigitsClassifier)


def test_weights_only_checkpoint_trains_without_ckpt_path(tmp_path):
    """pruned.ckpt and base.ckpt hold no optimizer state: as documented, fit them without ckpt_path."""
    path = save_module_checkpoint(pruned_module(), tmp_path / "pruned.ckpt")
    with pytest.raises(KeyError, match="contains only the model"):
        trainer(tmp_path / "a", [], max_epochs=1).fit(
            load_pruned(path, DigitsClassifier), datamodule=tiny_data(), ckpt_path=path
        )
    t = trainer(tmp_path / "b", [], max_epochs=1)
    t.fit(load_pruned(path, DigitsClassifier), datamodule=tiny_data())
    assert t.global_step > 0
