"""Hugging Face Accelerate: the same runner, its model, optimizer and scheduler prepared by an `Accelerator`.

Needs `pip install 'danling[accelerate]'` (and is not named `accelerate.py`, which would shadow the package). Run:

    python examples/snippets/accelerate_platform.py
    torchrun --nproc_per_node 2 examples/snippets/accelerate_platform.py
"""

from __future__ import annotations

import os
import tempfile

import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl


def regression(samples: int, seed: int) -> TensorDataset:
    inputs = torch.randn(samples, 8, generator=torch.Generator().manual_seed(seed))
    return TensorDataset(inputs, inputs.sum(1, keepdim=True))


# --8<-- [start:runner]
class AcceleratedRunner(dl.Runner):  # config.platform picks the backend: "torch" (DDP), "fsdp" or "accelerate"
    def __init__(self, config):
        super().__init__(config)
        self.datasets.train = regression(128, seed=0)
        self.datasets.val = regression(30, seed=1)
        self.model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.01)
        self.scheduler = dl.LRScheduler(self.optimizer, total_steps=self.total_steps, warmup_steps=0.1)


# --8<-- [end:runner]


def main() -> None:
    # --8<-- [start:main]
    config = dl.Config(
        platform="accelerate",
        accum_steps=2,  # Accelerator(gradient_accumulation_steps=2)
        precision=None,  # "bf16" would be Accelerator(mixed_precision="bf16")
        max_grad_norm=1.0,  # accelerator.clip_grad_norm_
        epoch_end=3,
        seed=0,
        log=False,
        project_root=os.path.join(tempfile.gettempdir(), "danling-accelerate"),  # the same on every process
    )
    config.dataloader.batch_size = 16
    runner = AcceleratedRunner(config)
    runner.train()

    accelerator = runner.accelerator
    print(
        f"accelerator: mixed_precision {accelerator.mixed_precision}, "
        f"gradient_accumulation_steps {accelerator.gradient_accumulation_steps}, processes {accelerator.num_processes}"
    )
    # The scheduler steps once per optimizer step, however many processes run.
    print(f"optimizer steps {runner.config.steps}, scheduler steps {runner.scheduler.state_dict()['last_epoch']}")

    # latest.accelerate points at a directory: Accelerate's save_state, plus runner.pth (config, results, RNG).
    latest = os.path.join(runner.checkpoint_dir, "latest.accelerate")
    print("checkpoint:", " ".join(sorted(os.listdir(runner.read_checkpoint_file(latest)["accelerate"]))))

    # Resume: the same config, pointed at the checkpoint.
    resumed = AcceleratedRunner(dl.Config({**config.dict(), "checkpoint": latest}))
    same = all(torch.equal(a, b) for a, b in zip(resumed.model.parameters(), runner.model.parameters()))
    print(f"resumed: epoch_begin {resumed.config.epoch_begin}, same weights {same}")
    # --8<-- [end:main]


if __name__ == "__main__":
    main()
