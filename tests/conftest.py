"""Shared fixtures: configs rooted at `tmp_path`, and a launcher for real multi-process runs."""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from torch import distributed as dist

# Scripts launched as subprocesses (plain or under torchrun) run on import: doctest collection must not import them.
collect_ignore_glob = ["*/dist_scripts/*", "*/scripts/*"]

REPO_ROOT = Path(__file__).resolve().parent.parent
# Shared toy models and runners (tests/toys.py) for the tests and the scripts they launch.
sys.path.insert(0, str(REPO_ROOT / "tests"))


def free_port() -> int:
    """A TCP port nobody listens on right now, for a torchrun rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_distributed(
    script: str | Path, *args: str, nproc: int = 2, timeout: float = 240
) -> subprocess.CompletedProcess:
    """Run `script` under `python -m torch.distributed.run` with `nproc` real processes on the gloo backend.

    Raises `AssertionError` with both output streams when the run fails, so a test shows why.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(script),
        *args,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    assert completed.returncode == 0, (
        f"distributed run failed:\nSTDOUT:\n{completed.stdout}\nSTDERR:\n{completed.stderr}"
    )
    return completed


@pytest.fixture(scope="session")
def distributed_runner():
    """The `run_distributed` launcher, as a fixture."""
    return run_distributed


@pytest.fixture
def own_process_group():
    """Leave no process group (or torchrun variable) behind: FSDP, DeepSpeed and Accelerate make one on one process."""
    environ = dict(os.environ)
    yield
    gc.collect()  # the runners, and the engines holding the group, are gone before it is
    if dist.is_available() and dist.is_initialized():
        deepspeed_comm = sys.modules.get("deepspeed.comm")
        if deepspeed_comm is not None and deepspeed_comm.is_initialized():
            # DeepSpeed keeps groups it cloned from this one; destroyed through it, it forgets them, and the next
            # test's engine clones the new group instead of using one that is gone.
            deepspeed_comm.destroy_process_group()
        else:
            dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(environ)
