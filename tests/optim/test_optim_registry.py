"""`OPTIMIZERS` and `SCHEDULERS`: building from configs, and errors for names nobody registered."""

from __future__ import annotations

import chanfig
import pytest
import torch

from danling.optim import OPTIMIZERS, SCHEDULERS, LRScheduler


@pytest.fixture
def model() -> torch.nn.Module:
    return torch.nn.Linear(4, 2)


def test_build_sgd_from_unpacked_dict_config(model):
    config = {"type": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}
    optimizer = OPTIMIZERS.build(model.parameters(), **config)
    assert type(optimizer) is torch.optim.SGD
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.9, 1e-4)
    assert len(group["params"]) == 2


def test_build_sgd_with_params_as_keyword(model):
    optimizer = OPTIMIZERS.build(params=model.parameters(), type="sgd", lr=0.1)
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.param_groups[0]["lr"] == 0.1


def test_build_adamw_from_mapping_config_with_override(model):
    config = {"type": "AdamW", "lr": 3e-4, "weight_decay": 0.1}
    optimizer = OPTIMIZERS.build(config, params=model.parameters(), weight_decay=0.05)
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.param_groups[0]["lr"] == 3e-4
    assert optimizer.param_groups[0]["weight_decay"] == 0.05
    assert config == {"type": "AdamW", "lr": 3e-4, "weight_decay": 0.1}, "build must not consume the config"


def test_build_adamw_from_chanfig_config(model):
    config = chanfig.Config(optim={"type": "adamw", "lr": 1e-3, "betas": (0.9, 0.95)})
    optimizer = OPTIMIZERS.build(model.parameters(), **config.optim)
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.95)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("sgd", torch.optim.SGD),
        ("adam", torch.optim.Adam),
        ("adamw", torch.optim.AdamW),
        ("rmsprop", torch.optim.RMSprop),
        ("adagrad", torch.optim.Adagrad),
        ("RMSprop", torch.optim.RMSprop),
    ],
)
def test_optimizer_names(name, cls):
    assert OPTIMIZERS.lookup(name) is cls


def test_every_registered_optimizer_is_an_optimizer_under_a_lowercase_name():
    assert len(OPTIMIZERS) >= 10
    for name, cls in OPTIMIZERS.items():
        assert name == name.lower()
        assert issubclass(cls, torch.optim.Optimizer), name


def test_unknown_optimizer_error_lists_valid_names(model):
    with pytest.raises(ValueError) as info:
        OPTIMIZERS.build(model.parameters(), type="adamm", lr=0.1)
    message = str(info.value)
    assert "'adamm'" in message
    assert "adamw" in message
    assert "sgd" in message


def test_missing_type_error_points_at_the_key(model):
    with pytest.raises(ValueError, match="'type' entry missing"):
        OPTIMIZERS.build(model.parameters(), lr=0.1)


def test_unknown_scheduler_error_lists_valid_names():
    with pytest.raises(ValueError) as info:
        SCHEDULERS.lookup("warmup_cosine")
    message = str(info.value)
    assert "'warmup_cosine'" in message
    assert "lr_scheduler" in message
    assert "onecycle" in message


@pytest.mark.parametrize("name", ["lr_scheduler", "danling", "LRScheduler", "lrscheduler"])
def test_danling_scheduler_names(name):
    assert SCHEDULERS.lookup(name) is LRScheduler


def test_scheduler_built_from_config_matches_direct_construction(model):
    config = {"type": "lr_scheduler", "strategy": "cosine", "warmup_steps": 0.1, "final_lr_ratio": 0.01}
    built_optimizer = OPTIMIZERS.build(model.parameters(), type="sgd", lr=0.1)
    built = SCHEDULERS.build(built_optimizer, total_steps=50, **config)
    direct = LRScheduler(
        torch.optim.SGD(model.parameters(), lr=0.1),
        total_steps=50,
        strategy="cosine",
        warmup_steps=5,
        final_lr_ratio=0.01,
    )
    assert type(built) is LRScheduler
    assert [built.get_lr_at(step) for step in range(55)] == [direct.get_lr_at(step) for step in range(55)]


@pytest.mark.parametrize(
    ("config", "cls"),
    [
        ({"type": "step", "step_size": 10}, torch.optim.lr_scheduler.StepLR),
        ({"type": "multistep", "milestones": [10, 20]}, torch.optim.lr_scheduler.MultiStepLR),
        ({"type": "cosine", "T_max": 10}, torch.optim.lr_scheduler.CosineAnnealingLR),
        ({"type": "onecycle", "max_lr": 0.1, "total_steps": 10}, torch.optim.lr_scheduler.OneCycleLR),
        ({"type": "exponential", "gamma": 0.9}, torch.optim.lr_scheduler.ExponentialLR),
    ],
)
def test_build_torch_schedulers(model, config, cls):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert type(SCHEDULERS.build(optimizer, **config)) is cls
