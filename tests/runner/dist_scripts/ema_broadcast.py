"""Run under torchrun: build a runner with an EMA on each platform named, and record the EMA each process holds
right after construction (and before `__post_init__`), to OUTPUT/ema-rank{r}.pt.

Usage: ema_broadcast.py OUTPUT ROOT PLATFORM...

Each platform is built with two EMAs in turn: an `AveragedModel` that averages buffers too, and an EMA of the
`update(model)` kind (`toys.UpdateEma`, not a module). The model has a batch norm, so the EMA has buffers. The
seed is per process (offset by rank), so each process builds other initial weights.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import torch
from torch import nn
from toys import UpdateEma, classification_data, make_config

import danling as dl

EMAS = {
    "averaged": lambda model: torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9), use_buffers=True
    ),
    "update": UpdateEma,
}


class EmaRunner(dl.Runner):
    def __init__(self, config):
        super().__init__(config)
        self.model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
        with torch.no_grad():  # buffers that differ by process, as parameters do
            self.model[1].running_mean.normal_()
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.datasets.train = classification_data(32, seed=0)
        self.ema = EMAS[self.config.ema_kind](self.model)
        self.built = ema_state(self.ema)


def ema_state(ema) -> dict[str, torch.Tensor]:
    module = ema.module  # the copy of the model, in either kind of EMA
    # FSDP shards an AveragedModel: its full tensors (gathered, on every process) are what must agree.
    return {
        key: (value.full_tensor() if hasattr(value, "full_tensor") else value).detach().clone()
        for key, value in module.state_dict().items()
    }


def main() -> None:
    output, root, platforms = sys.argv[1], sys.argv[2], sys.argv[3:]
    report = {}
    for platform in platforms:
        for kind in EMAS:
            config = make_config(os.path.join(root, f"{platform}-{kind}"), platform=platform, ema_kind=kind)
            runner = EmaRunner(config)
            report[platform, kind] = {"built": runner.built, "constructed": ema_state(runner.ema)}
    rank = int(os.environ.get("RANK", "0"))
    torch.save(report, os.path.join(output, f"ema-rank{rank}.pt"))


if __name__ == "__main__":
    main()
