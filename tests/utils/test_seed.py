"""`danling.utils.seed`: seed validation, seeding every generator, and RNG state that survives `weights_only`."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from danling.utils.io import load, save
from danling.utils.seed import MAX_SEED, get_rng_state, seed_everything, set_rng_state, validate_seed


def draws() -> tuple:
    """The next draws of every generator, including the Gaussian ones that cache a second value."""
    return (
        random.random(),
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        float(np.random.standard_normal()),
        torch.rand(3).tolist(),
        torch.randn(2).tolist(),
    )


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**32 - 1, np.uint32(7), np.int64(2**32 - 1)])
def test_validate_seed_accepts_integers_in_range_and_returns_an_int(seed):
    result = validate_seed(seed)
    assert result == int(seed)
    assert type(result) is int


def test_max_seed_is_two_to_the_32_minus_one():
    assert MAX_SEED == 2**32 - 1


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, 1.0, True, False, "3", None, np.int64(-1)])
def test_validate_seed_rejects_out_of_range_and_non_integers_naming_the_value(seed):
    with pytest.raises(ValueError, match=r"\[0, 4294967295\]") as info:
        validate_seed(seed)
    assert repr(seed) in str(info.value)


def test_seed_everything_returns_the_seed():
    assert seed_everything(0) == 0
    assert seed_everything(MAX_SEED) == MAX_SEED


def test_seed_everything_rejects_an_invalid_seed():
    with pytest.raises(ValueError, match="-1"):
        seed_everything(-1)


@pytest.mark.parametrize("seed", [0, 42, MAX_SEED])
def test_seed_everything_makes_python_numpy_and_torch_reproducible(seed):
    seed_everything(seed)
    first = draws()
    seed_everything(seed)
    assert draws() == first


def test_seed_everything_with_different_seeds_gives_different_draws():
    seed_everything(1)
    first = draws()
    seed_everything(2)
    second = draws()
    for a, b in zip(first, second):
        assert a != b


def test_seed_everything_without_torch_leaves_torch_alone():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    seed_everything(5, torch=False)
    assert torch.equal(torch.rand(4), expected)
    seed_everything(5, torch=False)
    python_and_numpy = (random.random(), np.random.rand())
    seed_everything(5, torch=False)
    assert (random.random(), np.random.rand()) == python_and_numpy


def test_rng_state_round_trips_through_torch_save_and_weights_only_load(tmp_path):
    seed_everything(2024)
    draws()  # an odd number of Gaussian draws leaves a cached second value in python and numpy
    path = tmp_path / "rng.pth"
    torch.save(get_rng_state(), path)
    expected = draws()

    seed_everything(7)
    draws()
    set_rng_state(torch.load(path, weights_only=True))
    assert draws() == expected


def test_rng_state_round_trips_through_danling_save_and_load(tmp_path):
    seed_everything(99)
    draws()
    path = tmp_path / "state.pth"
    save({"rng": get_rng_state()}, path)
    expected = draws()
    random.random()
    set_rng_state(load(path)["rng"])
    assert draws() == expected


def test_get_rng_state_has_one_entry_per_generator():
    state = get_rng_state()
    assert {"python", "numpy", "torch"} <= set(state)
    assert isinstance(state["torch"], torch.Tensor)
    assert isinstance(state["numpy"]["key"], torch.Tensor)


def test_set_rng_state_restores_only_the_generators_it_is_given():
    seed_everything(3)
    state = get_rng_state()
    expected_python = random.random()
    torch.manual_seed(11)
    expected_torch = torch.rand(2)
    torch.manual_seed(11)
    set_rng_state({"python": state["python"]})
    assert random.random() == expected_python
    assert torch.equal(torch.rand(2), expected_torch)
