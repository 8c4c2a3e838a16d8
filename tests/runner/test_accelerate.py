"""The Accelerate backend on real processes: DDP's numbers, bitwise resume, the config mapping, crash-safe saves."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from toys import assert_bitwise_equal

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).parent / "dist_scripts" / "accelerate_scenarios.py"

# What the main process writes into a checkpoint directory (Accelerate's random state is rank 0's only).
FILES = ["model.pth", "optimizer.bin", "random_states_0.pkl", "runner.pth", "scheduler.bin"]

requires_accelerate = pytest.mark.skipif(
    find_spec("accelerate") is None, reason="accelerate is not installed: pip install 'danling[accelerate]'"
)


def run(distributed_runner, tmp_path, scenario, nproc=2):
    distributed_runner(SCRIPT, scenario, str(tmp_path), str(tmp_path / "experiments"), nproc=nproc)
    return [torch.load(tmp_path / f"{scenario}-rank{rank}.pt", weights_only=False) for rank in range(nproc)]


def run_alone(tmp_path, scenario, returncode=0):
    """Run a scenario as one plain process (no torchrun environment); return its report and its stderr."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, str(SCRIPT), scenario, str(tmp_path), str(tmp_path / "experiments")]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, check=False)
    assert completed.returncode == returncode, f"STDOUT:\n{completed.stdout}\nSTDERR:\n{completed.stderr}"
    report = tmp_path / f"{scenario}-rank0.pt"
    return (torch.load(report, weights_only=False) if report.exists() else None), completed.stderr


def assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=atol), (key, (a[key] - b[key]).abs().max().item())


def test_import_danling_does_not_import_accelerate():
    code = "import sys, danling, danling.runner; danling.Runner; print('accelerate' in sys.modules)"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "False"


@requires_accelerate
def test_accelerate_matches_ddp_with_accumulation_clipping_and_an_uneven_evaluation(tmp_path, distributed_runner):
    for rank, report in enumerate(run(distributed_runner, tmp_path, "versus-ddp")):
        ddp, accelerate = report["torch"], report["accelerate"]
        assert accelerate["kinds"] == ["DistributedDataParallel", "AcceleratedOptimizer"]
        # The same samples on the same process, the same dropout, the same mean gradient and global norm.
        assert_close(accelerate["model"], ddp["model"], atol=1e-6)
        assert_close(accelerate["ema"], ddp["ema"], atol=1e-6)
        # Counters and the LR: one scheduler step per optimizer step (6 of them: windows of 2 and 1, 2 epochs).
        assert accelerate["counters"] == ddp["counters"] == (6, 4, 1)
        assert accelerate["scheduler"]["last_epoch"] == ddp["scheduler"]["last_epoch"] == 4
        assert accelerate["lrs"] == pytest.approx(ddp["lrs"], abs=0) and len(ddp["lrs"]) == 4
        # Logged losses are means over processes: the epoch results agree on both processes and with DDP.
        for epoch in (0, 1):
            for split in ("train", "val"):
                assert accelerate["results"][epoch][split] == pytest.approx(ddp["results"][epoch][split], abs=1e-6)
        # 25 validation samples, 13 and 12 per process: each counted once, as one pass over all 25 finds.
        assert accelerate["val"]["loss"] == pytest.approx(accelerate["oracle"]["loss"], abs=1e-6)
        assert accelerate["val"]["acc"] == pytest.approx(accelerate["oracle"]["acc"], abs=1e-7)
        assert accelerate["val"]["loss"] == pytest.approx(ddp["val"]["loss"], abs=1e-6)
        assert accelerate["infer"].shape == (25, 3)
        assert torch.allclose(accelerate["infer"], accelerate["oracle"]["logits"], atol=1e-6)
        assert torch.allclose(accelerate["infer"], ddp["infer"], atol=1e-6)
        if rank == 0:
            # Only the main process wrote the checkpoint: Accelerate's random state of rank 0 alone.
            checkpoint_dir = Path(accelerate["checkpoint_dir"])
            pointers = sorted(path.name for path in checkpoint_dir.glob("*.accelerate"))
            assert pointers == ["best.accelerate", "epoch-0.accelerate", "epoch-1.accelerate", "latest.accelerate"]
            latest = checkpoint_dir / json.loads((checkpoint_dir / "latest.accelerate").read_text())["path"]
            files = sorted(os.listdir(latest))
            assert files == FILES
            weights = torch.load(latest / "model.pth", weights_only=True)
            assert_close(weights, accelerate["model"], atol=0)  # saved without DDP's `module.` prefix


@requires_accelerate
def test_accelerate_with_a_short_last_window_and_no_clipping_matches_ddp(tmp_path, distributed_runner):
    # Clipping (as in the comparison above) shrinks a window's gradient scaled wrong back towards the right one.
    for report in run(distributed_runner, tmp_path, "unclipped"):
        ddp, accelerate = report["torch"], report["accelerate"]
        assert accelerate["counters"] == ddp["counters"] == (6, 4, 1)  # windows of 2 and 1 micro-batches an epoch
        assert_close(accelerate["model"], ddp["model"], atol=1e-6)
        assert_close(accelerate["ema"], ddp["ema"], atol=1e-6)
        assert accelerate["results"][1]["train"] == pytest.approx(ddp["results"][1]["train"], abs=1e-6)


@requires_accelerate
def test_accelerate_resumes_bit_for_bit_after_an_epoch_and_inside_one(tmp_path, distributed_runner):
    for report in run(distributed_runner, tmp_path, "resume"):
        straight = report["straight"]
        for case, epoch_begin in (("epoch", 1), ("mid-epoch", 1)):
            resumed = report[case]
            assert resumed["from"].endswith("latest.accelerate"), case
            assert resumed["epoch_begin"] == epoch_begin, case
            for key in ("model", "ema", "optimizer", "scheduler", "results", "counters", "lrs"):
                assert_bitwise_equal(resumed[key], straight[key], f"{case}.{key}")


@requires_accelerate
def test_the_config_maps_onto_the_accelerator_and_bf16_training_matches_ddp_on_one_process(tmp_path):
    report, _ = run_alone(tmp_path, "single")
    assert report["mapping"] == {
        "is_accelerate_runner": True,
        "mixed_precision": "bf16",
        "gradient_accumulation_steps": 3,
        "distributed_type": "NO",
        "device": "cpu",
        "model": "Sequential",
        "scheduler_steps_with_optimizer": False,
    }
    torch_run, accelerate = report["torch"], report["accelerate"]
    assert accelerate["counters"] == torch_run["counters"]
    assert accelerate["lrs"] == torch_run["lrs"]
    assert_close(accelerate["model"], torch_run["model"], atol=1e-6)
    assert report["files"] == FILES
    for weights in report["pretrained"]:
        assert_close(weights, accelerate["model"], atol=0)
    continued = report["from_checkpoint"]
    assert continued["is_accelerate_runner"] and continued["epoch_begin"] == 2
    assert_close(continued["model"], accelerate["model"], atol=0)
    errors = report["errors"]
    assert "config.device is 'cuda:3'" in errors["device"]
    assert "precision='fp16'" in errors["precision"]
    assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" in errors["env"] and "config.accum_steps is 3" in errors["env"]


@requires_accelerate
def test_backend_gloo_on_one_plain_process_trains_as_ddp_does(tmp_path):
    # It failed with "Default process group has not been initialized": Accelerate was handed a backend, and then
    # expected a process group that nobody made.
    report, _ = run_alone(tmp_path, "gloo-alone")
    assert report["distributed_type"] == "NO"
    torch_run, accelerate = report["torch"], report["accelerate"]
    assert accelerate["counters"] == torch_run["counters"] == (10, 10, 1)
    assert_close(accelerate["model"], torch_run["model"], atol=1e-6)
    assert accelerate["results"][1]["train"]["loss"] < accelerate["results"][0]["train"]["loss"]


@requires_accelerate
def test_a_killed_save_leaves_latest_on_the_previous_checkpoint_and_resume_skips_incomplete_ones(tmp_path):
    from danling.runner.accelerate_runner import AccelerateRunner
    from danling.runner.pointers import resolve_checkpoint
    from danling.utils.io import CorruptFileError

    assert run_alone(tmp_path, "killed-save", returncode=3)[0] is None
    (checkpoint_dir,) = (tmp_path / "experiments").glob("*/*/checkpoints")
    latest = checkpoint_dir / "latest.accelerate"
    complete = Path(resolve_checkpoint(str(latest)))
    assert AccelerateRunner.read_checkpoint_file(str(latest))["runner"]["epochs"] == 0
    assert sorted(path.name for path in checkpoint_dir.glob("*.accelerate")) == [
        "best.accelerate",
        "epoch-0.accelerate",
        "latest.accelerate",
    ]
    (partial,) = [path for path in (checkpoint_dir / "accelerate").iterdir() if path != complete]
    assert "model.pth" in os.listdir(partial) and "runner.pth" not in os.listdir(partial)
    with pytest.raises(CorruptFileError, match="incomplete: runner.pth is missing"):
        AccelerateRunner.read_checkpoint_file(str(partial))
    damaged = tmp_path / "damaged"
    shutil.copytree(complete, damaged)
    with open(damaged / "optimizer.bin", "r+b") as file:
        file.truncate(10)
    with pytest.raises(CorruptFileError, match="damaged: optimizer.bin has 10 bytes"):
        AccelerateRunner.read_checkpoint_file(str(damaged))

    # Were `latest` to name an incomplete checkpoint, resume=True names it and falls back to the epoch snapshot.
    latest.write_text(json.dumps({"path": f"accelerate/{partial.name}"}))
    report, stderr = run_alone(tmp_path, "after-kill")
    assert f"resume: skipping {latest}: checkpoint" in stderr and "runner.pth is missing" in stderr
    assert report["from"].endswith("epoch-0.accelerate") and report["epoch_begin"] == 1
    # The new save took `latest`; the killed save's remains, which no pointer names any more, are gone.
    assert partial.name not in report["states"] and len(report["states"]) == 2
