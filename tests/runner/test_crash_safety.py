"""Crash safety with real processes: SIGTERM preemption, SIGKILL during saves, and a 2-process resume."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from toys import ResumableRunner, assert_bitwise_equal, final_state, make_config

import danling as dl
from danling.runner.checkpoint import find_resumable_checkpoints

SCRIPTS = Path(__file__).parent / "scripts"
REPO_ROOT = Path(__file__).resolve().parents[2]


def spawn(script: str, *args: str) -> subprocess.Popen:
    """`script` in a session of its own, so `os.killpg` reaches it and its loader workers, as Ctrl-C would."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(SCRIPTS / script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def read_until(process: subprocess.Popen, prefix: str) -> str:
    for line in process.stdout:  # type: ignore[union-attr]
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"process ended before printing {prefix!r}: {process.stderr.read()}")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "settings",
    [
        {"epoch_end": 3, "samples": 60, "val_samples": 25},
        {"step_end": 24, "eval_interval": 5, "samples": 60, "val_samples": 25},  # by steps
    ],
    ids=["epochs", "steps"],
)
def test_sigterm_saves_latest_exits_143_and_resume_matches_an_uninterrupted_run(tmp_path, settings):
    process = spawn("preemptible_train.py", str(tmp_path / "preempted"), json.dumps(settings))
    checkpoint_dir = read_until(process, "checkpoints ").split(" ", 1)[1]
    read_until(process, "iter 11")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    latest = os.path.join(checkpoint_dir, "latest.pth")
    saved = dl.load(latest)
    assert 11 <= saved["runner"]["iters"] < 24 and "position" in saved

    resumed = ResumableRunner.from_checkpoint(latest)
    resumed.train()
    straight = ResumableRunner(make_config(tmp_path / "straight", **settings))
    straight.train()
    assert_bitwise_equal(final_state(resumed), final_state(straight))


def test_first_ctrl_c_saves_says_how_to_resume_once_and_resume_matches_an_uninterrupted_run(tmp_path):
    # A loader worker too: Ctrl-C reaches the terminal's whole process group, and a worker killed by it would fail
    # the next batch.
    settings = {"epoch_end": 3, "samples": 60, "val_samples": 25, "dataloader": {"batch_size": 8, "num_workers": 1}}
    process = spawn("preemptible_train.py", str(tmp_path / "preempted"), json.dumps(settings))
    checkpoint_dir = read_until(process, "checkpoints ").split(" ", 1)[1]
    read_until(process, "iter 11")
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGINT, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert stderr.count("Ctrl-C: saving the run's state") == 1, stderr
    latest = os.path.join(checkpoint_dir, "latest.pth")
    (stopped,) = [line for line in stdout.splitlines() if line.startswith("stopped by")]
    assert (
        stopped
        == f"stopped by SIGINT after saving the run's state; resume from {latest} (--checkpoint, or --resume true)"
    )
    run_state = json.loads((Path(checkpoint_dir).parent / "run.json").read_text())
    assert run_state["state"] == "interrupted" and run_state["signal"] == "SIGINT", run_state
    saved = dl.load(latest)
    assert 11 <= saved["runner"]["iters"] < 24 and "position" in saved

    resumed = ResumableRunner.from_checkpoint(latest)
    resumed.train()
    straight = ResumableRunner(make_config(tmp_path / "straight", **settings))
    straight.train()
    assert_bitwise_equal(final_state(resumed), final_state(straight))


def test_second_ctrl_c_stops_at_once_without_waiting_for_the_step(tmp_path):
    settings = {"epoch_end": 3, "samples": 60, "val_samples": 25, "delay": 5.0}
    process = spawn("preemptible_train.py", str(tmp_path), json.dumps(settings))
    checkpoint_dir = Path(read_until(process, "checkpoints ").split(" ", 1)[1])
    read_until(process, "iter 2")  # then sleeps 5 s before the step ends
    os.killpg(process.pid, signal.SIGINT)
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)
    signalled = time.monotonic()
    _, stderr = process.communicate(timeout=60)
    took = time.monotonic() - signalled
    assert took < 3, f"a second Ctrl-C took {took:.1f} s to stop the run"
    # Python ends an uncaught KeyboardInterrupt by SIGINT itself.
    assert process.returncode == -signal.SIGINT and "KeyboardInterrupt" in stderr, (process.returncode, stderr)
    assert not (checkpoint_dir / "latest.pth").exists(), "the step never ended: nothing to save"
    run_state = json.loads((checkpoint_dir.parent / "run.json").read_text())
    assert run_state["state"] == "interrupted" and run_state["signal"] == "SIGINT", run_state


def test_sigkill_during_saves_never_leaves_a_bad_latest(tmp_path):
    rng = random.Random(0)
    root = str(tmp_path)
    newest_step = 0
    for _ in range(3):
        process = spawn("save_forever.py", root)
        read_until(process, "checkpoints ")
        time.sleep(rng.uniform(0.3, 1.2))
        process.kill()
        process.wait(timeout=30)
        run_roots = [os.path.join(root, name) for name in os.listdir(root)]
        assert len(run_roots) == 1
        latests = [path for path in find_resumable_checkpoints(run_roots[0]) if path.endswith("latest.pth")]
        assert latests
        for path in latests:
            state = dl.load(path)
            assert torch.all(state["model"]["bias"] == state["runner"]["steps"])
            newest_step = max(newest_step, state["runner"]["steps"])
    # resume=True finds an intact latest, so a relaunch continues after the newest step saved before the kills.
    process = spawn("save_forever.py", root)
    first_saved = int(read_until(process, "saved ").split()[1])
    process.kill()
    process.wait(timeout=30)
    assert first_saved == newest_step + 1


@pytest.mark.parametrize(
    "settings",
    [{"epoch_end": 3}, {"step_end": 10, "eval_interval": 3}],  # by steps: the crash at step 6 follows an evaluation
    ids=["epochs", "steps"],
)
def test_two_process_resume_matches_an_uninterrupted_two_process_run(tmp_path, distributed_runner, settings):
    script = Path(__file__).parent / "dist_scripts" / "resume_two_processes.py"
    distributed_runner(script, str(tmp_path), json.dumps(settings))
    for rank in (0, 1):
        straight = torch.load(tmp_path / f"rank{rank}-straight.pt", weights_only=True)
        resumed = torch.load(tmp_path / f"rank{rank}-resumed.pt", weights_only=True)
        assert_bitwise_equal(resumed, straight, f"rank{rank}")


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path, distributed_runner):
    import json

    distributed_runner(Path(__file__).parent / "dist_scripts" / "preempt_two_processes.py", str(tmp_path))
    rank0, rank1 = (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1))
    assert rank0["exit_code"] == rank1["exit_code"] == 128 + signal.SIGTERM
    # The signal came in step 5 on rank 1 alone: its flag goes into the exchange started at step 5, whose result
    # every process reads at step 6.
    assert rank0["steps"] == rank1["steps"] == 6
    saved = dl.load(rank0["latest"])
    assert saved["runner"]["steps"] == 6 and "position" in saved


def test_processes_with_different_step_times_agree_on_the_step_to_stop_at(tmp_path, distributed_runner):
    distributed_runner(Path(__file__).parent / "dist_scripts" / "agreement_uneven_clocks.py", str(tmp_path))
    rank0, rank1 = (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1))
    assert rank0["signal"] == rank1["signal"] == signal.SIGTERM
    # The slower process sets the pace: an exchange every 0.05 s of its steps, about 12, is read 12 steps later.
    assert rank0["poll"] == rank1["poll"] and 40 < rank0["poll"] <= 40 + 2 * 13, (rank0, rank1)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_to_torchrun_with_logging_off_saves_long_before_its_kill_and_resumes_bitwise(
    tmp_path, distributed_runner, signum
):
    # torchrun passes SIGTERM on to its workers and kills them 30 s later. The epoch here lasts about 20 s (40
    # steps of 0.5 s) and never logs: the processes must agree on the signal within a few steps, not at its end.
    script = str(Path(__file__).parent / "dist_scripts" / "preempt_through_agent.py")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script]
    agent = subprocess.Popen(
        [*command, str(tmp_path), "train"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    checkpoint_dir = Path(read_until(agent, "checkpoints ").split(" ", 1)[1])
    read_until(agent, "iter 3")
    agent.send_signal(signum)  # Ctrl-C reaches torchrun only: its workers run in sessions of their own
    signalled = time.monotonic()
    try:
        stdout, stderr = agent.communicate(timeout=45)
    finally:
        agent.kill()
    took = time.monotonic() - signalled
    assert took < 10, f"torchrun took {took:.1f} s to stop after {signum.name}:\n{stderr}"
    # torchrun itself ends with status 1 when signalled (it raises SignalException); its workers stopped cleanly.
    stopped = [json.loads((tmp_path / f"rank{rank}-stopped.json").read_text()) for rank in (0, 1)]
    assert [record["exit_code"] for record in stopped] == [128 + signum] * 2, stderr
    # One message for the run, from the main process; no worker prints a traceback.
    assert stdout.count(f"stopped by {signum.name}") == 1, stdout
    assert "KeyboardInterrupt" not in stderr and stderr.count("Traceback") <= 1, stderr
    steps = stopped[0]["steps"]
    assert stopped[1]["steps"] == steps and 3 <= steps < 40, stopped
    saved = dl.load(checkpoint_dir / "latest.pth")
    assert saved["runner"]["steps"] == steps and "position" in saved
    run_state = json.loads((checkpoint_dir.parent / "run.json").read_text())
    assert run_state["state"] == "interrupted" and run_state["signal"] == signum.name, run_state

    distributed_runner(script, str(tmp_path), "finish", str(checkpoint_dir / "latest.pth"))
    for rank in (0, 1):
        straight = torch.load(tmp_path / f"rank{rank}-straight.pt", weights_only=True)
        resumed = torch.load(tmp_path / f"rank{rank}-resumed.pt", weights_only=True)
        assert_bitwise_equal(resumed, straight, f"rank{rank}")
