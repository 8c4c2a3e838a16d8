"""Several nodes, simulated on one machine: two `torchrun` launchers (one process each) that meet through a c10d
rendezvous on localhost, each started in a working directory of its own, as on two machines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from conftest import REPO_ROOT, free_port

SCRIPT = Path(__file__).parent / "dist_scripts" / "fsdp_scenarios.py"


def launch_nodes(tmp_path: Path, *args: str, nodes: int = 2, timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """`fsdp_scenarios.py ARGS` on `nodes` nodes of one process each; each launcher runs in `tmp_path/node{n}`.

    The working directories are outside the repository, so the run's id (from the git commit of the working
    directory) is the same on every node and in every launch.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    endpoint = f"127.0.0.1:{free_port()}"
    launchers = []
    for node in range(nodes):
        cwd = tmp_path / f"node{node}"
        cwd.mkdir(exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nnodes={nodes}",
            "--nproc_per_node=1",
            f"--node_rank={node}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={endpoint}",
            f"--rdzv_id=nodes-{tmp_path.name}",
            str(SCRIPT),
            *args,
        ]
        launchers.append(subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    completed = []
    try:
        for launcher in launchers:
            out, err = launcher.communicate(timeout=timeout)
            completed.append(
                subprocess.CompletedProcess(launcher.args, launcher.returncode, out.decode(), err.decode())
            )
    finally:
        for launcher in launchers:
            if launcher.poll() is None:
                launcher.kill()
                launcher.wait()
    return completed


def assert_succeeded(completed: list[subprocess.CompletedProcess]) -> None:
    for node, launcher in enumerate(completed):
        assert launcher.returncode == 0, f"node {node}:\n{launcher.stdout}\n{launcher.stderr}"


def report(output: Path, rank: int = 0) -> dict:
    return torch.load(output / f"train-rank{rank}.pt", weights_only=False)


def test_two_nodes_train_save_in_the_shared_directory_and_resume_on_one_node_and_on_two(tmp_path, distributed_runner):
    shared = tmp_path / "shared"  # one absolute project_root, on a filesystem both "nodes" see
    reference = tmp_path / "reference"
    distributed_runner(SCRIPT, "train", str(reference), str(reference / "experiments"), "3", "fsdp", nproc=2)
    straight = report(reference)["final"]

    assert_succeeded(launch_nodes(tmp_path, "train", str(shared), str(shared / "experiments"), "1", "fsdp"))
    (run_dir,) = (shared / "experiments").glob("*/*")
    checkpoint_dir = run_dir / "checkpoints"
    assert (checkpoint_dir / "latest.dcp").is_file()
    # Both processes wrote their shards into the one directory the main process made: nothing under the nodes'
    # working directories.
    (state,) = (checkpoint_dir / "dcp").iterdir()
    shards = sorted(path.name for path in state.glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"], shards
    assert not [path for node in (0, 1) for path in (tmp_path / f"node{node}").iterdir()]
    assert not report(shared)["resumed_from"]

    assert_succeeded(launch_nodes(tmp_path, "train", str(shared), str(shared / "experiments"), "2", "fsdp", nodes=1))
    assert report(shared)["resumed_from"].endswith("latest.dcp")
    assert_succeeded(launch_nodes(tmp_path, "train", str(shared), str(shared / "experiments"), "3", "fsdp"))
    resumed = [report(shared, rank) for rank in (0, 1)]
    assert all(part["resumed_from"].endswith("latest.dcp") for part in resumed)
    final = resumed[0]["final"]
    assert list(final["results"]) == [0, 1, 2]
    assert final["counters"][1:] == straight["counters"][1:]
    # One node accumulates two micro-batches where two nodes reduce over two processes: equal to float rounding.
    for key, value in straight["model"].items():
        assert torch.allclose(final["model"][key], value, rtol=0, atol=1e-5), key


def test_a_node_that_cannot_see_the_main_process_directory_stops_every_process_before_training(tmp_path):
    # A relative project_root: each launcher finds `experiments` under its own working directory, as two machines
    # would with a directory that is not on a shared filesystem.
    completed = launch_nodes(tmp_path, "train", str(tmp_path), "experiments", "1", "fsdp")
    assert all(launcher.returncode != 0 for launcher in completed)
    for launcher in completed:
        assert "that the main process" in launcher.stderr and "is not visible to rank 1" in launcher.stderr
    message = next(line for line in completed[1].stderr.splitlines() if "is not visible to rank 1" in line)
    assert str(tmp_path / "node0" / "experiments") in message and str(tmp_path / "node1" / "experiments") in message
    assert "is relative" in message
    # Nothing was trained or saved: no checkpoint anywhere, and no run state on the node that could not see it.
    assert not list(tmp_path.glob("node*/experiments/**/*.dcp"))
    assert not list(tmp_path.glob("node1/experiments/**/run.json"))
