"""The weight EMA against its closed form, timm's warm-up, and BatchNorm statistics averaged alike."""
import pytest
import torch
from torch import nn

from sweepcnn.train.ema import WARMUP_POWER, WeightAverage


def test_ema_equals_the_closed_form_without_warmup():
    model = nn.Linear(1, 1, bias=False)
    values = [0.5, 2.0, -1.0, 3.0, 0.25]
    with torch.no_grad():
        model.weight.fill_(10.0)
    ema = WeightAverage(model, decay=0.9, warmup=False)
    for v in values:
        with torch.no_grad():
            model.weight.fill_(v)
        ema.update()
    # e_T = d^T e_0 + sum_t (1 - d) d^(T - t) w_t, e_0 = the weights when the EMA was made
    d, T = 0.9, len(values)
    closed = d ** T * 10.0 + sum((1 - d) * d ** (T - t) * v for t, v in enumerate(values, 1))
    assert ema.module.weight.item() == pytest.approx(closed, rel=1e-6)
    assert model.weight.item() == values[-1]  # the model itself is untouched


def test_warmup_copies_first_then_follows_timm_and_is_capped():
    model = nn.Linear(1, 1, bias=False)
    ema = WeightAverage(model, decay=0.99, warmup=True)
    assert ema.decay_at(1) == 0.0
    assert ema.decay_at(2) == pytest.approx(1 - 2 ** -WARMUP_POWER)
    assert ema.decay_at(10**6) == 0.99
    with torch.no_grad():
        model.weight.fill_(4.0)
    ema.update()
    assert ema.module.weight.item() == 4.0  # decay 0: a copy of the trained weights, none of the initial ones
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema.update()
    assert ema.module.weight.item() == pytest.approx(4.0 * (1 - 2 ** -WARMUP_POWER))


def test_batchnorm_statistics_are_averaged_and_counters_copied():
    model = nn.BatchNorm1d(2)
    ema = WeightAverage(model, decay=0.5, warmup=False)
    model.train()
    model(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
    ema.update()
    torch.testing.assert_close(ema.module.running_mean, 0.5 * torch.zeros(2) + 0.5 * model.running_mean)
    assert ema.module.num_batches_tracked.item() == 1
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_state_dict_round_trip():
    model = nn.Linear(3, 2)
    ema = WeightAverage(model, decay=0.9, warmup=True)
    for _ in range(3):
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update()
    other = WeightAverage(nn.Linear(3, 2), decay=0.9, warmup=True)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 3 and torch.equal(other.module.weight, ema.module.weight)
