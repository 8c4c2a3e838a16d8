"""`config.profile`: a `torch.profiler` trace of the window of optimizer steps asked for, and of nothing else."""

from __future__ import annotations

import glob
import json
import os

import pytest
from toys import ResumableRunner, make_config


def profiled_steps(trace_file: str) -> list[str]:
    with open(trace_file) as file:
        events = json.load(file)["traceEvents"]
    return sorted({event["name"] for event in events if str(event.get("name", "")).startswith("ProfilerStep#")})


def test_the_trace_holds_the_window_of_steps_and_no_other(tmp_path):
    # 60 samples in batches of 8: 8 optimizer steps an epoch; steps 0-1 untouched, 2 warm-up, 3-4 traced.
    config = make_config(
        tmp_path, epoch_end=2, samples=60, val_samples=25, profile={"wait": 2, "warmup": 1, "active": 2}
    )
    runner = ResumableRunner(config)
    runner.train()
    traces = glob.glob(os.path.join(runner.dir, "profile", "rank0.*.pt.trace.json"))
    assert len(traces) == 1, os.listdir(os.path.join(runner.dir, "profile"))
    assert profiled_steps(traces[0]) == ["ProfilerStep#3", "ProfilerStep#4"]
    with open(traces[0]) as file:
        names = {event.get("name") for event in json.load(file)["traceEvents"]}
    assert "aten::addmm" in names, "the model's own operators are in the trace"
    assert runner.config.steps == 16, "training went on after the window"


def test_a_window_cut_short_by_the_end_of_training_is_still_written(tmp_path):
    config = make_config(
        tmp_path, epoch_end=1, samples=32, val_samples=8, profile={"wait": 1, "warmup": 0, "active": 10}
    )
    runner = ResumableRunner(config)
    runner.train()
    (trace,) = glob.glob(os.path.join(runner.dir, "profile", "*.pt.trace.json"))
    # Steps 1 to 3 (4 steps in all), then what followed the last step until training ended (the evaluation).
    assert profiled_steps(trace) == ["ProfilerStep#1", "ProfilerStep#2", "ProfilerStep#3", "ProfilerStep#4"]


def test_without_profile_no_trace_is_taken(tmp_path):
    runner = ResumableRunner(make_config(tmp_path, epoch_end=1, samples=32, val_samples=8))
    runner.train()
    assert not os.path.exists(os.path.join(runner.dir, "profile"))


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ({"wait": 2, "activ": 3}, r"unknown key\(s\) \['activ'\]"),
        ({"active": 0}, "config.profile.active is 0; expected a whole number of steps, at least 1"),
        ("sometimes", "config.profile is 'sometimes'; expected true, false, or a mapping"),
    ],
)
def test_a_bad_window_stops_the_run_before_training_naming_it(tmp_path, profile, message):
    runner = ResumableRunner(make_config(tmp_path, epoch_end=1, samples=32, val_samples=8, profile=profile))
    with pytest.raises(ValueError, match=message):
        runner.train()
    assert runner.config.steps == 0
