"""FSDP2 scenarios under torchrun (gloo): each writes what the test compares to OUTPUT/{scenario}-rank{r}.pt.

Usage: fsdp_scenarios.py SCENARIO OUTPUT ROOT [EPOCHS]

- `versus-ddp`: the same run on DDP (`TorchRunner`) and on FSDP (`FSDPRunner`), with clipping and accumulation.
- `resume`: a straight FSDP run, and one that crashes mid-epoch and resumes from its `latest.dcp`.
- `single`: one process: training, `from_checkpoint`, `load_pretrained` from DCP and from a consolidated file.
- `train`: FSDP (or PLATFORM, the 5th argument) training to EPOCHS, resuming with `resume=True` if the run has a
  checkpoint, with a global batch of 16 whatever the number of processes.
- `save-failure`: the main process fails (a full disk) to write the run state of the second save, before the
  checkpoint's name reaches the other processes: each records the error `train` raised and what `latest` names.
- `moved-pointer`: two complete checkpoints; a run resumes from `latest.dcp`, which another run re-points at the
  other checkpoint after the main process read it and before process 1 does: each records the steps it resumed at
  and the full weights it loaded, with the full weights of both checkpoints.
- `async`: the same FSDP run with synchronous and with asynchronous checkpoints: what every pointer's checkpoint
  holds (its run state, and its full DCP state), read back.
- `oracle`: FSDP runs that record, at every optimizer step, the samples each process trained on and the full
  (gathered) parameters and gradients, for the test to recompute on one process with plain torch: `clip` (batch 8,
  clipping active), `accumulate` (micro-batches of 4, accumulated over 2) and `large` (batches of 8).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from toys import Interrupted, ResumableRunner, classification_data, make_config

import danling as dl
from danling.runner.fsdp_runner import FSDPRunner
from danling.utils import distributed as du

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


class RecordingRunner(dl.Runner):
    """Plain SGD on an MLP that records, at every optimizer step, what the test recomputes on one process.

    The MLP's layers shard unevenly on 2 processes (16 rows split 8/8, 3 rows 2/1). Each entry of `records` holds
    this process's micro-batches (`inputs`, `targets`, `micro`: their sizes), the full parameters before the step
    (`params`), the full gradients before and after clipping (`grads`, `clipped`), the norm `clip_grad_norm`
    returned (`norm`, `None` without clipping), the learning rate (`lr`) and the full parameters after the step
    (`after`). `sharded_grads_between` holds, for each micro-batch that did not close its window, whether any
    sharded gradient existed right after its backward, which only a reduce-scatter creates.
    """

    def __init__(self, config):
        super().__init__(config)
        self.model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.2)
        self.datasets.train = classification_data(self.config.samples, seed=0)
        self.records: list[dict] = []
        self.sharded_grads_between: list[bool] = []
        self._batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._current: dict = {}

    def gathered(self, grads: bool = False) -> dict[str, torch.Tensor]:
        # `full_tensor` all-gathers a DTensor: a collective, which every process reaches at the same step.
        found = {}
        for name, parameter in self.model.named_parameters():
            tensor = parameter.grad if grads else parameter
            found[name] = tensor.full_tensor().detach().clone()
        return found

    def train_step(self, batch):
        self._batches.append((batch[0].clone(), batch[1].clone()))
        steps = self.config.steps
        loss = super().train_step(batch)
        if self.config.steps == steps:
            self.sharded_grads_between.append(any(p.grad is not None for p in self.model.parameters()))
        return loss

    def clip_gradients(self):
        self._current = {"params": self.gathered(), "grads": self.gathered(grads=True), "norm": None}
        super().clip_gradients()
        self._current["clipped"] = self.gathered(grads=True)

    def clip_grad_norm(self, parameters, max_norm):
        norm = super().clip_grad_norm(parameters, max_norm)
        self._current["norm"] = norm.detach().clone()
        return norm

    def optimizer_step(self):
        lr = self.optimizer.param_groups[0]["lr"]
        super().optimizer_step()
        inputs = torch.cat([x for x, _ in self._batches])
        targets = torch.cat([y for _, y in self._batches])
        micro = [len(x) for x, _ in self._batches]
        self.records.append(
            {**self._current, "after": self.gathered(), "lr": lr, "inputs": inputs, "targets": targets, "micro": micro}
        )
        self._batches, self._current = [], {}


class SyncedRunner(RecordingRunner):
    """`RecordingRunner` that reduces gradients after every micro-batch: shows `sharded_grads_between` detects it."""

    def accumulate(self):
        return contextlib.nullcontext()


class FullDiskRunner(ResumableRunner):
    """`ResumableRunner` whose main process cannot write the run state of its second save (the disk is full)."""

    saves = 0

    def state_dict(self, *args, **kwargs):
        self.saves += 1
        if self.is_main_process and self.saves == 2:
            raise OSError("no space left on device")
        return super().state_dict(*args, **kwargs)


class MovedPointerRunner(ResumableRunner):
    """`ResumableRunner` whose process 1 reads its checkpoint after another run re-pointed `latest.dcp`.

    The main process reads `config.checkpoint` right after `init_distributed`; process 1 waits, then (standing in
    for a run that saves into the same directory) points `latest.dcp` at `config.moved_to` before it reads.
    """

    def init_distributed(self):
        super().init_distributed()
        if self.rank == 1:
            time.sleep(2)
            with dl.utils.io.atomic_write(self.config.checkpoint, "w") as file:
                json.dump({"path": self.config.moved_to}, file)


def read_pointer(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return json.load(file)["path"]


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
            # The samples that evaluation counted, over every process.
            report[platform]["evaluated"] = sum(du.all_gather_object(runner.meters["loss"].count))
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
        resumed = ResumableRunner(make_config(resumed_root, resume=True, **crash))
        resumed.config.fail_at_iter = None  # taken over from the crashed run's config
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
        epochs, platform = int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else "fsdp"
        world = int(os.environ.get("WORLD_SIZE", "1"))
        config = make_config(
            root, platform=platform, epoch_end=4, accum_steps=2 // world, resume=True, dropout=0.0, **SAMPLES
        )
        config.run_id = "fixed"  # the same run, and directory, whatever the world size
        runner = ResumableRunner(config)  # its schedule spans 4 epochs, however many this launch trains
        report["resumed_from"] = runner.config.checkpoint
        runner.config.epoch_end = epochs
        runner.train()
        report["final"] = full(runner)
        if rank == 0 and world == 1 and platform == "fsdp":
            from danling.runner.fsdp_runner import consolidate_checkpoint

            latest = os.path.join(runner.checkpoint_dir, "latest.dcp")
            report["consolidated"] = dl.load(consolidate_checkpoint(latest, os.path.join(output, "model.pth")))
    elif scenario == "save-failure":
        runner = FullDiskRunner(make_config(root, platform="fsdp", epoch_end=2, **SAMPLES))
        try:
            runner.train()
        except (OSError, RuntimeError) as error:
            report["error"] = f"{type(error).__name__}: {error}"
        report["latest"] = read_pointer(os.path.join(runner.checkpoint_dir, "latest.dcp"))
    elif scenario == "moved-pointer":
        from danling.runner.dcp import dcp_to_full_state_dict

        first = ResumableRunner(make_config(root, platform="fsdp", epoch_end=2, save_interval=1, **SAMPLES))
        first.train()  # epoch-0.dcp names the first epoch's checkpoint, latest.dcp the second's
        checkpoints = first.checkpoint_dir
        targets = {name: read_pointer(os.path.join(checkpoints, f"{name}.dcp")) for name in ("epoch-0", "latest")}
        report["checkpoints"] = {
            name: dcp_to_full_state_dict(os.path.join(checkpoints, target), keys=["model"])["model"]["model"]
            for name, target in targets.items()
        }
        torch.distributed.barrier()
        config = make_config(root, platform="fsdp", epoch_end=2, **SAMPLES)
        config.checkpoint, config.moved_to = os.path.join(checkpoints, "latest.dcp"), targets["epoch-0"]
        config.allow_config_change = True  # `moved_to`, the test's own key, is not in the checkpoint's config
        resumed = MovedPointerRunner(config)
        report["steps"] = resumed.config.steps
        report["model"] = full(resumed)["model"]
    elif scenario == "oracle":
        # One epoch of 96 samples on 2 processes: 6 steps of 16 samples, as 2 batches of 8 or 4 micro-batches of 4.
        runs = {
            "clip": (RecordingRunner, 8, {"max_grad_norm": 0.05}),
            "accumulate": (RecordingRunner, 4, {"accum_steps": 2}),
            "accumulate-synced": (SyncedRunner, 4, {"accum_steps": 2}),
            "large": (RecordingRunner, 8, {}),
        }
        for name, (runner_class, batch_size, options) in runs.items():
            config = make_config(
                os.path.join(root, name), platform="fsdp", epoch_end=1, samples=96, save_checkpoints=False, **options
            )
            config.dataloader.batch_size = batch_size
            runner = runner_class(config)
            runner.train()
            report[name] = {"steps": runner.records, "sharded_grads_between": runner.sharded_grads_between}
    elif scenario == "async":
        from danling.runner.dcp import dcp_to_full_state_dict
        from danling.runner.pointers import resolve_checkpoint

        settings = {"epoch_end": 2, "save_interval": 1, "checkpoint_interval": 4, **SAMPLES}
        for mode in ("sync", "async"):
            config = make_config(
                os.path.join(root, mode), platform="fsdp", async_checkpoint=mode == "async", **settings
            )
            runner = ResumableRunner(config)
            runner.train()
            checkpoints = runner.checkpoint_dir
            report[mode] = {"final": full(runner), "dirs": len(os.listdir(os.path.join(checkpoints, "dcp")))}
            report[f"{mode}-in-background"] = "_background_checkpointing_made" in runner.__dict__
            for name in sorted(os.listdir(checkpoints)):
                if not name.endswith(".dcp"):
                    continue
                directory = resolve_checkpoint(os.path.join(checkpoints, name))
                run_state = dict(dl.load(os.path.join(directory, "runner.pth")))
                del run_state["timestamp"]
                run_state["runner"] = {key: run_state["runner"][key] for key in ("iters", "steps", "epochs")}
                report[mode][name] = {"run": run_state, "dcp": dcp_to_full_state_dict(directory)}
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    torch.save(report, os.path.join(output, f"{scenario}-rank{rank}.pt"))


if __name__ == "__main__":
    main()
