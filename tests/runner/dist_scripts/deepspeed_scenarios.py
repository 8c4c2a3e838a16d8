"""DeepSpeed scenarios under torchrun (gloo, DeepSpeed's CPU accelerator): each writes what the test compares to
OUTPUT/{scenario}-rank{r}.pt.

Usage: deepspeed_scenarios.py SCENARIO OUTPUT ROOT [STAGE]

- `train`: the same run of 3 epochs on DDP (`platform: torch`) and on DeepSpeed ZeRO STAGE, with accumulation
  (windows of 2, 2 and 1 micro-batches in each epoch), clipping, dropout, a scheduler and an EMA; then a ZeRO run
  that crashes in its third epoch and resumes with `resume=True` from the `latest.ds` its second epoch left, and
  one that saves `latest` at every optimizer step and so resumes inside the epoch.
- `unclipped`: DDP and DeepSpeed ZeRO STAGE for 2 epochs with accumulation (windows of 2, 2 and 1) and no
  clipping, which would hide a gradient scaled wrong.
- `single`: one process: a save killed before its run state is written, `resume=True` past an incomplete
  checkpoint, `from_checkpoint`, and `load_pretrained` from a DeepSpeed checkpoint and from a plain file; bf16, with
  the fp32 master weights after each step, what the module's forward sees, and what an EMA update allocates.
- `bf16`: one process, bf16 on ZeRO STAGE for 3 epochs, on DeepSpeed's accelerator (`DS_ACCELERATOR`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import torch
from deepspeed.utils import safe_get_full_fp32_param
from toys import Interrupted, ResumableRunner, make_config, peak_cpu_bytes

import danling as dl
from danling.runner import deepspeed_runner
from danling.utils import distributed as du

# 80 samples: 5 batches of 8 per process on 2 processes, so windows of 2 micro-batches leave one of 1 at the end.
SAMPLES = {"samples": 80, "val_samples": 25}


def snapshot(runner) -> dict:
    model = runner.unwrap(runner.model)
    return {
        "model": {key: value.detach().clone() for key, value in model.state_dict().items()},
        "ema": {key: value.detach().clone() for key, value in runner.ema.module.state_dict().items()},
        "results": {index: result.dict() for index, result in runner.results.items()},
        "counters": (runner.config.iters, runner.config.steps, runner.config.epochs),
        "lr": [group["lr"] for group in runner.optimizer.param_groups],
    }


def deepspeed_config(root, stage, **settings) -> dl.Config:
    config = make_config(root, platform="deepspeed", **settings)
    config.deepspeed.zero_optimization.stage = stage
    return config


def main() -> None:
    scenario, output, root = sys.argv[1], sys.argv[2], sys.argv[3]
    stage = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    rank = int(os.environ.get("RANK", "0"))
    report: dict = {}
    if scenario == "train":
        # DDP and ZeRO on the same data; then a ZeRO run that crashes in its third epoch and resumes with
        # resume=True from the latest.ds its second epoch left, to compare with the uninterrupted one.
        settings = {"epoch_end": 3, "accum_steps": 2, "max_grad_norm": 0.5, **SAMPLES}
        configs = {
            "torch": make_config(os.path.join(root, "torch"), platform="torch", **settings),
            "deepspeed": deepspeed_config(os.path.join(root, "deepspeed"), stage, **settings),
        }
        for platform, config in configs.items():
            runner = ResumableRunner(config)
            runner.train()
            report[platform] = snapshot(runner)
            report[platform]["val"] = runner.evaluate(["val"])["val"].dict()
            report[platform]["infer"] = runner.infer("val")
        engine = runner.model
        report["engine"] = {
            "type": type(engine).__name__,
            "global_steps": engine.global_steps,
            "zero_stage": engine.zero_optimization_stage(),
            "config": runner.deepspeed_config(),
            "optimizer": type(runner.optimizer).__name__,
            "backend": torch.distributed.get_backend(),
            "device": str(runner.device),
        }
        crashed = os.path.join(root, "crashed")
        broken = ResumableRunner(deepspeed_config(crashed, stage, run_id="crash", fail_at_iter=13, **settings))
        with contextlib.suppress(Interrupted):
            broken.train()
        report["pointer"] = _read_pointer(os.path.join(broken.checkpoint_dir, "latest.ds"))
        resumed = ResumableRunner(deepspeed_config(crashed, stage, run_id="crash", resume=True, **settings))
        report["resumed_from"] = resumed.config.checkpoint
        report["epoch_begin"] = resumed.config.epoch_begin
        resumed.config.fail_at_iter = None
        resumed.train()
        report["resumed"] = snapshot(resumed)
        du.barrier()  # the main process has pruned the old checkpoint directories
        report["directories"] = _tags(os.path.join(resumed.checkpoint_dir, "deepspeed"))
        # Also inside an epoch: `latest` saved at every optimizer step, the crash one micro-batch after one.
        mid = {**settings, "run_id": "crash-mid", "checkpoint_interval": 1}
        broken = ResumableRunner(deepspeed_config(crashed, stage, fail_at_iter=13, **mid))
        with contextlib.suppress(Interrupted):
            broken.train()
        resumed = ResumableRunner(deepspeed_config(crashed, stage, resume=True, **mid))
        report["mid_epoch_position"] = resumed._resume_position
        resumed.config.fail_at_iter = None  # taken over from the crashed run's config
        resumed.train()
        report["resumed_mid_epoch"] = snapshot(resumed)
        # The main process fails to write the run state of the second epoch's save: every process raises.
        failing = ResumableRunner(deepspeed_config(crashed, stage, run_id="disk-full", **{**settings, "epoch_end": 2}))
        report["save_failure"] = failing_save_error(
            failing, lambda: failing.is_main_process and failing.config.epochs == 1
        )
        report["pointer_after_failure"] = _read_pointer(os.path.join(failing.checkpoint_dir, "latest.ds"))
    elif scenario == "unclipped":
        settings = {"epoch_end": 2, "accum_steps": 2, **SAMPLES}
        configs = {
            "torch": make_config(os.path.join(root, "torch"), platform="torch", **settings),
            "deepspeed": deepspeed_config(os.path.join(root, "deepspeed"), stage, **settings),
        }
        for platform, config in configs.items():
            runner = ResumableRunner(config)
            runner.train()
            report[platform] = snapshot(runner)
        report["gradient_clipping"] = runner.deepspeed_config()["gradient_clipping"]
    elif scenario == "single":
        single(root, output, stage, report)
    elif scenario == "bf16":
        bf16(root, stage, report)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    torch.save(report, os.path.join(output, f"{scenario}-rank{rank}.pt"))


def single(root: str, output: str, stage: int, report: dict) -> None:
    settings = {"epoch_end": 2, "save_interval": 1, "samples": 48, "val_samples": 25}
    straight = ResumableRunner(deepspeed_config(os.path.join(root, "straight"), stage, **settings))
    straight.train()
    report["straight"] = snapshot(straight)

    # The disk fails while the second save writes its run state: the engine's files are there, runner.pth is not.
    crashed = os.path.join(root, "crashed")
    runner = ResumableRunner(deepspeed_config(crashed, stage, run_id="crash", **settings))
    report["crash"] = failing_save_error(runner, lambda: runner.config.epochs == 1)
    checkpoints = runner.checkpoint_dir
    engine_dir = os.path.join(checkpoints, "deepspeed")
    report["pointers"] = {name: _read_pointer(os.path.join(checkpoints, name)) for name in _pointers(checkpoints)}
    report["partial"] = {tag: sorted(os.listdir(os.path.join(engine_dir, tag))) for tag in _tags(engine_dir)}
    # A pointer at the incomplete directory (damage no save of ours makes): resume=True must name it and take
    # epoch-0.ds instead.
    (partial,) = [tag for tag, files in report["partial"].items() if "runner.pth" not in files]
    with open(os.path.join(checkpoints, "latest.ds"), "w", encoding="utf-8") as file:
        json.dump({"path": f"deepspeed/{partial}"}, file)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        resumed = ResumableRunner(deepspeed_config(crashed, stage, run_id="crash", resume=True, **settings))
    report["resume_stderr"] = stderr.getvalue()
    report["resumed_from"] = resumed.config.checkpoint
    resumed.train()
    report["resumed"] = snapshot(resumed)
    report["tags_after"] = _tags(engine_dir)

    latest = os.path.join(straight.checkpoint_dir, "latest.ds")
    again = type(straight).from_checkpoint(latest)
    report["from_checkpoint"] = {
        "deepspeed": isinstance(again, deepspeed_runner.DeepSpeedRunner),
        "epoch_begin": again.config.epoch_begin,
        "same_dir": again.dir == straight.dir,
        "model": snapshot(again)["model"],
    }
    fresh = ResumableRunner(deepspeed_config(os.path.join(root, "fresh"), stage, **settings))
    fresh.load_pretrained(latest)
    report["pretrained"] = snapshot(fresh)["model"]
    plain_path = os.path.join(output, "model.pth")
    dl.save(deepspeed_runner.full_weights(latest), plain_path)
    # Weights loaded after the engine exists must reach ZeRO's fp32 master copy, or the next step reverts them: an
    # epoch from them matches DDP's. Each runner is built (and seeded) right before it trains.
    after = {}
    for platform in ("torch", "deepspeed"):
        config = make_config(os.path.join(root, f"plain-{platform}"), platform=platform, **settings)
        config.deepspeed.zero_optimization.stage = stage
        plain = ResumableRunner(config)
        plain.load_pretrained(plain_path)
        report.setdefault("plain", snapshot(plain)["model"])
        plain.train_epoch("train")
        after[platform] = snapshot(plain)["model"]
    report["after_pretrained_epoch"] = after

    # bf16: DeepSpeed holds the module in bf16 (fp32 master weights in ZeRO); the EMA stays fp32.
    half = MasterRecorded(deepspeed_config(os.path.join(root, "bf16"), stage, precision="bf16", **settings))
    initial_ema = {key: value.clone() for key, value in half.ema.module.state_dict().items()}
    half.train()
    report["bf16"] = {
        "enabled": half.model.bfloat16_enabled(),
        "initial_ema": initial_ema,
        "full": dict(deepspeed_runner.full_weights(os.path.join(half.checkpoint_dir, "latest.ds"))),
        **snapshot(half),
        "masters": half.masters,
        "forward": half.forwards[0],
        "parameter_bytes": [p.numel() * 4 for p in half.unwrap(half.model).parameters()],
        # One more EMA update (after the snapshot): what it allocates at most, at once.
        "update_peak": peak_cpu_bytes(half.update_ema),
    }


class MasterRecorded(ResumableRunner):
    """`ResumableRunner` that records ZeRO's fp32 master weights after each optimizer step (with DeepSpeed's own
    API), and what the module's training forward sees (autocast on or off, the dtype of its input)."""

    def __init__(self, config):
        super().__init__(config)
        self.__dict__["masters"], self.__dict__["forwards"] = [], []

        def record(module, args):
            if module.training:
                autocast = torch.is_autocast_enabled(args[0].device.type)
                self.forwards.append({"autocast": autocast, "dtype": args[0].dtype})

        self.model.register_forward_pre_hook(record)

    def step(self):
        super().step()
        module = self.unwrap(self.model)
        masters = {name: safe_get_full_fp32_param(p).clone() for name, p in module.named_parameters()}
        self.masters.append(masters)


def bf16(root: str, stage: int, report: dict) -> None:
    # On the accelerator DS_ACCELERATOR names (the cuda-marked test: one GPU), bf16 for a few epochs.
    settings = {"epoch_end": 3, "precision": "bf16", "samples": 64, "val_samples": 25}
    runner = MasterRecorded(deepspeed_config(os.path.join(root, "bf16"), stage, **settings))
    runner.train()
    report.update(snapshot(runner))
    report["device"] = str(runner.device)
    report["dtypes"] = sorted({str(p.dtype) for p in runner.unwrap(runner.model).parameters()})
    report["masters"], report["forwards"] = runner.masters, runner.forwards


def failing_save_error(runner, fail) -> str:
    """Train `runner` with a disk that fails writing the run state when `fail()`; the error `train` raised."""
    real_save = deepspeed_runner.save

    def failing_save(obj, path, *args, **kwargs):
        if fail():
            raise OSError(f"no space left on device: {path}")
        return real_save(obj, path, *args, **kwargs)

    deepspeed_runner.save = failing_save
    try:
        runner.train()
    except (OSError, RuntimeError) as error:
        return f"{type(error).__name__}: {error}"
    finally:
        deepspeed_runner.save = real_save
    raise AssertionError("the save did not fail")


def _read_pointer(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return json.load(file)["path"]


def _pointers(directory: str) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".ds"))


def _tags(directory: str) -> list[str]:
    return sorted(name for name in os.listdir(directory) if os.path.isdir(os.path.join(directory, name)))


if __name__ == "__main__":
    main()
