"""A resume does what its command says: a changed config stops it unless allowed (and then takes effect and is
recorded), it writes where its checkpoint is, and never over results newer than its checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import torch
import yaml
from toys import RegressionRunner, make_config

import danling as dl
from danling.runner.resumption import ConfigChangeError, config_changes, keep_global_batch
from danling.utils.git import git_state


class ScheduledRegression(RegressionRunner):
    """`RegressionRunner` with a warmup-cosine schedule over the run, on `config.lr`."""

    def __init__(self, config):
        super().__init__(config)
        self.scheduler = dl.LRScheduler(self.optimizer, total_steps=self.total_steps, warmup_steps=0.2)


def first_run(root, epoch_end=2, **kwargs) -> RegressionRunner:
    runner = ScheduledRegression(make_config(root, epoch_end=epoch_end, lr=0.05, **kwargs))
    runner.train()
    return runner


def read_text(path) -> str:
    with open(path) as file:
        return file.read()


def read_json(path):
    return json.loads(read_text(path))


def latest(runner) -> str:
    return os.path.join(runner.checkpoint_dir, "latest.pth")


def test_a_changed_learning_rate_stops_the_resume_with_a_diff_and_the_flag(tmp_path):
    runner = first_run(tmp_path)
    config_file = os.path.join(runner.dir, "config.yaml")
    before = read_text(config_file)
    with pytest.raises(ConfigChangeError) as raised:
        ScheduledRegression(make_config(tmp_path, epoch_end=4, lr=0.1, checkpoint=latest(runner)))
    message = str(raised.value)
    assert "lr: 0.05 → 0.1" in message
    assert "--allow_config_change" in message
    assert "epoch_end" not in message, "a key that only steers the run is not a reason to stop"
    assert read_text(config_file) == before, "the run's record must not claim values it did not run with"


def test_a_steering_change_resumes_and_is_reported_and_recorded(tmp_path, capsys):
    runner = first_run(tmp_path)
    # Another log_interval than the one the first run chose for itself.
    log_interval = runner.config.log_interval + 1
    config = make_config(tmp_path, epoch_end=4, lr=0.05, checkpoint=latest(runner), log_interval=log_interval)
    resumed = ScheduledRegression(config)
    assert "resume: changed epoch_end: 2 → 4, log_interval: " in capsys.readouterr().out
    resumed.train()
    assert resumed.dir == runner.dir
    (record,) = yaml.safe_load(read_text(os.path.join(resumed.dir, "config.diff.yaml")))
    assert record["changes"]["epoch_end"] == [2, 4]
    assert record["epoch"] == 2 and record["allowed"] == []


def test_an_allowed_learning_rate_change_reaches_the_optimizer_and_the_schedule(tmp_path):
    # From the middle of the schedule (epoch 2 of 4), where the learning rate is neither warming up nor at its floor.
    runner = first_run(tmp_path, epoch_end=4, save_interval=1)
    snapshot = os.path.join(runner.checkpoint_dir, "epoch-1.pth")
    old_lr = dl.load(snapshot)["optimizer"]["param_groups"][0]["lr"]
    config = make_config(tmp_path, epoch_end=4, lr=0.1, checkpoint=snapshot, allow_config_change=True)
    resumed = ScheduledRegression(config)
    scheduler = resumed.scheduler
    assert scheduler.base_lrs == [0.1]
    assert resumed.optimizer.param_groups[0]["initial_lr"] == 0.1
    (lr,) = scheduler.get_lr_at(scheduler.last_epoch)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(lr)
    assert lr == pytest.approx(old_lr * 2), "the schedule continues where it was, on the new scale"
    (record,) = resumed.config.config_changes
    assert record["changes"] == {"lr": [0.05, 0.1]} and record["allowed"] == ["lr"] and record["epoch"] == 2


def test_which_epochs_ran_under_which_values_is_in_the_results_and_the_config(tmp_path):
    runner = first_run(tmp_path)
    config = make_config(tmp_path, epoch_end=4, lr=0.1, checkpoint=latest(runner), allow_config_change=True)
    ScheduledRegression(config).train()
    results = read_json(os.path.join(runner.dir, "results.json"))
    assert sorted(results["results"], key=int) == ["0", "1", "2", "3"]
    (change,) = results["config_changes"]
    assert change["epoch"] == 2 and change["changes"]["lr"] == [0.05, 0.1]
    saved = yaml.safe_load(read_text(os.path.join(runner.dir, "config.yaml")))
    assert saved["lr"] == 0.1 and saved["config_changes"][0]["changes"]["lr"] == [0.05, 0.1]


def test_a_resume_from_a_copied_run_writes_into_the_copy(tmp_path):
    runner = first_run(tmp_path / "original")
    original = runner.dir
    copy = str(tmp_path / "copy" / "run")
    shutil.copytree(original, copy)
    before = read_text(os.path.join(original, "results.json"))
    checkpoint = os.path.join(copy, "checkpoints", "latest.pth")
    resumed = ScheduledRegression(make_config(tmp_path / "original", epoch_end=4, lr=0.05, checkpoint=checkpoint))
    resumed.train()
    assert resumed.dir == copy
    assert read_text(os.path.join(original, "results.json")) == before
    assert len(read_json(os.path.join(copy, "results.json"))["results"]) == 4


def test_a_resume_from_an_older_checkpoint_never_overwrites_newer_results(tmp_path, capsys):
    # A finished run of 6 epochs; resuming from its epoch-2 snapshot (and failing) once cut results.json to 3 epochs.
    runner = first_run(tmp_path, epoch_end=6, save_interval=1)
    results_file = os.path.join(runner.dir, "results.json")
    state_file = os.path.join(runner.dir, "run.json")
    before = read_text(results_file)
    snapshot = os.path.join(runner.checkpoint_dir, "epoch-2.pth")
    resumed = ScheduledRegression(make_config(tmp_path, epoch_end=6, lr=0.05, checkpoint=snapshot))
    assert resumed.dir != runner.dir
    assert os.path.dirname(resumed.dir) == os.path.dirname(runner.dir), "a new timestamped directory beside it"
    assert "already holds results past this checkpoint" in capsys.readouterr().out
    resumed.train()
    assert read_text(results_file) == before
    assert read_json(state_file)["state"] == "finished"
    assert len(read_json(os.path.join(resumed.dir, "results.json"))["results"]) == 6


def set_run_state(run_dir, state) -> None:
    path = os.path.join(run_dir, "run.json")
    record = read_json(path)
    record["state"] = state
    with open(path, "w") as file:
        json.dump(record, file)


def test_an_unfinished_run_with_a_newer_checkpoint_is_not_overwritten_either(tmp_path, capsys):
    runner = first_run(tmp_path, epoch_end=4, save_interval=1)
    set_run_state(runner.dir, "interrupted")  # stopped after epoch 3, `latest` holds it
    before = read_text(os.path.join(runner.dir, "results.json"))
    snapshot = os.path.join(runner.checkpoint_dir, "epoch-1.pth")
    resumed = ScheduledRegression(make_config(tmp_path, epoch_end=4, lr=0.05, checkpoint=snapshot))
    assert resumed.dir != runner.dir and "already holds results past this checkpoint" in capsys.readouterr().out
    resumed.train()
    assert read_text(os.path.join(runner.dir, "results.json")) == before


def test_results_past_the_newest_intact_checkpoint_of_a_crashed_run_are_redone_in_place(tmp_path):
    # A crash after epoch 3's results were written and before its save completed: the newest checkpoint that loads
    # is epoch 2's. Resuming from it (as resume=True would) continues the run where it is.
    runner = first_run(tmp_path, epoch_end=4, save_interval=1)
    set_run_state(runner.dir, "crashed")
    for name in ("latest.pth", "best.pth", "epoch-3.pth"):
        os.remove(os.path.join(runner.checkpoint_dir, name))
    snapshot = os.path.join(runner.checkpoint_dir, "epoch-2.pth")
    resumed = ScheduledRegression(make_config(tmp_path, epoch_end=4, lr=0.05, checkpoint=snapshot))
    assert resumed.dir == runner.dir
    resumed.train()
    assert sorted(read_json(os.path.join(runner.dir, "results.json"))["results"], key=int) == ["0", "1", "2", "3"]
    assert read_json(os.path.join(runner.dir, "run.json"))["state"] == "finished"


def test_run_json_records_the_commit_and_a_hash_of_uncommitted_changes(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    (repo / "train.py").write_text("lr = 0.1\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "train.py"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "first"], cwd=repo, check=True)
    monkeypatch.chdir(repo)
    clean = first_run(tmp_path / "a")
    recorded = read_json(os.path.join(clean.dir, "run.json"))["git"]
    assert recorded["dirty"] is False and recorded["diff_sha256"] is None
    assert len(recorded["commit"]) == 40
    (repo / "train.py").write_text("lr = 0.2\n")
    edited = first_run(tmp_path / "b")
    changed = read_json(os.path.join(edited.dir, "run.json"))["git"]
    assert changed["commit"] == recorded["commit"] and changed["dirty"] is True
    (repo / "train.py").write_text("lr = 0.3\n")
    assert git_state(str(repo))["diff_sha256"] != changed["diff_sha256"]


def test_from_checkpoint_of_an_unchanged_config_reports_nothing(tmp_path, capsys):
    runner = first_run(tmp_path)
    capsys.readouterr()
    resumed = ScheduledRegression.from_checkpoint(latest(runner))
    assert "resume:" not in capsys.readouterr().out
    assert resumed.config.get("config_changes") is None
    assert torch.equal(resumed.model.weight, runner.model.weight)


def test_accumulation_may_change_with_the_number_of_processes_only_if_the_global_batch_stays():
    saved = {"accum_steps": 2, "dataloader": {"batch_size": 8}, "optim": {"lr": 0.1}}
    current = {"accum_steps": 1, "dataloader": {"batch_size": 8}, "optim": {"lr": 0.1}}
    shaping, steering = config_changes(saved, current)
    assert shaping == {"accum_steps": (2, 1)} and steering == {}
    keep_global_batch(shaping, steering, saved, current, saved_world=1, world=2)  # 8 × 2 × 1 = 8 × 1 × 2
    assert shaping == {} and steering == {"accum_steps": (2, 1)}

    shaping, steering = config_changes(saved, current)
    keep_global_batch(shaping, steering, saved, current, saved_world=1, world=1)  # 16 samples a step, then 8
    assert shaping == {"accum_steps": (2, 1)} and steering == {}


def test_a_resume_takes_no_launch_keys_from_its_checkpoint(tmp_path):
    # Saved by a launch on gloo with its device named; resumed by a launch that names neither.
    runner = first_run(tmp_path, backend="gloo", device="cpu")
    resumed = ScheduledRegression(make_config(tmp_path, epoch_end=2, lr=0.05, checkpoint=latest(runner)))
    for key in ("backend", "device"):
        assert resumed.config.get(key) is None, key
    assert resumed.config.epoch_begin == 2
