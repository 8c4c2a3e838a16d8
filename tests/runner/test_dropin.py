"""Scripts and configs written against the documented DanLing run unchanged (issue: drop-in)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from uuid import uuid5

import pytest
import torch
from torch.utils.data import TensorDataset
from toys import RegressionRunner, ResumableRunner, make_config

import danling as dl

SAVE_SCRIPT = Path(__file__).parent / "dist_scripts" / "save_from_one_process.py"
STALE_SCRIPT = Path(__file__).parent / "dist_scripts" / "save_after_the_snapshot.py"


# Documented values


@pytest.mark.parametrize("value", [-1, 0, None])
def test_save_interval_that_is_not_positive_keeps_no_epoch_copies(tmp_path, value):
    runner = RegressionRunner(make_config(tmp_path, epoch_end=3, save_interval=value))
    runner.train()
    names = sorted(os.listdir(runner.checkpoint_dir))
    assert "latest.pth" in names
    assert [name for name in names if name.startswith("epoch-")] == []


def test_save_interval_spelled_as_the_original_default_in_yaml_is_accepted(tmp_path):
    config = dl.Config.from_yamls(f"project_root: {tmp_path}\nsave_interval: -1\nlog_interval: -1\nlog: false\n")
    assert config.save_interval == -1 and config.log_interval == -1


def test_log_interval_that_is_not_positive_logs_no_step_lines(tmp_path, capsys):
    runner = RegressionRunner(make_config(tmp_path, epoch_end=1, log_interval=-1))
    runner.train()
    out = capsys.readouterr().out
    assert "training on train" not in out
    assert "epoch [0/0]" in out


@pytest.mark.parametrize(
    ("name", "value"),
    [("epoch_end", -1), ("step_end", -3), ("save_interval", 1.5), ("log_interval", "often"), ("iter_end", 2.5)],
)
def test_nonsense_progress_values_are_rejected_naming_the_key(name, value):
    with pytest.raises((ValueError, TypeError), match=name):
        dl.Config(**{name: value})


def test_total_iters_is_zero_without_a_train_split_and_iter_end(tmp_path):
    runner = dl.TorchRunner(make_config(tmp_path))
    assert runner.config.epoch_end is None
    assert runner.total_iters == 0
    assert runner.total_steps == 0


# Batches and modes


def test_infer_on_a_one_tensor_dataset_passes_the_tensor_to_the_model(tmp_path):
    runner = RegressionRunner(make_config(tmp_path))
    inputs = torch.randn(10, 4)
    runner.datasets.inf = TensorDataset(inputs)
    runner.build_dataloaders()
    with torch.no_grad():
        expected = runner.model(inputs)
    assert torch.allclose(runner.infer("inf"), expected)


def test_setting_mode_puts_model_and_ema_in_that_mode(tmp_path):
    runner = RegressionRunner(make_config(tmp_path))
    runner.ema = torch.optim.swa_utils.AveragedModel(runner.model)
    runner.mode = "eval"
    assert not runner.model.training and not runner.ema.training
    runner.mode = dl.runner.meta.RunnerMode.train
    assert runner.model.training and runner.ema.training
    runner.mode = "inf"
    assert not runner.model.training and not runner.ema.training


# Identity


def test_run_id_is_a_string_as_soon_as_the_config_exists_and_follows_overrides():
    config = dl.Config(lr=0.1)
    assert isinstance(config.run_id, str) and config.run_id == config.run_uuid.hex
    before = config.run_id
    config.parse(["--lr", "0.2"])
    assert config.run_id != before and config.run_id == config.run_uuid.hex
    config.steps, config.epochs = 100, 3
    assert config.run_id == config.run_uuid.hex


def test_an_explicit_run_id_is_kept():
    config = dl.Config(run_id="mine")
    config.parse(["--lr", "0.3"])
    assert config.run_id == "mine"
    assert dl.Config.from_yamls(config.yamls()).run_id == "mine"


def test_two_runners_from_identical_configs_without_a_seed_share_uuid(tmp_path):
    first = RegressionRunner(make_config(tmp_path, seed=None))
    second = RegressionRunner(make_config(tmp_path, seed=None))
    assert first.config.seed != second.config.seed, "two drawn seeds should differ"
    assert first.id == second.id
    assert first.uuid == second.uuid == uuid5(first.config.run_uuid, first.id)


def test_a_resumed_run_with_a_drawn_seed_keeps_its_uuid(tmp_path):
    runner = RegressionRunner(make_config(tmp_path, seed=None, epoch_end=1))
    runner.train()
    path = os.path.join(runner.checkpoint_dir, "latest.pth")
    resumed = RegressionRunner.from_checkpoint(path)
    assert resumed.config.seed == runner.config.seed
    assert (resumed.id, resumed.uuid) == (runner.id, runner.uuid)
    through_config = RegressionRunner(make_config(tmp_path, seed=None, checkpoint=path))
    assert (through_config.id, through_config.uuid) == (runner.id, runner.uuid)


class FillingRunner(RegressionRunner):
    """Fills in a key in `__init__`, after the runner pinned its id: the saved content is not what named the run."""

    def __init__(self, config):
        super().__init__(config)
        self.config.features = 4


def trained_filling_runner(tmp_path) -> FillingRunner:
    runner = FillingRunner(make_config(tmp_path, epoch_end=1))
    runner.train()
    assert runner.config.run_id != runner.config.run_uuid.hex, "the pinned id must differ from the content's"
    return runner


def test_config_yaml_holds_the_run_id_and_loads_back_to_the_same_run(tmp_path, capsys):
    runner = trained_filling_runner(tmp_path)
    path = os.path.join(runner.dir, "config.yaml")
    assert dl.load(path)["run_id"] == runner.config.run_id
    loaded = dl.Config.from_yaml(path)
    assert loaded.run_id == loaded["run_id"] == runner.config.run_id
    loaded.resume = True
    resumed = FillingRunner(loaded)
    assert resumed.id == runner.id
    assert os.path.dirname(resumed.dir) == os.path.dirname(runner.dir)
    assert "resume: continuing from" in capsys.readouterr().out


def test_a_config_yaml_with_a_cli_override_names_a_new_run(tmp_path):
    runner = trained_filling_runner(tmp_path)
    loaded = dl.Config.from_yaml(os.path.join(runner.dir, "config.yaml"))
    loaded.parse(["--lr", "0.02"])
    assert loaded.run_id == loaded.run_uuid.hex != runner.config.run_id
    changed = FillingRunner(loaded)
    assert changed.id != runner.id
    assert os.path.dirname(changed.dir) != os.path.dirname(runner.dir)


def test_a_checkpoint_config_keeps_its_run_id_until_it_changes(tmp_path):
    runner = trained_filling_runner(tmp_path)
    path = os.path.join(runner.checkpoint_dir, "latest.pth")
    stored = runner.read_checkpoint_file(path)["runner"]
    assert stored["run_id"] == runner.config.run_id
    assert dl.Config(stored).run_id == runner.config.run_id
    assert FillingRunner.from_checkpoint(path).id == runner.id
    changed = dl.Config(stored)
    changed.lr = 0.02
    assert changed.run_id == changed.run_uuid.hex != runner.config.run_id
    # Continuing a run from its checkpoint keeps the run's id, whatever else the config now says (when allowed).
    continued = FillingRunner(make_config(tmp_path, epoch_end=3, lr=0.02, checkpoint=path, allow_config_change=True))
    assert continued.id == runner.id


# Bounded disk


def test_max_epoch_checkpoints_keeps_only_the_newest_copies(tmp_path):
    config = make_config(tmp_path, epoch_end=5, save_interval=1, max_epoch_checkpoints=2, val_samples=16)
    runner = RegressionRunner(config)
    runner.train()
    names = set(os.listdir(runner.checkpoint_dir))
    assert {name for name in names if name.startswith("epoch-")} == {"epoch-3.pth", "epoch-4.pth"}
    assert {"latest.pth", "best.pth"} <= names
    best = dl.load(os.path.join(runner.checkpoint_dir, "best.pth"))
    assert best["runner"]["epochs"] == runner.best_index


def test_max_epoch_checkpoints_must_be_positive():
    with pytest.raises(ValueError, match="max_epoch_checkpoints"):
        dl.Config(max_epoch_checkpoints=0)


# Saving from any process


@pytest.mark.parametrize("who", ["main", "rank1", "all"])
def test_save_called_on_some_processes_neither_hangs_nor_loses_exactness(tmp_path, distributed_runner, who):
    output = tmp_path / "out"
    output.mkdir()
    distributed_runner(SAVE_SCRIPT, str(output), str(tmp_path / "experiments"), who, timeout=180)
    reports = [json.loads((output / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    manual = Path(reports[0]["dir"]) / "checkpoints" / "manual.pth"
    if who == "rank1":
        # Only the main process writes: a save called on rank 1 alone writes nothing and returns.
        assert not manual.exists()
        return
    assert manual.exists()
    checkpoint = dl.load(str(manual))
    assert all(entry is not None for entry in checkpoint["rng"]), "every process's RNG state must be in it"
    for rank in (0, 1):
        resumed = json.loads((output / f"resumed{rank}.json").read_text())
        assert resumed["epochs"] == 3
        assert resumed["parameters"] == reports[rank]["parameters"]


def test_a_checkpoint_without_other_ranks_state_warns_on_load(tmp_path):
    runner = ResumableRunner(make_config(tmp_path, epoch_end=1))
    runner.train()
    state = runner.state_dict()
    state["rng"] = [None]
    with pytest.warns(RuntimeWarning, match="no rng of process 0"):
        ResumableRunner(make_config(tmp_path, epoch_end=1)).load_state_dict(state)


def test_a_save_away_from_the_loops_snapshot_leaves_other_ranks_empty_not_stale(tmp_path, distributed_runner):
    distributed_runner(STALE_SCRIPT, str(tmp_path), str(tmp_path / "experiments"), timeout=180)
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    # Saved 2 micro-batches after the epoch's-end snapshot: rank 1's state then is unknown to rank 0.
    assert reports[0]["saved_iters"] == reports[0]["snapshot_iters"] + 2
    assert reports[0]["empty"] == reports[1]["empty"] == [False, True]
    assert not [message for message in reports[0]["warnings"] if "process 0" in message], reports[0]["warnings"]
    assert "checkpoint holds no rng of process 1: not restored" in reports[1]["warnings"], reports[1]["warnings"]
