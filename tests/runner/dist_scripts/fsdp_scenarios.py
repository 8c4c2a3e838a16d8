"""FSDP2 scenarios under torchrun (gloo): each writes what the test compares to OUTPUT/{scenario}-rank{r}.pt.

Usage: fsdp_scenarios.py SCENARIO OUTPUT ROOT [EPOCHS]

- `versus-ddp`: the same run on DDP (`TorchRunner`) and on FSDP (`FSDPRunner`), with clipping and accumulation.
- `resume`: a straight FSDP run, and one that crashes mid-epoch and resumes from its `latest.dcp`.
- `single`: one process: training, `from_checkpoint`, `load_pretrained` from DCP and from a consolidated file.
- `train`: FSDP training to EPOCHS, resuming with `resume=True` if the run has a checkpoint, with a global batch
  of 16 whatever the number of processes.
"""

from __future__ import annotations

import contextlib
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from toys import Interrupted, ResumableRunner, make_config

import danling as dl
from danling.runner.fsdp_runner import FSDPRunner

# 96 samples: 6 batches of 8 per process on 2 processes, with nothing padded, whatever the world size.
SAMPLES = {"samples": 96, "val_samples": 25}


def full(runner) -> dict:
    model = runner.unwrap(runner.model)
    options = StateDictOptions(full_state_dict=True, cpu_offload=False)
    state = get_model_state_dict(model, options=options) if isinstance(runner, FSDPRunner) else model.state_dict()
    ema = runner.ema.module
    ema_state = get_model_state_dict(ema, options=options) if isinstance(runner, FSDPRunner) else ema.state_dict()
    return {
        "model": {key: value.detach().clone() for key, value in state.items()},
        "ema": {key: value.detach().clone() for key, value in ema_state.items()},
        "results": {index: result.dict() for index, result in runner.results.items()},
        "counters": (runner.config.iters, runner.config.steps, runner.config.epochs),
        "lr": [group["lr"] for group in runner.optimizer.param_groups],
    }


def main() -> None:
    scenario, output, root = sys.argv[1], sys.argv[2], sys.argv[3]
    rank = int(os.environ.get("RANK", "0"))
    report: dict = {}
    if scenario == "versus-ddp":
        settings = {"epoch_end": 2, "accum_steps": 2, "max_grad_norm": 0.5, **SAMPLES}
        for platform in ("torch", "fsdp"):
            runner = ResumableRunner(make_config(os.path.join(root, platform), platform=platform, **settings))
            runner.train()
            report[platform] = full(runner)
            report[platform]["val"] = runner.evaluate(["val"])["val"].dict()
            report[platform]["infer"] = runner.infer("val")
    elif scenario == "resume":
        settings = {"epoch_end": 3, "checkpoint_interval": 1, "accum_steps": 2, **SAMPLES}
        straight = ResumableRunner(make_config(os.path.join(root, "straight"), platform="fsdp", **settings))
        straight.train()
        report["straight"] = full(straight)
        resumed_root = os.path.join(root, "resumed")
        crash = {"platform": "fsdp", "run_id": "crash", **settings}
        broken = ResumableRunner(make_config(resumed_root, fail_at_iter=15, **crash))
        with contextlib.suppress(Interrupted):
            broken.train()
        resumed = ResumableRunner(make_config(resumed_root, resume=True, fail_at_iter=-1, **crash))
        report["resumed_from"] = resumed.config.checkpoint
        resumed.train()
        report["resumed"] = full(resumed)
    elif scenario == "single":
        # One process: FSDP makes its own process group; the platform survives from_checkpoint.
        from danling.runner.fsdp_runner import consolidate_checkpoint

        runner = ResumableRunner(make_config(root, platform="fsdp", epoch_end=1, **SAMPLES))
        runner.train()
        latest = os.path.join(runner.checkpoint_dir, "latest.dcp")
        resumed = ResumableRunner.from_checkpoint(latest)
        again = ResumableRunner(make_config(os.path.join(root, "again"), platform="fsdp", epoch_end=1, **SAMPLES))
        again.load_pretrained(latest)
        plain = ResumableRunner(make_config(os.path.join(root, "plain"), epoch_end=1, **SAMPLES))
        plain.load_pretrained(consolidate_checkpoint(latest, os.path.join(output, "single.pth")))
        report.update(
            types=[isinstance(r, FSDPRunner) for r in (runner, resumed, again, plain)],
            epoch_begin=resumed.config.epoch_begin,
            final=full(runner),
            resumed=full(resumed),
            pretrained=full(again)["model"],
            plain=plain.unwrap(plain.model).state_dict(),
        )
    elif scenario == "train":
        # Global batch 16 whatever the world size: 8 per process, accumulated over 2 // world micro-batches.
        epochs = int(sys.argv[4])
        world = int(os.environ.get("WORLD_SIZE", "1"))
        config = make_config(
            root, platform="fsdp", epoch_end=4, accum_steps=2 // world, resume=True, dropout=0.0, **SAMPLES
        )
        config.run_id = "fixed"  # the same run, and directory, whatever the world size
        runner = ResumableRunner(config)  # its schedule spans 4 epochs, however many this launch trains
        report["resumed_from"] = runner.config.checkpoint
        runner.config.epoch_end = epochs
        runner.train()
        report["final"] = full(runner)
        if rank == 0 and world == 1:
            from danling.runner.fsdp_runner import consolidate_checkpoint

            latest = os.path.join(runner.checkpoint_dir, "latest.dcp")
            report["consolidated"] = dl.load(consolidate_checkpoint(latest, os.path.join(output, "model.pth")))
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    torch.save(report, os.path.join(output, f"{scenario}-rank{rank}.pt"))


if __name__ == "__main__":
    main()
