"""Faults a long run survives without a person: workers killed under `torchrun --max-restarts`, and a process that
stops answering (a hang ends within `config.timeout`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
from torch import distributed as dist
from toys import assert_bitwise_equal

import danling as dl
from conftest import REPO_ROOT, free_port
from danling.utils import distributed as du

SCRIPTS = Path(__file__).parent / "dist_scripts"
KILLS = 2


def launch(script: Path, *args: str, max_restarts: int = 0, timeout: float = 240) -> subprocess.CompletedProcess:
    """`script` under `python -m torch.distributed.run` on two processes, whatever its exit status."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--max-restarts={max_restarts}",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(script), *args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        stdout, stderr = launcher.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # torchrun's workers run in sessions of their own: SIGTERM to torchrun is what stops them too.
        launcher.terminate()
        try:
            launcher.communicate(timeout=40)
        finally:
            launcher.kill()
        raise
    return subprocess.CompletedProcess(command, launcher.returncode, stdout, stderr)


def test_workers_killed_twice_under_max_restarts_resume_to_the_weights_of_an_uninterrupted_run(tmp_path):
    completed = launch(SCRIPTS / "elastic_kill.py", str(tmp_path), str(KILLS), "7", max_restarts=2 * KILLS)
    assert completed.returncode == 0, f"STDOUT:\n{completed.stdout}\nSTDERR:\n{completed.stderr}"
    kills = [json.loads(line) for line in (tmp_path / "kills.jsonl").read_text().splitlines()]
    assert len(kills) == KILLS, kills
    assert len({kill["iter"] for kill in kills}) == KILLS  # at different steps
    report = json.loads((tmp_path / "report.json").read_text())
    # One restart per kill: none spent on a process group that could not connect.
    assert report["restart"] == KILLS, completed.stderr
    for rank in (0, 1):
        straight = torch.load(tmp_path / f"straight-rank{rank}.pt", weights_only=False)
        elastic = torch.load(tmp_path / f"elastic-rank{rank}.pt", weights_only=False)
        assert_bitwise_equal(elastic, straight)
    run_dir = Path(report["dir"])
    run = json.loads((run_dir / "run.json").read_text())
    assert run["state"] == "finished"
    assert run["restarts"] == KILLS
    results = json.loads((run_dir / "results.json").read_text())["results"]
    assert sorted(results) == ["0", "1", "2"]  # every epoch once, whatever attempt trained it


def _rank(rank: int, port: int) -> subprocess.Popen:
    # A worker as torchrun's agent starts it: the agent serves the store, and the worker is one of its clients.
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "OMP_NUM_THREADS": "1",
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "TORCHELASTIC_USE_AGENT_STORE": "True",
    }
    command = [sys.executable, str(SCRIPTS / "connect_retry.py")]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_a_process_group_that_meets_addresses_a_former_pair_left_in_the_store_is_retried_and_connects():
    port = free_port()
    # The store outlives its workers, as the agent's does across restarts.
    store = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60))
    former = [_rank(rank, port) for rank in (0, 1)]
    for process in former:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0 and "sum 1" in out, err
    # The new rank 0 alone reads the address the former rank 1 left, where nobody listens any more; the new rank 1
    # comes only once rank 0 has said it tries again.
    first = _rank(0, port)
    deadline = time.monotonic() + 120
    announced = ""
    while "retrying the process group" not in announced and time.monotonic() < deadline:
        line = first.stderr.readline()
        assert line or first.poll() is None, f"rank 0 ended without retrying: {announced}"
        announced += line
    second = _rank(1, port)
    out0, err0 = first.communicate(timeout=120)
    out1, err1 = second.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, f"{announced}{err0}\n---\n{err1}"
    assert "sum 1" in out0 and "sum 1" in out1
    retries = [line for line in (announced + err0).splitlines() if line.startswith("danling:")]
    assert len(retries) == 1 and "rank 0" in retries[0] and "try 2 of 4" in retries[0], retries
    del store


def test_only_connection_failures_are_worth_another_try():
    refused = RuntimeError(
        "Gloo connectFullMesh failed with [../pair.cc:152] timed out connecting: SO_ERROR: Connection refused"
    )
    assert du.is_connection_failure(refused)
    assert du.is_connection_failure(dist.DistBackendError("Connection reset by peer"))
    assert not du.is_connection_failure(RuntimeError("Timed out waiting 3000ms for recv operation to complete"))
    assert not du.is_connection_failure(ValueError("Connection refused"))


def test_a_process_that_stops_responding_makes_the_others_fail_within_the_timeout(tmp_path):
    # Started by hand rather than by torchrun, so the test can end the stopped process itself at once.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2"}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), LOCAL_WORLD_SIZE="2")
    processes = [
        subprocess.Popen(
            [sys.executable, str(SCRIPTS / "hang.py"), str(tmp_path), "4"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
        )
        for rank in (0, 1)
    ]
    try:
        checkpoint_dir = Path(processes[0].stdout.readline().split(" ", 1)[1].strip())  # type: ignore[union-attr]
        assert processes[1].stdout.readline().strip() == "stopping"  # type: ignore[union-attr]
        stopped = time.monotonic()
        _, stderr = processes[0].communicate(timeout=120)
        took = time.monotonic() - stopped
    finally:
        for process in processes:
            process.kill()
            process.wait()
    assert processes[0].returncode != 0
    assert took < 4 + 30, f"rank 0 waited {took:.0f} s for the stopped process (timeout 4 s):\n{stderr[-2000:]}"
    run = json.loads((checkpoint_dir.parent / "run.json").read_text())
    assert run["state"] == "crashed" and "time" in run["error"].lower(), run
    # gloo's message does not name the process it waited for; the runner asks the store who still answers.
    assert "rank(s) 1 did not answer" in run["error"], run["error"]
    assert "danling: rank 0: rank(s) 1 did not answer" in stderr, stderr[-2000:]
    # The run is resumable: its latest checkpoint (taken at each step before the hang) loads.
    saved = dl.load(checkpoint_dir / "latest.pth")
    assert saved["runner"]["steps"] >= 1
