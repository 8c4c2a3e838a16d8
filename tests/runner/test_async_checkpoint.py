"""Asynchronous checkpoints (`config.async_checkpoint`): as safe as synchronous ones, and the same files."""

from __future__ import annotations

import copy
import errno
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
from toys import Interrupted, ResumableRunner, assert_bitwise_equal, final_state, make_config

import danling as dl
from danling.runner.checkpoint import find_resumable_checkpoints

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).parent / "scripts"

# Config keys that differ between two equivalent runs: where they write, and the setting under test (and the run
# id hashed from it).
LOCATION_KEYS = {"project_root", "dir", "log_path", "checkpoint_dir", "async_checkpoint", "run_id", "checkpoint"}


def assert_same_checkpoint(path: str | Path, reference: str | Path) -> None:
    """`path` loads to what `reference` loads to, bit for bit, but for where each run writes."""
    saved, expected = dl.load(path), dl.load(reference)
    saved, expected = dict(saved), dict(expected)
    for state in (saved, expected):
        state.pop("timestamp")
        state["runner"] = {key: value for key, value in state["runner"].items() if key not in LOCATION_KEYS}
    assert_bitwise_equal(saved, expected, os.path.basename(path))


def assert_same_checkpoint_files(directory: str | Path, reference: str | Path) -> None:
    names = sorted(name for name in os.listdir(reference) if not name.startswith("."))
    assert sorted(name for name in os.listdir(directory) if not name.startswith(".")) == names
    for name in names:
        assert_same_checkpoint(os.path.join(directory, name), os.path.join(reference, name))


def train(root: Path, **settings) -> ResumableRunner:
    runner = ResumableRunner(make_config(root, **settings))
    try:
        runner.train()
    except Interrupted:
        assert "fail_at_iter" in settings
    return runner


@pytest.mark.parametrize(
    "settings",
    [
        {"epoch_end": 3, "save_interval": 1, "checkpoint_interval": 3},  # latest, best and epoch-N
        {"epoch_end": 3, "checkpoint_interval": 2, "fail_at_iter": 13},  # a crash: latest holds a position
        {"step_end": 14, "eval_interval": 4, "checkpoint_interval": 3},  # by steps: best after an evaluation
    ],
    ids=["epochs", "crash", "steps"],
)
def test_async_checkpoints_load_to_what_synchronous_saves_of_the_same_steps_load_to(tmp_path, settings):
    synchronous = train(tmp_path / "sync", **settings)
    asynchronous = train(tmp_path / "async", async_checkpoint=True, **settings)
    assert asynchronous.checkpoint_writer() is not None and synchronous.checkpoint_writer() is None
    assert_same_checkpoint_files(asynchronous.checkpoint_dir, synchronous.checkpoint_dir)
    latest = dl.load(os.path.join(asynchronous.checkpoint_dir, "latest.pth"))
    if "fail_at_iter" in settings:
        assert latest["runner"]["iters"] == 12 and latest["position"]["batches"] == 4 and latest["measures"][0]


def test_two_process_async_checkpoints_match_synchronous_ones(tmp_path, distributed_runner):
    distributed_runner(Path(__file__).parent / "dist_scripts" / "async_checkpoint_two_processes.py", str(tmp_path))
    dirs = json.loads((tmp_path / "dirs.json").read_text())
    for scenario in ("epochs", "crash"):
        assert dirs[scenario]["async-in-background"] and not dirs[scenario]["sync-in-background"]
        assert_same_checkpoint_files(dirs[scenario]["async"], dirs[scenario]["sync"])
    crashed = dl.load(os.path.join(dirs["crash"]["async"], "latest.pth"))
    # Both processes' random generators and measures, and where the interrupted pass was.
    assert len(crashed["rng"]) == 2 and all(crashed["measures"]) and crashed["position"]["samples"] == 16


class SlowWriterRunner(ResumableRunner):
    """Its background writes start `delay` seconds late, so a test acts while one is certainly in flight."""

    delay = 0.3

    def save(self, obj, file, *args, **kwargs):
        if str(file).endswith("latest.pth"):
            time.sleep(self.delay)
        return super().save(obj, file, *args, **kwargs)


def test_async_checkpoint_holds_the_state_at_the_save_while_training_changes_it(tmp_path):
    runner = SlowWriterRunner(make_config(tmp_path, epoch_end=1, async_checkpoint=True))
    runner.train()
    expected = copy.deepcopy(final_state(runner))  # the optimizer's state dict holds its live tensors
    expected_rng = torch.get_rng_state()
    runner.save_checkpoint()
    assert runner.checkpoint_writer().busy
    # Everything the checkpoint holds changes in place right after the save returns, before its write starts.
    with torch.no_grad():
        for tensor in [*runner.model.parameters(), *runner.ema.parameters()]:
            tensor.add_(1.0)
    for state in runner.optimizer.state.values():
        state["momentum_buffer"].mul_(-1.0)
    runner.scheduler.step()
    runner.config.steps += 1
    torch.rand(1)
    assert runner.checkpoint_writer().busy
    runner.wait_for_checkpoint()

    restored = ResumableRunner.from_checkpoint(os.path.join(runner.checkpoint_dir, "latest.pth"))
    assert_bitwise_equal(final_state(restored), expected)
    assert torch.equal(dl.load(os.path.join(runner.checkpoint_dir, "latest.pth"))["rng"][0]["torch"], expected_rng)


class UnpicklableAfter:
    """A stateful part whose state cannot be saved once `steps` reaches `after`."""

    def __init__(self, runner, after: int) -> None:
        self.runner, self.after = runner, after

    def state_dict(self):
        return {"fine": True} if self.runner.config.steps < self.after else {"oops": lambda: None}

    def load_state_dict(self, state) -> None:
        pass


class FailingPartRunner(ResumableRunner):
    def stateful_parts(self):
        return {**super().stateful_parts(), "extra": UnpicklableAfter(self, after=6)}


def test_background_write_failure_is_raised_in_training_naming_the_file_and_latest_stays_good(tmp_path):
    # 60 samples in batches of 8: 8 steps an epoch; latest is saved every 2 steps, and cannot be from step 6 on.
    runner = FailingPartRunner(make_config(tmp_path, epoch_end=2, checkpoint_interval=2, async_checkpoint=True))
    latest = os.path.join(runner.checkpoint_dir, "latest.pth")
    with pytest.raises(Exception, match="latest.pth") as raised:
        runner.train()
    # Raised by the next save (at step 8), which therefore never started: training went no further.
    assert runner.config.steps == 8, runner.config.steps
    assert "lambda" in str(raised.value) or "pickle" in str(raised.value).lower()
    saved = dl.load(latest)
    assert saved["runner"]["steps"] == 4 and saved["extra"] == {"fine": True}
    assert not [name for name in os.listdir(runner.checkpoint_dir) if name.endswith(".tmp")]
    run_state = json.loads((Path(runner.dir) / "run.json").read_text())
    assert run_state["state"] == "crashed" and "latest.pth" in run_state["error"]


# Two epochs unlimited, then file sizes limited to half the checkpoint and two more epochs: the write of epoch 2's
# checkpoint fails in the background ("File too large"; SIGXFSZ ignored), and epoch 3's save raises it. On `fsdp`,
# the small run state (`runner.pth`) is written before the save returns; the shards are what fails.
FILE_TOO_LARGE_CHILD = """
import json, os, resource, shutil, signal, sys
import torch
from torch import nn
import danling as dl
from toys import make_config, regression_data


class WideRunner(dl.Runner):
    def __init__(self, config):
        super().__init__(config)
        self.model = nn.Sequential(nn.Linear(4, 8192), nn.Linear(8192, 1))  # a checkpoint of about 400 KiB
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-4)
        self.datasets.train = regression_data(32, seed=0)


root, copy, platform = sys.argv[1], sys.argv[2], sys.argv[3]
runner = WideRunner(make_config(root, epoch_end=2, async_checkpoint=True, platform=platform))
runner.train()
latest = os.path.join(runner.checkpoint_dir, "latest" + runner.checkpoint_extension)
shutil.copyfile(latest, copy)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200 * 1024, resource.RLIM_INFINITY))
runner.config.epoch_begin, runner.config.epoch_end = 2, 4
report = {"latest": latest}
try:
    runner.train()
except Exception as error:
    report.update(type=type(error).__name__, message=str(error), errno=getattr(error, "errno", None))
report.update(epochs=runner.config.epochs, latest_epochs=runner.read_checkpoint_file(latest)["runner"]["epochs"])
print(json.dumps(report))
"""


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ") or os.name != "posix", reason="needs RLIMIT_FSIZE and SIGXFSZ")
@pytest.mark.parametrize("platform", ["torch", "fsdp"])
def test_background_write_that_cannot_grow_the_file_is_raised_in_training_and_latest_is_unchanged(tmp_path, platform):
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    copy = tmp_path / "latest-before"
    child = subprocess.run(
        [sys.executable, "-c", FILE_TOO_LARGE_CHILD, str(tmp_path / "run"), str(copy), platform],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout.strip().splitlines()[-1])
    if platform == "torch":
        assert report.get("errno") == errno.EFBIG, report
        assert report["latest"] in report["message"]
    else:
        # Raised on every process, naming the checkpoint directory whose shards could not be written.
        directory = os.path.join(os.path.dirname(report["latest"]), "dcp", "latest-s")
        assert report["type"] == "RuntimeError" and directory in report["message"], report
        assert "was not written; latest still names the previous one: process 0:" in report["message"]
    assert report["epochs"] == 3  # raised by epoch 3's save: the failure of epoch 2's did not go unnoticed
    assert Path(report["latest"]).read_bytes() == copy.read_bytes()
    assert report["latest_epochs"] == 1


def test_resume_after_an_async_run_matches_an_uninterrupted_run(tmp_path):
    settings = {"epoch_end": 3, "checkpoint_interval": 2, "async_checkpoint": True}
    interrupted = train(tmp_path / "interrupted", fail_at_iter=13, **settings)
    assert interrupted.checkpoint_writer() is not None
    resumed = ResumableRunner.from_checkpoint(os.path.join(interrupted.checkpoint_dir, "latest.pth"))
    resumed.config.fail_at_iter = None
    resumed.train()
    straight = train(tmp_path / "straight", epoch_end=3)
    assert_bitwise_equal(final_state(resumed), final_state(straight))


def read_until(process: subprocess.Popen, prefix: str) -> str:
    for line in process.stdout:  # type: ignore[union-attr]
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"process ended before printing {prefix!r}: {process.stderr.read()}")  # type: ignore[union-attr]


def test_sigkill_during_background_writes_never_leaves_a_bad_latest_and_relaunches_finish_like_a_straight_run(
    tmp_path,
):
    rng = random.Random(0)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "async_kill_loop.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    killed = tmp_path / "killed"
    try:
        newest = 0
        for _ in range(10):
            launcher.stdin.write(f"run {killed}\n")  # type: ignore[union-attr]
            launcher.stdin.flush()  # type: ignore[union-attr]
            pid = int(read_until(launcher, "pid ").split()[1])
            for _ in range(rng.randint(1, 3)):
                read_until(launcher, "step ")
            time.sleep(rng.uniform(0, 0.02))  # a save every step: some write is nearly always in flight
            os.kill(pid, signal.SIGKILL)
            assert read_until(launcher, "exited ") == f"exited {signal.SIGKILL}"
            (run_root,) = [os.path.join(killed, name) for name in os.listdir(killed)]
            latests = [path for path in find_resumable_checkpoints(run_root) if path.endswith("latest.pth")]
            if not latests:
                # Killed before the first background write was published (a slow machine): no `latest` yet is
                # right, and only then; once one was published, it never goes away.
                assert newest == 0, "latest.pth disappeared after a kill"
                continue
            saved = dl.load(latests[0])  # verifies its checksum: an incomplete file raises
            assert saved["runner"]["steps"] >= newest
            newest = saved["runner"]["steps"]
        assert newest > 0
        for root in (killed, tmp_path / "straight"):
            launcher.stdin.write(f"run {root}\n")  # type: ignore[union-attr]
            launcher.stdin.flush()  # type: ignore[union-attr]
            assert read_until(launcher, "exited ") == "exited 0"
    finally:
        launcher.stdin.close()  # type: ignore[union-attr]
        launcher.wait(timeout=60)
    resumed = torch.load(killed / "final.pt", weights_only=True)
    straight = torch.load(tmp_path / "straight" / "final.pt", weights_only=True)
    assert_bitwise_equal(resumed, straight)


def test_fsdp_two_process_async_checkpoints_match_synchronous_ones(tmp_path, distributed_runner):
    script = Path(__file__).parent / "dist_scripts" / "fsdp_scenarios.py"
    distributed_runner(script, "async", str(tmp_path), str(tmp_path / "experiments"))
    for rank in (0, 1):
        report = torch.load(tmp_path / f"async-rank{rank}.pt", weights_only=False)
        # latest, best, epoch-0 and epoch-1: every pointer names a checkpoint that holds what the synchronous one does.
        assert sorted(name for name in report["sync"] if name.endswith(".dcp")) == [
            "best.dcp",
            "epoch-0.dcp",
            "epoch-1.dcp",
            "latest.dcp",
        ]
        assert report["async-in-background"] and not report["sync-in-background"]
        assert_bitwise_equal(report["async"], report["sync"], f"rank{rank}")


@pytest.mark.parametrize("platform", ["deepspeed", "accelerate"])
def test_platforms_whose_engine_writes_checkpoints_refuse_async_checkpoint_at_construction(tmp_path, platform):
    pytest.importorskip(platform)
    with pytest.raises(ValueError, match=r"config.async_checkpoint is not supported by .*Runner.*'torch' or 'fsdp'"):
        ResumableRunner(make_config(tmp_path, platform=platform, epoch_end=1, async_checkpoint=True))


def test_sigterm_with_async_checkpoint_saves_latest_exits_143_and_resume_matches_an_uninterrupted_run(tmp_path):
    settings = {"epoch_end": 3, "samples": 60, "val_samples": 25, "checkpoint_interval": 1, "async_checkpoint": True}
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "preemptible_train.py"), str(tmp_path / "preempted"), json.dumps(settings)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    checkpoint_dir = read_until(process, "checkpoints ").split(" ", 1)[1]
    read_until(process, "iter 11")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    saved = dl.load(os.path.join(checkpoint_dir, "latest.pth"))
    assert 11 <= saved["runner"]["iters"] < 24 and "position" in saved

    resumed = ResumableRunner.from_checkpoint(os.path.join(checkpoint_dir, "latest.pth"))
    resumed.train()
    straight = train(tmp_path / "straight", epoch_end=3)
    assert_bitwise_equal(final_state(resumed), final_state(straight))


# A save whose write starts half a second after `save_checkpoint` returns, and a script that ends right then.
EXIT_CHILD = """
import sys, time
import torch
from toys import ResumableRunner, make_config


class SlowWriter(ResumableRunner):
    def save(self, obj, file, *args, **kwargs):
        time.sleep(0.5)
        return super().save(obj, file, *args, **kwargs)


runner = SlowWriter(make_config(sys.argv[1], epoch_end=1, async_checkpoint=True))
runner.config.steps = 7
runner.save_checkpoint()
print(runner.checkpoint_dir, runner.checkpoint_writer().busy, flush=True)
"""


def test_interpreter_exit_waits_for_the_checkpoint_in_flight_and_publishes_it(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    child = subprocess.run(
        [sys.executable, "-c", EXIT_CHILD, str(tmp_path)], capture_output=True, text=True, env=env, timeout=60
    )
    assert child.returncode == 0, child.stderr
    checkpoint_dir, busy = child.stdout.split()
    assert busy == "True"  # the script ended while the write was still to come
    assert dl.load(os.path.join(checkpoint_dir, "latest.pth"))["runner"]["steps"] == 7


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_snapshot_goes_to_pinned_buffers_reused_across_saves_and_matches_a_synchronous_save(tmp_path):
    settings = {"epoch_end": 2, "checkpoint_interval": 3, "device": "cuda"}
    synchronous = train(tmp_path / "sync", **settings)
    asynchronous = train(tmp_path / "async", async_checkpoint=True, **settings)
    assert_same_checkpoint_files(asynchronous.checkpoint_dir, synchronous.checkpoint_dir)
    buffers = asynchronous.checkpoint_writer().buffers
    weights = {path: buffer for path, buffer in buffers._buffers.items() if path[0] == "model"}
    assert weights and all(buffer.is_pinned() for buffer in weights.values())
    addresses = {path: buffer.data_ptr() for path, buffer in buffers._buffers.items()}
    asynchronous.save_checkpoint()
    asynchronous.wait_for_checkpoint()
    assert {path: buffer.data_ptr() for path, buffer in buffers._buffers.items()} == addresses


def test_fsdp_on_one_process_publishes_its_async_checkpoint_and_resumes_from_it(tmp_path, own_process_group):
    from danling.runner.dcp import dcp_to_full_state_dict
    from danling.runner.pointers import resolve_checkpoint

    settings = {"platform": "fsdp", "epoch_end": 2, "checkpoint_interval": 3, "samples": 48}
    asynchronous = train(tmp_path / "async", async_checkpoint=True, **settings)
    assert "_background_checkpointing_made" in asynchronous.__dict__
    # Published at the end of training: latest names a complete checkpoint of the last step.
    latest = os.path.join(asynchronous.checkpoint_dir, "latest.dcp")
    synchronous = train(tmp_path / "sync", **settings)
    saved = dcp_to_full_state_dict(resolve_checkpoint(latest))
    expected = dcp_to_full_state_dict(resolve_checkpoint(os.path.join(synchronous.checkpoint_dir, "latest.dcp")))
    assert_bitwise_equal(saved, expected)
    resumed = ResumableRunner.from_checkpoint(latest)
    assert resumed.config.steps == asynchronous.config.steps == 12


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fsdp_on_nccl_saves_in_the_background_on_a_gloo_group_and_matches_a_synchronous_save(
    tmp_path, own_process_group
):
    from torch import distributed as dist

    from danling.runner.dcp import dcp_to_full_state_dict
    from danling.runner.pointers import resolve_checkpoint

    settings = {"platform": "fsdp", "epoch_end": 2, "checkpoint_interval": 3, "samples": 48, "device": "cuda"}
    asynchronous = train(tmp_path / "async", async_checkpoint=True, **settings)
    assert dist.get_backend() == "nccl"
    _, group = asynchronous.__dict__["_background_checkpointing_made"]
    assert dist.get_backend(group) == "gloo"
    synchronous = train(tmp_path / "sync", **settings)
    saved, expected = (
        dcp_to_full_state_dict(resolve_checkpoint(os.path.join(runner.checkpoint_dir, "latest.dcp")))
        for runner in (asynchronous, synchronous)
    )
    assert_bitwise_equal(saved, expected)
