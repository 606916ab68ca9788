"""BatchNorm recalibration: new statistics from data, weights and training flags untouched."""

import torch
from torch import nn

from lightning_legr import prune
from lightning_legr.core.calibration import recalibrate_batchnorm
from lightning_legr.models import cifar_resnet


def test_statistics_follow_the_data_and_nothing_else_changes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4), nn.Dropout(0.5)).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = [torch.randn(16, 3, 5, 5) * 3 + 2 for _ in range(4)]
    assert recalibrate_batchnorm(model, batches) == 4
    conv_out = torch.cat([model[0](b) for b in batches])
    assert torch.allclose(model[1].running_mean, conv_out.mean((0, 2, 3)), atol=1e-5)
    assert not model.training and not model[1].training  # flags restored
    assert model[1].momentum == 0.1
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())


def test_no_batches_keeps_the_old_statistics():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    model[1].running_mean.fill_(3.0)
    assert recalibrate_batchnorm(model, []) == 0
    assert torch.equal(model[1].running_mean, torch.full((4,), 3.0))


def test_without_batchnorm_it_does_nothing():
    assert recalibrate_batchnorm(nn.Linear(3, 2), [torch.randn(2, 3)]) == 0


def test_pruned_network_loss_improves_after_recalibration():
    torch.manual_seed(0)
    model = cifar_resnet(20).eval()
    x = torch.randn(64, 3, 32, 32)
    with torch.no_grad():
        for _ in range(3):  # give the BatchNorms statistics of this data, as after training
            model.train()(x)
    model.eval()
    pruned = prune(model, x[:1], flops=0.4)
    with torch.no_grad():
        target = model(x)
        before = (pruned.eval()(x) - target).pow(2).mean()
        recalibrate_batchnorm(pruned, [x])
        after = (pruned(x) - target).pow(2).mean()
    assert after < before
