"""Accelerate scenarios, under torchrun (gloo) or plain python: each writes what the test compares to
OUTPUT/{scenario}-rank{r}.pt.

Usage: accelerate_scenarios.py SCENARIO OUTPUT ROOT

- `versus-ddp`: the same run on DDP (`platform: torch`) and on Accelerate, with accumulation (a shorter last window),
  clipping, warmup-cosine LR, EMA and dropout, then evaluation and inference on 25 samples (13 and 12 per process).
- `unclipped`: DDP and Accelerate with accumulation (a shorter last window) and no clipping, which would hide a
  window's gradient scaled wrong.
- `resume`: a straight run, one that crashes after an epoch and one that crashes inside an epoch, both resumed with
  `resume=True`.
- `single`: one process: how the config maps onto the Accelerator, bf16 against DDP's bf16, and the errors.
- `gloo-alone`: one plain process with `backend: gloo`, on DDP and on Accelerate.
- `killed-save`: one process, killed (`os._exit`) while writing its second checkpoint.
- `after-kill`: one process, resuming the run `killed-save` left.
"""

from __future__ import annotations

import contextlib
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import torch
from toys import Interrupted, ResumableRunner, make_config

# 40 samples: 20 per process on 2, batches of 8, 8 and 4: with accum_steps=2, windows of 2 and then 1.
TRAIN = {"samples": 40, "val_samples": 25}


class Recorded(ResumableRunner):
    """`ResumableRunner` that records the learning rate after every optimizer step."""

    def step(self):
        super().step()
        self.__dict__.setdefault("lrs", []).append(self.optimizer.param_groups[0]["lr"])


def snapshot(runner) -> dict:
    """What two runs must agree on: weights, optimizer and scheduler state, results, counters, LR curve."""
    return {
        "model": {k: v.detach().clone() for k, v in runner.unwrap(runner.model).state_dict().items()},
        "ema": {k: v.detach().clone() for k, v in runner.ema.state_dict().items()},
        "optimizer": runner.optimizer.state_dict(),
        "scheduler": runner.scheduler.state_dict(),
        "results": {index: result.dict() for index, result in runner.results.items()},
        "counters": (runner.config.iters, runner.config.steps, runner.config.epochs),
        "lrs": runner.__dict__.get("lrs", []),
    }


def oracle(runner) -> dict:
    """Loss and accuracy of the evaluation model over all 25 validation samples at once, on this process."""
    inputs, targets = runner.datasets.val.tensors
    model = runner.evaluation_model().eval()
    with torch.no_grad():
        logits = model(inputs.to(runner.device))
    return {
        "loss": runner.criterion(logits, targets).item(),
        "acc": (logits.argmax(1) == targets).float().mean().item(),
        "logits": logits,
    }


def versus_ddp(root: str) -> dict:
    report: dict = {}
    settings = {"epoch_end": 2, "accum_steps": 2, "max_grad_norm": 0.5, "save_interval": 1, **TRAIN}
    for platform in ("torch", "accelerate"):
        runner = Recorded(make_config(os.path.join(root, platform), platform=platform, **settings))
        runner.train()
        report[platform] = snapshot(runner)
        report[platform]["val"] = runner.evaluate(["val"])["val"].dict()
        report[platform]["infer"] = runner.infer("val")
        report[platform]["oracle"] = oracle(runner)
        report[platform]["checkpoint_dir"] = runner.checkpoint_dir
        if platform == "accelerate":
            report["accelerate"]["kinds"] = [type(part).__name__ for part in (runner.model, runner.optimizer)]
    return report


def unclipped(root: str) -> dict:
    settings = {"epoch_end": 2, "accum_steps": 2, **TRAIN}
    report: dict = {}
    for platform in ("torch", "accelerate"):
        runner = Recorded(make_config(os.path.join(root, platform), platform=platform, **settings))
        runner.train()
        report[platform] = snapshot(runner)
    return report


def resume(root: str) -> dict:
    report: dict = {}
    settings = {"epoch_end": 3, "accum_steps": 2, "platform": "accelerate", **TRAIN}
    straight = Recorded(make_config(os.path.join(root, "straight"), **settings))
    straight.train()
    report["straight"] = snapshot(straight)
    # 3 micro-batches per epoch and process (iters 4 to 6 are epoch 1), optimizer steps after iters 5 and 6. A crash
    # at iter 5 leaves the checkpoint of epoch 0; with one every optimizer step, a crash at iter 6 leaves the one
    # taken after iter 5, inside epoch 1.
    for case, extra, fail_at_iter in (("epoch", {}, 5), ("mid-epoch", {"checkpoint_interval": 1}, 6)):
        crashed_root = os.path.join(root, case)
        crash = {**settings, **extra, "run_id": case}
        broken = Recorded(make_config(crashed_root, fail_at_iter=fail_at_iter, **crash))
        with contextlib.suppress(Interrupted):
            broken.train()
        resumed = Recorded(make_config(crashed_root, resume=True, **crash))
        resumed.config.fail_at_iter = None  # taken over from the crashed run's config
        report[case] = {"from": resumed.config.checkpoint, "epoch_begin": resumed.config.epoch_begin}
        resumed.__dict__["lrs"] = straight.lrs[: resumed.config.steps]
        resumed.train()
        report[case].update(snapshot(resumed))
    return report


def single(root: str) -> dict:
    from accelerate.scheduler import AcceleratedScheduler

    from danling.runner.accelerate_runner import AccelerateRunner

    report: dict = {}
    settings = {"epoch_end": 2, "accum_steps": 3, "precision": "bf16", "max_grad_value": 0.5, "max_grad_norm": 1.0}
    runners = {}
    for platform in ("torch", "accelerate"):
        runner = Recorded(make_config(os.path.join(root, platform), platform=platform, **settings, **TRAIN))
        runner.train()
        runners[platform] = runner
        report[platform] = snapshot(runner)
    runner = runners["accelerate"]
    accelerator = runner.accelerator
    report["mapping"] = {
        "is_accelerate_runner": isinstance(runner, AccelerateRunner),
        "mixed_precision": accelerator.mixed_precision,
        "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
        "distributed_type": str(accelerator.distributed_type.value),
        "device": str(runner.device),
        "model": type(runner.model).__name__,
        "scheduler_steps_with_optimizer": isinstance(runner.scheduler, AcceleratedScheduler)
        and runner.scheduler.step_with_optimizer,
    }
    latest = os.path.join(runner.checkpoint_dir, "latest.accelerate")
    directory = AccelerateRunner.read_checkpoint_file(latest)["accelerate"]
    report["files"] = sorted(os.listdir(directory))
    # The weights of a checkpoint load into an Accelerate runner, and, as a plain file, into a TorchRunner.
    again = Recorded(make_config(os.path.join(root, "again"), platform="accelerate", **settings, **TRAIN))
    again.load_pretrained(latest)
    plain = ResumableRunner(make_config(os.path.join(root, "plain"), epoch_end=1, **TRAIN))
    plain.load_pretrained(os.path.join(directory, "model.pth"))
    report["pretrained"] = [runner.unwrap(runner.model).state_dict() for runner in (again, plain)]

    class Continued(Recorded, AccelerateRunner):
        pass

    continued = Continued.from_checkpoint(latest)
    report["from_checkpoint"] = {
        "is_accelerate_runner": isinstance(continued, AccelerateRunner),
        "epoch_begin": continued.config.epoch_begin,
        "model": continued.unwrap(continued.model).state_dict(),
    }
    errors = {}
    attempts = {
        "device": {"device": "cuda:3"},
        "precision": {"precision": "fp16"},  # Accelerate allows one precision per process, and no fp16 on CPUs
    }
    for name, extra in attempts.items():
        try:
            Recorded(make_config(os.path.join(root, name), platform="accelerate", **{**settings, **extra}, **TRAIN))
        except ValueError as error:
            errors[name] = str(error)
    os.environ["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"] = "4"
    try:
        Recorded(make_config(os.path.join(root, "env"), platform="accelerate", **settings, **TRAIN))
    except ValueError as error:
        errors["env"] = str(error)
    finally:
        del os.environ["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"]
    report["errors"] = errors
    return report


def gloo_alone(root: str) -> dict:
    # `backend: gloo` on one plain process: no process group to make, as on the other platforms.
    report: dict = {}
    for platform in ("torch", "accelerate"):
        config = make_config(os.path.join(root, platform), platform=platform, backend="gloo", epoch_end=2, **TRAIN)
        runner = Recorded(config)
        runner.train()
        report[platform] = snapshot(runner)
    report["distributed_type"] = str(runner.accelerator.distributed_type.value)
    return report


def killed_save(root: str) -> dict:
    import danling.runner.accelerate_runner as backend

    runner = ResumableRunner(make_config(root, platform="accelerate", epoch_end=2, save_interval=1, run_id="killed"))
    write = backend.save

    def dies_at_second_epoch(obj, path, *args, **kwargs):
        if runner.config.epochs == 1 and os.path.basename(path) == "runner.pth":
            os._exit(3)  # killed after Accelerate wrote its files, before runner.pth: nothing runs after this
        return write(obj, path, *args, **kwargs)

    backend.save = dies_at_second_epoch
    runner.train()
    return {}


def after_kill(root: str) -> dict:
    config = make_config(root, platform="accelerate", epoch_end=2, save_interval=1, run_id="killed", resume=True)
    runner = ResumableRunner(config)
    report = {"from": runner.config.checkpoint, "epoch_begin": runner.config.epoch_begin}
    runner.train()
    report["states"] = sorted(os.listdir(os.path.join(runner.checkpoint_dir, "accelerate")))
    report["checkpoint_dir"] = runner.checkpoint_dir
    return report


SCENARIOS = {
    "versus-ddp": versus_ddp,
    "unclipped": unclipped,
    "resume": resume,
    "single": single,
    "gloo-alone": gloo_alone,
    "killed-save": killed_save,
    "after-kill": after_kill,
}


def main() -> None:
    scenario, output, root = sys.argv[1], sys.argv[2], sys.argv[3]
    if scenario not in SCENARIOS:
        raise SystemExit(f"unknown scenario {scenario!r}; expected one of: {', '.join(SCENARIOS)}")
    report = SCENARIOS[scenario](root)
    rank = int(os.environ.get("RANK", "0"))
    torch.save(report, os.path.join(output, f"{scenario}-rank{rank}.pt"))


if __name__ == "__main__":
    main()
