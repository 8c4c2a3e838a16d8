"""Training counted in optimizer steps: `step_end` without `epoch_end`, `eval_interval`, results indexed by step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from toys import (
    ClassificationRunner,
    Interrupted,
    RegressionRunner,
    ResumableRunner,
    assert_bitwise_equal,
    final_state,
    make_config,
)

import danling as dl
from danling import cli
from danling.runs import read_run

REPO_ROOT = Path(__file__).resolve().parents[2]
# 60 training samples in batches of 8: 8 batches per pass, the last one of 4 samples.
DATA = {"samples": 60, "val_samples": 25}


def test_training_by_steps_crosses_passes_stops_exactly_at_step_end_and_evaluates_every_interval(tmp_path):
    runner = ResumableRunner(make_config(tmp_path, step_end=20, eval_interval=6, **DATA))
    initial_lr = runner.optimizer.param_groups[0]["initial_lr"]
    assert runner.trains_by_steps and runner.total_steps == 20
    runner.train()

    assert (runner.config.steps, runner.config.iters) == (20, 20)
    assert runner.config.epochs == 2  # passes 0 and 1 whole, pass 2 stopped after 4 of its 8 batches
    assert list(runner.results) == [6, 12, 18, 20]  # every 6 steps, and at the end
    for result in runner.results.values():
        assert set(result) == {"train", "val"}
    # The last result's evaluation is of the final model: evaluating again gives the same numbers.
    assert runner.evaluate(["val"])["val"]["loss"] == pytest.approx(runner.results[20]["val"]["loss"], abs=1e-7)
    # The schedule spans exactly step_end steps: warmup then cosine down to its floor at step 20.
    assert runner.scheduler.last_epoch == 20
    assert runner.optimizer.param_groups[0]["lr"] < 1e-6 * initial_lr
    state = json.loads(Path(runner.dir, "run.json").read_text())
    assert (state["state"], state["steps"]) == ("finished", 20)
    assert runner.results_table().splitlines()[0].split()[0] == "step"


def test_steps_equal_epochs_when_step_end_is_a_whole_number_of_passes(tmp_path):
    # With accumulation over 2 micro-batches, a pass of 8 batches is 4 steps: 3 passes are 12 steps.
    common = {"accum_steps": 2, **DATA}
    by_epochs = ResumableRunner(make_config(tmp_path / "epochs", epoch_end=3, **common))
    by_epochs.train()
    by_steps = ResumableRunner(make_config(tmp_path / "steps", step_end=12, eval_interval=4, **common))
    by_steps.train()

    epochs_state, steps_state = final_state(by_epochs), final_state(by_steps)
    for key in ("model", "ema", "optimizer", "scheduler"):
        assert_bitwise_equal(steps_state[key], epochs_state[key], key)
    assert steps_state["counters"] == epochs_state["counters"] == (24, 12, 2)
    # Each evaluation falls at a pass's end: its training averages are that pass's, its evaluation the epoch's.
    assert list(by_steps.results) == [4, 8, 12]
    for step, epoch in zip(by_steps.results, by_epochs.results):
        assert_bitwise_equal(by_steps.results[step].dict(), by_epochs.results[epoch].dict(), f"step {step}")


def test_patience_counts_evaluations_and_best_is_the_best_step(tmp_path):
    # Loss ranked as if higher were better: the scores soon stop improving and patience ends the run.
    config = make_config(tmp_path, step_end=300, eval_interval=3, patience=2, score_mode="max")
    runner = ClassificationRunner(config)
    runner.train()

    steps = list(runner.results)
    scores = [runner.results[step]["val"]["loss"] for step in steps]
    best = max(range(len(scores)), key=lambda i: (scores[i], i))  # the latest among ties, as the runner picks
    assert steps == list(range(3, 3 * len(steps) + 1, 3))
    assert len(steps) - 1 - best == 2, "stopped at the second evaluation after the best"
    assert all(
        len(steps[: k + 1]) - 1 - max(range(k + 1), key=lambda i: (scores[i], i)) < 2 for k in range(len(steps) - 1)
    )
    assert runner.best_index == steps[best] and runner.config.steps == steps[-1] < 300
    assert json.loads(Path(runner.dir, "run.json").read_text())["state"] == "stopped_early"
    best_checkpoint = dl.load(os.path.join(runner.checkpoint_dir, "best.pth"))
    assert best_checkpoint["runner"]["steps"] == steps[best]
    assert best_checkpoint["position"]["evaluated"] is True
    latest = dl.load(os.path.join(runner.checkpoint_dir, "latest.pth"))
    assert latest["runner"]["steps"] == steps[-1]
    assert f"{steps[best]:>5}" in next(line for line in runner.results_table().splitlines() if "<- best" in line)


@pytest.mark.parametrize(
    ("fail_at_iter", "latest_step"),
    [(10, 8), (14, 12)],  # after a plain checkpoint (step 8), and after an evaluation's checkpoint (step 12)
)
def test_resume_inside_a_pass_is_bitwise_equal_to_an_uninterrupted_run(tmp_path, fail_at_iter, latest_step):
    settings = {"step_end": 20, "eval_interval": 6, "checkpoint_interval": 4, **DATA}
    straight = ResumableRunner(make_config(tmp_path / "straight", **settings))
    straight.train()

    crashed = ResumableRunner(make_config(tmp_path / "crashed", fail_at_iter=fail_at_iter, **settings))
    with pytest.raises(Interrupted):
        crashed.train()
    latest = os.path.join(crashed.checkpoint_dir, "latest.pth")
    assert dl.load(latest)["runner"]["steps"] == latest_step
    resumed = ResumableRunner.from_checkpoint(latest)
    resumed.config.fail_at_iter = None
    resumed.train()
    assert_bitwise_equal(final_state(resumed), final_state(straight))


def test_a_run_by_steps_reads_as_one_in_the_runs_listing(tmp_path):
    runner = ResumableRunner(make_config(tmp_path, step_end=10, eval_interval=4, score_name="acc", **DATA))
    runner.train()
    summary = read_run(runner.dir)
    assert summary.by_steps and (summary.steps, summary.step_end) == (10, 10)
    assert summary.best_epoch == runner.best_index and summary.best_score == runner.best_score
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    shown = subprocess.run(
        [sys.executable, "-m", "danling", "show", runner.dir], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert f"at step {runner.best_index}" in shown
    assert runner.results_table() in shown


def test_a_run_by_steps_counts_the_passes_it_began_in_the_runs_listing(tmp_path, capsys):
    # 10 steps over passes of 8 batches: pass 0 whole, then 2 batches of pass 1. Two passes begun.
    runner = ResumableRunner(make_config(tmp_path, step_end=10, **DATA))
    runner.train()
    state = json.loads(Path(runner.dir, "run.json").read_text())
    assert (state["epochs"], state["steps"]) == (1, 10)  # the index of the pass training ended in, from 0
    summary = read_run(runner.dir)
    assert summary.by_steps and (summary.epochs, summary.steps) == (2, 10)
    capsys.readouterr()
    assert cli.main(["runs", "--json", str(tmp_path)]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["epochs"], listed["steps"]) == (2, 10)
    assert cli.main(["show", runner.dir]) == 0
    assert "epochs:      2 (passes, training by steps)" in capsys.readouterr().out


def test_a_length_in_steps_or_epochs_is_required_and_an_empty_pass_is_an_error(tmp_path):
    runner = RegressionRunner(make_config(tmp_path / "none"))
    with pytest.raises(ValueError, match="epoch_end, or step_end or iter_end"):
        runner.train()
    runner = RegressionRunner(make_config(tmp_path / "empty", step_end=5))
    empty = torch.utils.data.TensorDataset(torch.zeros(0, 4), torch.zeros(0, 1))
    runner.dataloaders.train = torch.utils.data.DataLoader(empty)
    with pytest.raises(ValueError, match="holds no batch"):
        runner.train()


@pytest.mark.usefixtures("own_process_group")
@pytest.mark.parametrize("platform", ["fsdp", "accelerate", "deepspeed"])
def test_training_by_steps_on_the_other_platforms_resumes_exactly_and_keeps_the_best_step(tmp_path, platform):
    if platform != "fsdp":
        pytest.importorskip(platform, reason=f"{platform} is not installed: pip install 'danling[{platform}]'")
    settings = {"step_end": 14, "eval_interval": 4, "checkpoint_interval": 3, "platform": platform, **DATA}
    straight = ResumableRunner(make_config(tmp_path / "straight", **settings))
    straight.train()
    assert list(straight.results) == [4, 8, 12, 14]
    extension = straight.checkpoint_extension
    best = dl.Runner.read_checkpoint_file(os.path.join(straight.checkpoint_dir, f"best{extension}"))
    assert best["runner"]["steps"] == straight.best_index

    crashed = ResumableRunner(make_config(tmp_path / "crashed", fail_at_iter=11, **settings))
    with pytest.raises(Interrupted):
        crashed.train()
    summary = read_run(crashed.dir)  # `danling runs` finds this platform's latest pointer
    assert summary.state == "crashed" and summary.resumable and summary.by_steps
    resumed = ResumableRunner.from_checkpoint(os.path.join(crashed.checkpoint_dir, f"latest{extension}"))
    resumed.config.fail_at_iter = None
    resumed.train()
    assert_bitwise_equal(resumed.results.dict(), straight.results.dict())
    assert resumed.config.steps == straight.config.steps == 14
    for key, value in full_weights(straight).items():
        assert torch.equal(full_weights(resumed)[key], value), key


def full_weights(runner) -> dict:
    """The model's full (unsharded) weights, whatever the platform."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    model = runner.unwrap(runner.model)
    if runner.config.platform == "fsdp":
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return model.state_dict()
