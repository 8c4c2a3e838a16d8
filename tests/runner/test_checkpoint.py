"""Checkpoints: what they hold, the ways to load them, errors that name the culprit, and writes that never corrupt."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from toys import RegressionRunner, make_config

from danling.runner.checkpoint import extract_model_state


def trained_runner(tmp_path, epochs=2, **kwargs):
    runner = RegressionRunner(make_config(tmp_path, epoch_end=epochs, val_samples=16, **kwargs))
    runner.train()
    return runner


def assert_same_parameters(a, b):
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), name


def test_checkpoint_holds_config_parts_results_and_rng(tmp_path):
    runner = trained_runner(tmp_path)
    saved = torch.load(os.path.join(runner.checkpoint_dir, "latest.pth"), weights_only=True)
    assert {"runner", "model", "optimizer", "results", "timestamp", "rng"} <= set(saved)
    assert saved["runner"]["epochs"] == 1 and saved["runner"]["steps"] == runner.config.steps
    assert set(saved["results"]) == {0, 1}


def test_load_checkpoint_into_a_new_runner_restores_parameters_optimizer_and_counters(tmp_path):
    runner = trained_runner(tmp_path, momentum=0.9)
    fresh = RegressionRunner(make_config(tmp_path / "fresh", epoch_end=4, val_samples=16))
    fresh.load_checkpoint(os.path.join(runner.checkpoint_dir, "latest.pth"))
    assert_same_parameters(runner, fresh)
    fresh_state, state = fresh.optimizer.state_dict()["state"], runner.optimizer.state_dict()["state"]
    assert state and all(torch.equal(fresh_state[i]["momentum_buffer"], state[i]["momentum_buffer"]) for i in state)
    assert (fresh.config.iters, fresh.config.steps, fresh.config.epochs) == (
        runner.config.iters,
        runner.config.steps,
        runner.config.epochs,
    )
    assert fresh.config.epoch_begin == 2
    fresh.train()
    assert sorted(fresh.results.keys()) == [0, 1, 2, 3]


def test_from_checkpoint_continues_at_the_next_epoch_in_the_same_directory(tmp_path):
    runner = trained_runner(tmp_path)
    resumed = RegressionRunner.from_checkpoint(os.path.join(runner.checkpoint_dir, "latest.pth"))
    assert resumed.config.epoch_begin == 2
    assert resumed.dir == runner.dir and resumed.id == runner.id
    assert_same_parameters(runner, resumed)
    resumed.config.epoch_end = 3
    resumed.train()
    assert sorted(resumed.results.keys()) == [0, 1, 2]


def test_checkpoint_in_config_resumes_on_construction(tmp_path):
    runner = trained_runner(tmp_path)
    path = os.path.join(runner.checkpoint_dir, "latest.pth")
    resumed = RegressionRunner(make_config(tmp_path, epoch_end=3, val_samples=16, checkpoint=path))
    assert resumed.config.epoch_begin == 2
    assert resumed.config.checkpoint == path
    assert_same_parameters(runner, resumed)


def test_load_checkpoint_from_a_mapping_never_stores_the_payload(tmp_path):
    runner = trained_runner(tmp_path)
    fresh = RegressionRunner(make_config(tmp_path / "fresh"))
    fresh.load_checkpoint(runner.state_dict())
    assert fresh.config.checkpoint is None
    assert_same_parameters(runner, fresh)


def test_from_checkpoint_accepts_a_mapping(tmp_path):
    runner = trained_runner(tmp_path)
    resumed = RegressionRunner.from_checkpoint(runner.state_dict())
    assert resumed.config.checkpoint is None and resumed.config.epoch_begin == 2
    assert_same_parameters(runner, resumed)


def test_load_pretrained_loads_only_the_model(tmp_path):
    runner = trained_runner(tmp_path)
    fresh = RegressionRunner(make_config(tmp_path / "fresh"))
    fresh.load_pretrained({"model": {"module": runner.model.state_dict()}})
    assert_same_parameters(runner, fresh)
    assert fresh.config.steps == 0 and not fresh.results


def test_extract_model_state_strips_nested_keys_and_ddp_prefix():
    weight = torch.ones(1)
    assert extract_model_state({"model": {"module": {"w": weight}}})["w"] is weight
    assert set(extract_model_state({"module.w": weight})) == {"w"}


@pytest.mark.parametrize("method", ["load_checkpoint", "load_pretrained", "load_config"])
def test_missing_checkpoint_file_names_the_path(tmp_path, method):
    runner = RegressionRunner(make_config(tmp_path))
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        getattr(runner, method)(missing)


@pytest.mark.parametrize("method", ["load_checkpoint", "load_pretrained", "load_config"])
def test_invalid_checkpoint_value_names_it(tmp_path, method):
    runner = RegressionRunner(make_config(tmp_path))
    with pytest.raises(ValueError, match="12345"):
        getattr(runner, method)(12345)


@pytest.mark.parametrize("name", ["config.yaml", "latest.pth"])
def test_a_text_file_given_as_checkpoint_is_called_no_checkpoint_and_loading_pickles_is_never_advised(tmp_path, name):
    # The run's own config.yaml passed as --checkpoint, under its name or under a checkpoint's.
    runner = trained_runner(tmp_path)
    path = tmp_path / name
    path.write_text(Path(runner.write_config_file()).read_text())
    for construct in (
        lambda: RegressionRunner(make_config(tmp_path / "again", checkpoint=str(path))),
        lambda: RegressionRunner.from_checkpoint(str(path)),
    ):
        with pytest.raises(ValueError) as raised:
            construct()
        message = str(raised.value)
        assert message.startswith(f"checkpoint {str(path)!r} is not a checkpoint: it holds text: 'project_root: ")
        assert "checkpoints/latest.pth" in message
        chained = raised.value.__cause__ or raised.value.__context__
        assert "weights_only" not in message and (chained is None or "weights_only" not in str(chained))


def test_load_checkpoint_without_a_model_is_a_clear_error(tmp_path):
    import danling as dl

    with pytest.raises(ValueError, match="model is not defined"):
        dl.TorchRunner(make_config(tmp_path)).load_checkpoint({"model": {}})


def test_failed_checkpoint_write_raises_with_the_path_and_keeps_the_previous_one(tmp_path):
    runner = trained_runner(tmp_path)
    latest = os.path.join(runner.checkpoint_dir, "latest.pth")
    with open(latest, "rb") as fp:
        before = fp.read()
    runner.config.unpicklable = lambda: None  # torch.save fails half-way through serialising the state
    # The pickling error keeps its type (which differs across Python versions) and gains the path.
    with pytest.raises((pickle.PicklingError, AttributeError)) as info:
        runner.save_checkpoint()
    assert latest in str(info.value)
    assert "pickle" in str(info.value)
    with open(latest, "rb") as fp:
        assert fp.read() == before
    assert [f for f in os.listdir(runner.checkpoint_dir) if f.endswith(".tmp")] == []


def test_unwritable_checkpoint_path_raises_with_the_path(tmp_path):
    runner = RegressionRunner(make_config(tmp_path))
    os.makedirs(os.path.join(runner.checkpoint_dir, "latest.pth", "occupied"))
    with pytest.raises(OSError, match="latest.pth"):
        runner.save_checkpoint()


def test_checkpoint_loads_with_weights_only(tmp_path):
    runner = trained_runner(tmp_path)
    for name in ("latest.pth", "best.pth"):
        state = torch.load(os.path.join(runner.checkpoint_dir, name), weights_only=True)
        assert "model" in state


def test_first_save_removes_temporaries_a_killed_writer_left(tmp_path):
    runner = RegressionRunner(make_config(tmp_path))
    stale = os.path.join(runner.checkpoint_dir, ".latest.pth.abc123.tmp")
    with open(stale, "wb") as fp:
        fp.write(b"half a checkpoint")
    runner.save_checkpoint()
    assert not os.path.exists(stale)
    assert os.path.isfile(os.path.join(runner.checkpoint_dir, "latest.pth"))
