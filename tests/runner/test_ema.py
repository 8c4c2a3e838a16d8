"""The EMA helpers the backends share: `average_in_place` against `AveragedModel.update_parameters`, and what the
runner does with an EMA of the `update(model)` kind."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn, get_ema_multi_avg_fn
from toys import UpdateEma, peak_cpu_bytes

from danling.runner.ema import average_in_place, ema_module

AVERAGES = {
    "ema_multi_avg_fn": {"multi_avg_fn": get_ema_multi_avg_fn(0.9)},
    "ema_avg_fn": {"avg_fn": get_ema_avg_fn(0.9)},
    "swa_default": {},
}


def model_with_buffers() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def train_a_little(model: nn.Module, steps: int = 1) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        # Batch norm updates its running statistics too.
        model(torch.randn(32, 8, dtype=model[0].weight.dtype)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("use_buffers", [False, True], ids=["buffers_copied", "buffers_averaged"])
@pytest.mark.parametrize("average", AVERAGES)
def test_average_in_place_matches_update_parameters_bit_for_bit(average, use_buffers):
    model = model_with_buffers()
    ours = AveragedModel(model, use_buffers=use_buffers, **AVERAGES[average])
    torch_s = copy.deepcopy(ours)
    for _ in range(4):  # the first update copies, the others average
        train_a_little(model)
        average_in_place(ours, model.parameters(), model.buffers())
        torch_s.update_parameters(model)
    assert ours.n_averaged.item() == torch_s.n_averaged.item() == 4
    for (name, value), expected in zip(ours.state_dict().items(), torch_s.state_dict().values()):
        assert torch.equal(value, expected), name


def test_average_in_place_from_a_bf16_model_casts_one_tensor_at_a_time():
    model = model_with_buffers()
    ours = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    torch_s = copy.deepcopy(ours)
    half = copy.deepcopy(model).bfloat16()
    for _ in range(3):
        train_a_little(half)
        average_in_place(ours, half.parameters(), half.buffers())
        torch_s.update_parameters(copy.deepcopy(half).float())  # the fp32 copy the update no longer makes
    assert {value.dtype for value in ours.state_dict().values() if value.is_floating_point()} == {torch.float32}
    for (name, value), expected in zip(ours.state_dict().items(), torch_s.state_dict().values()):
        assert torch.equal(value, expected), name

    # What one update allocates at once: one parameter cast to fp32, never the whole model (eight equal layers).
    layers = nn.Sequential(*(nn.Linear(128, 128, bias=False) for _ in range(8)))
    ema = AveragedModel(layers, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    ema.update_parameters(layers)
    layers.bfloat16()
    one_parameter = 128 * 128 * 4
    assert peak_cpu_bytes(lambda: average_in_place(ema, layers.parameters(), layers.buffers())) < 1.5 * one_parameter
    # For scale: the update of a model in another dtype through `update_parameters` (all of it cast, kept at once).
    whole = peak_cpu_bytes(lambda: ema.update_parameters(_Cast(layers)))
    assert whole >= 8 * one_parameter


class _Cast:
    """A model's parameters cast to fp32, as `update_parameters` must be given them for an fp32 EMA."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def parameters(self):
        return [parameter.float() for parameter in self.module.parameters()]

    def buffers(self):
        return list(self.module.buffers())


def test_ema_module_is_the_module_holding_the_weights():
    model = model_with_buffers()
    averaged, updated = AveragedModel(model), UpdateEma(model)
    assert ema_module(averaged) is averaged
    assert ema_module(updated) is updated.module
    assert ema_module(None) is None and ema_module(object()) is None
