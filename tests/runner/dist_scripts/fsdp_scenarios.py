"""FSDP2 scenarios under torchrun (gloo): each writes what the test compares to OUTPUT/{scenario}-rank{r}.pt.

Usage: fsdp_scenarios.py SCENARIO OUTPUT ROOT [EPOCHS]

- `versus-ddp`: the same run on DDP (`TorchRunner`) and on FSDP (`FSDPRunner`), with clipping and accumulation.
- `resume`: a straight FSDP run, and one that crashes mid-epoch and resumes from its `latest.dcp`.
- `train`: FSDP training to EPOCHS, resuming with `resume=True` if the run has a checkpoint, with a global batch
  of 16 whatever the number of processes.
"""

from __future__ import annotations

import contextlib
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from toys import Interrupted, classification_data, make_config

import danling as dl
from danling.runner.fsdp_runner import FSDPRunner


class Classifier(dl.Runner):
    """A small MLP with dropout (RNG), AdamW, a schedule, an EMA and metrics: everything resume restores."""

    def __init__(self, config):
        super().__init__(config)
        self.datasets.train = classification_data(96, seed=0)
        self.datasets.val = classification_data(25, seed=1)
        self.model = nn.Sequential(
            nn.Linear(8, 32), nn.ReLU(), nn.Dropout(config.get("dropout", 0.1)), nn.Linear(32, 16), nn.Linear(16, 3)
        )
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.02)
        self.scheduler = dl.LRScheduler(self.optimizer, total_steps=self.total_steps, method="numerical")
        self.ema = torch.optim.swa_utils.AveragedModel(
            self.model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9)
        )
        self.metrics = dl.metrics.multiclass_metrics(num_classes=3)

    def train_step(self, batch):
        loss = super().train_step(batch)
        if self.config.get("fail_at_iter") is not None and self.config.iters == self.config.fail_at_iter:
            raise Interrupted(f"interrupted after micro-batch {self.config.iters}")
        return loss


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
        settings = {"epoch_end": 2, "accum_steps": 2, "max_grad_norm": 0.5}
        for platform in ("torch", "fsdp"):
            runner = Classifier(make_config(os.path.join(root, platform), platform=platform, **settings))
            runner.train()
            report[platform] = full(runner)
            report[platform]["val"] = runner.evaluate(["val"])["val"].dict()
            report[platform]["infer"] = runner.infer("val")
    elif scenario == "resume":
        settings = {"epoch_end": 3, "checkpoint_interval": 1, "accum_steps": 2}
        straight = Classifier(make_config(os.path.join(root, "straight"), platform="fsdp", **settings))
        straight.train()
        report["straight"] = full(straight)
        resumed_root = os.path.join(root, "resumed")
        broken = Classifier(make_config(resumed_root, platform="fsdp", fail_at_iter=15, run_id="crash", **settings))
        with contextlib.suppress(Interrupted):
            broken.train()
        resumed = Classifier(
            make_config(resumed_root, platform="fsdp", resume=True, run_id="crash", fail_at_iter=-1, **settings)
        )
        report["resumed_from"] = resumed.config.checkpoint
        resumed.train()
        report["resumed"] = full(resumed)
    elif scenario == "train":
        # Global batch 16 whatever the world size: 8 per process, accumulated over 2 // world micro-batches.
        epochs = int(sys.argv[4])
        world = int(os.environ.get("WORLD_SIZE", "1"))
        config = make_config(root, platform="fsdp", epoch_end=4, accum_steps=2 // world, resume=True, dropout=0.0)
        config.run_id = "fixed"  # the same run, and directory, whatever the world size
        runner = Classifier(config)  # its schedule spans 4 epochs, however many this launch trains
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
