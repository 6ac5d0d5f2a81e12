"""EMA decay warm-up and update arithmetic."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainer.engine.ema import ModelEMA


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_decay_warms_up_towards_decay():
    ema = ModelEMA(_model(), decay=0.999, tau=100)
    decays = []
    for _ in range(1000):
        ema.updates += 1
        decays.append(ema.current_decay())
    assert decays[0] == pytest.approx(0.999 * (1 - math.exp(-1 / 100)))
    assert decays[99] == pytest.approx(0.999 * (1 - math.exp(-1)))
    assert decays[-1] == pytest.approx(0.999, rel=1e-4)
    assert all(a < b for a, b in zip(decays, decays[1:]))


def test_update_is_a_lerp_with_the_current_decay_and_copies_integer_buffers():
    model = _model()
    ema = ModelEMA(model, decay=0.9, tau=2.0)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randn(8, 3))  # moves BN running stats and num_batches_tracked
    ema.update(model)
    d = 0.9 * (1 - math.exp(-1 / 2.0))
    for name, value in ema.module.state_dict().items():
        current = model.state_dict()[name]
        if value.dtype.is_floating_point:
            torch.testing.assert_close(value, d * before[name] + (1 - d) * current)
        else:
            assert torch.equal(value, current)
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert not ema.module.training


def test_state_dict_round_trip(tmp_path):
    model = _model()
    ema = ModelEMA(model, decay=0.99, tau=10)
    for _ in range(3):
        ema.update(model)
    torch.save(ema.state_dict(), tmp_path / "ema.pt")
    other = ModelEMA(_model(), decay=0.99, tau=10)
    other.load_state_dict(torch.load(tmp_path / "ema.pt", weights_only=True))
    assert other.updates == 3
    for a, b in zip(ema.module.state_dict().values(), other.module.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("decay,tau", [(1.0, 10), (0.0, 10), (0.9, 0)])
def test_invalid_settings_are_refused(decay, tau):
    with pytest.raises(ValueError):
        ModelEMA(_model(), decay=decay, tau=tau)
