"""A run's identity derives only from what changes the experiment: the same command finds its run (and `--resume
true` its checkpoint) whatever the number of processes, the process-group backend, the device or the logging.

The relaunch tests run `dist_scripts/relaunch.py` as one plain process, stopped in its second epoch, then the same
command with `--resume true` under `torch.distributed.run --nproc_per_node 2`, on each platform.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
from toys import ResumableRunner, make_config

import danling as dl
from danling.defaults import EXECUTION_NAMES, IGNORED_NAMES_IN_HASH, RESUME_STEERING_KEYS

SCRIPT = Path(__file__).parent / "dist_scripts" / "relaunch.py"
REPO_ROOT = Path(__file__).resolve().parents[2]

# Keys a runner or a launch sets that say how the run is carried out, with values it could have.
EXECUTION_VALUES = {
    "backend": "gloo",
    "init_method": "tcp://127.0.0.1:29500",
    "timeout": 30,
    "world_size": 2,
    "rank": 1,
    "local_rank": 1,
    "device": "cpu",
    "fsdp_units": ["Linear"],
    "fsdp_min_unit_params": 10,
    "reshard_after_forward": False,
    "log": False,
    "log_interval": 5,
    "tensorboard": True,
    "trackers": ["csv"],
    "progress": False,
    "checkpoint_dir_name": "ckpt",
    "save_checkpoints": False,
    "save_interval": 2,
    "max_epoch_checkpoints": 3,
    "checkpoint_interval": 10,
    "checkpoint_spare": False,
    "compile": {"mode": "max-autotune"},
    "async_checkpoint": True,
    "profile": {"wait": 1, "active": 2},
    "throughput": False,
    "flops_per_sample": 1e6,
    "peak_flops": 1e12,
    "prefetch": False,
    "fetch_batches": False,
}


@pytest.mark.parametrize("key", sorted(EXECUTION_VALUES))
def test_the_run_id_is_the_same_whatever_a_key_that_only_says_how_the_run_is_carried_out(key):
    base = dl.Config(epoch_end=3, **{"optim.lr": 0.1})
    varied = dl.Config(epoch_end=3, **{"optim.lr": 0.1, key: EXECUTION_VALUES[key]})
    assert varied.run_id == base.run_id
    assert varied.run_uuid == base.run_uuid


def test_the_run_id_is_the_same_with_every_execution_key_set_and_differs_when_the_experiment_does():
    base = dl.Config(epoch_end=3, **{"optim.lr": 0.1})
    assert dl.Config(epoch_end=3, **{"optim.lr": 0.1}, **EXECUTION_VALUES).run_id == base.run_id
    for changed in ({"optim.lr": 0.2}, {"seed": 1}, {"precision": "bf16"}, {"accum_steps": 2}, {"epoch_end": 4}):
        assert dl.Config(**{"epoch_end": 3, "optim.lr": 0.1, **changed}).run_id != base.run_id, changed


def test_every_key_left_out_of_the_run_id_for_how_a_run_is_carried_out_may_change_on_resume():
    # Otherwise `--resume true` would find the run and then refuse to continue it.
    assert EXECUTION_NAMES <= IGNORED_NAMES_IN_HASH
    assert EXECUTION_NAMES <= RESUME_STEERING_KEYS
    assert set(EXECUTION_VALUES) == EXECUTION_NAMES


@pytest.mark.usefixtures("own_process_group")
def test_a_runner_that_makes_a_process_group_keeps_the_id_of_the_config_it_was_given(tmp_path):
    # FSDP makes a one-process group and writes its backend into the config before the run's id is pinned.
    config = make_config(tmp_path, platform="fsdp", epoch_end=1)
    given = config.run_id
    runner = ResumableRunner(config)
    assert runner.config.backend == "gloo"
    assert runner.config.run_id == given
    assert runner.id == f"{config.experiment_id:.8}{given:.8}"


# Relaunch on two processes


def _deepspeed_available() -> str | None:
    """Why the DeepSpeed relaunch cannot run here, or `None` once DeepSpeed's CPU communication op is built."""
    if find_spec("deepspeed") is None:
        return "deepspeed is not installed: pip install 'danling[deepspeed]'"
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    builder = ShareMemCommBuilder()
    if builder.is_compatible():
        try:
            builder.load(verbose=False)  # built once here, so the launched processes only load it
        except Exception as error:  # a missing or failing compiler fails in many ways; all mean skip
            return f"DeepSpeed's CPU communication op ({builder.NAME}) cannot be built: {error}"
    return None


def requires(platform: str) -> None:
    """Skip, with the reason, when `platform`'s optional package is missing."""
    if platform == "accelerate" and find_spec("accelerate") is None:
        pytest.skip("accelerate is not installed: pip install 'danling[accelerate]'")
    if platform == "deepspeed":
        reason = _deepspeed_available()
        if reason is not None:
            pytest.skip(reason)


def launch_alone(report: Path, *args: str, env: dict[str, str]) -> dict:
    """Run the script as one plain process (no torchrun environment) and return its report."""
    environment = dict(os.environ, **env)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")]))
    environment.setdefault("OMP_NUM_THREADS", "1")
    environment.setdefault("DS_ACCELERATOR", "cpu")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        environment.pop(name, None)
    command = [sys.executable, str(SCRIPT), str(report), *args]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=240, env=environment, check=False)
    assert completed.returncode == 0, f"STDOUT:\n{completed.stdout}\nSTDERR:\n{completed.stderr}"
    return json.loads(report.read_text())


def command(tmp_path: Path, platform: str, *extra: str) -> list[str]:
    return ["--platform", platform, "--project_root", str(tmp_path / "experiments"), "--epoch_end", "2", *extra]


@pytest.mark.parametrize("platform", ["torch", "fsdp", "deepspeed", "accelerate"])
def test_a_run_stopped_on_one_process_resumes_from_its_checkpoint_on_two(platform, tmp_path, distributed_runner):
    requires(platform)
    # 6 micro-batches an epoch on one process: stopped inside the second epoch, with the first one's checkpoint.
    first = launch_alone(tmp_path / "first.json", *command(tmp_path, platform), env={"STOP_AFTER_ITER": "8"})
    assert (first["world_size"], first["stopped_at_iter"], first["epochs"]) == (1, 8, [0])
    distributed_runner(SCRIPT, str(tmp_path / "resumed.json"), *command(tmp_path, platform, "--resume", "true"))
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["world_size"] == 2
    assert (resumed["id"], resumed["run_id"], resumed["dir"]) == (first["id"], first["run_id"], first["dir"])
    assert resumed["checkpoint"] is not None
    assert Path(resumed["checkpoint"]).resolve().is_relative_to(Path(first["dir"]).resolve())
    assert resumed["epoch_begin"] == 1  # continued after the checkpoint's epoch instead of starting over
    assert resumed["epochs"] == [0, 1]
    recorded = json.loads((Path(first["dir"]) / "results.json").read_text())
    assert recorded["id"] == first["id"]
    assert sorted(int(epoch) for epoch in recorded["results"]) == [0, 1]


def test_a_zero_checkpoint_on_another_number_of_processes_stops_before_training_and_says_what_to_do(
    tmp_path, distributed_runner
):
    # ZeRO stages 1 and 2 partition the optimizer state by process, and DeepSpeed cannot repartition it.
    requires("deepspeed")
    settings = command(tmp_path, "deepspeed", "--deepspeed.zero_optimization.stage", "2")
    first = launch_alone(tmp_path / "first.json", *settings, env={"STOP_AFTER_ITER": "8"})
    results = (Path(first["dir"]) / "results.json").read_text()
    checkpoints = sorted(path.name for path in (Path(first["dir"]) / "checkpoints" / "deepspeed").iterdir())
    distributed_runner(SCRIPT, str(tmp_path / "resumed.json"), *settings, "--resume", "true")
    error = json.loads((tmp_path / "resumed.json").read_text())["error"]
    assert "partitioned over 1 process(es), and this run has 2" in error
    assert "Resume on 1 process(es) (torchrun --nproc_per_node 1)" in error
    assert "--pretrained" in error
    # Nothing trained or saved: the run is as the first launch left it.
    assert (Path(first["dir"]) / "results.json").read_text() == results
    assert sorted(path.name for path in (Path(first["dir"]) / "checkpoints" / "deepspeed").iterdir()) == checkpoints
