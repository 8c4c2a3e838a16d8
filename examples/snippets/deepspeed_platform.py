"""DeepSpeed: the same runner on a DeepSpeed engine (ZeRO stage 1), its checkpoints, and resuming from one.

Needs the extra: `pip install 'danling[deepspeed]'`. Run it with:

    python examples/snippets/deepspeed_platform.py
    torchrun --nproc_per_node 2 examples/snippets/deepspeed_platform.py

(Not `deepspeed.py`: a script's directory comes first on `sys.path`, and would hide the `deepspeed` package.)
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
class RegressionRunner(dl.Runner):  # config.platform picks the backend: "torch" (DDP), "fsdp", "deepspeed", ...
    def __init__(self, config):
        super().__init__(config)
        self.datasets.train = regression(128, seed=0)
        self.datasets.val = regression(32, seed=1)
        self.model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
        self.criterion = nn.MSELoss()
        # Your optimizer and scheduler, as for DDP: DeepSpeed wraps the optimizer, the loop steps the scheduler.
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.01)
        self.scheduler = dl.LRScheduler(self.optimizer, total_steps=self.total_steps, warmup_steps=0.1)


# --8<-- [end:runner]


def main() -> None:
    # --8<-- [start:main]
    config = dl.Config(platform="deepspeed", epoch_end=3, accum_steps=2, max_grad_norm=1.0, seed=0, log=False)
    config.project_root = os.path.join(tempfile.gettempdir(), "danling-deepspeed")  # the same on every process
    config.dataloader.batch_size = 16
    config.deepspeed.zero_optimization.stage = 1  # anything DeepSpeed reads, passed through as it is
    runner = RegressionRunner(config)
    built = runner.deepspeed_config()  # ours mapped onto DeepSpeed's names, with config.deepspeed
    print(f"deepspeed: micro-batch {built['train_micro_batch_size_per_gpu']}, ", end="")
    print(f"accumulation {built['gradient_accumulation_steps']}, clipping {built['gradient_clipping']}")
    runner.train()
    engine = runner.model  # the DeepSpeed engine; runner.unwrap(runner.model) is your nn.Sequential
    print(f"optimizer steps {runner.config.steps}, engine steps {engine.global_steps}")

    # Checkpoints are directories written through the engine; latest.ds points at the newest complete one.
    latest = os.path.join(runner.checkpoint_dir, "latest.ds")
    resumed = type(runner).from_checkpoint(latest)
    weights, again = runner.unwrap(runner.model).state_dict(), resumed.unwrap(resumed.model).state_dict()
    same = all(torch.equal(weights[key], again[key]) for key in weights)
    print(f"resumed: epoch_begin {resumed.config.epoch_begin}, same weights {same}")
    # --8<-- [end:main]


if __name__ == "__main__":
    main()
