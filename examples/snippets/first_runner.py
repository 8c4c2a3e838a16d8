"""A first custom runner: a linear classifier on generated data.

Run it with:

    python examples/snippets/first_runner.py
    python examples/snippets/first_runner.py --lr 0.05 --epoch_end 8
"""

from __future__ import annotations

import tempfile

import torch
from torch import nn, optim
from torch.utils.data import TensorDataset

import danling as dl


def blobs(samples: int, seed: int) -> TensorDataset:
    """Four separable classes in 16 dimensions: each sample is its class centre plus noise."""
    centres = torch.randn(4, 16, generator=torch.Generator().manual_seed(0)) * 3
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(4, (samples,), generator=generator)
    return TensorDataset(centres[labels] + torch.randn(samples, 16, generator=generator), labels)


# --8<-- [start:runner]
class MyRunner(dl.TorchRunner):
    def __init__(self, config):
        super().__init__(config)  # the seed is set here, before the model is built
        self.model = nn.Linear(16, 4)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = optim.SGD(self.model.parameters(), lr=self.config.lr)
        self.datasets.train = blobs(256, seed=1)  # any torch Dataset
        self.datasets.val = blobs(128, seed=2)
        self.metrics = dl.metrics.multiclass_metrics(num_classes=4)


# --8<-- [end:runner]


def main() -> MyRunner:
    # --8<-- [start:main]
    config = dl.Config(lr=0.1, epoch_end=5, seed=0, score_split="val", score_name="acc")
    config.project_root = tempfile.mkdtemp()  # where the run directory goes; "experiments" by default
    config.dataloader.batch_size = 32
    config.parse()  # command-line overrides: --lr 0.05 --epoch_end 8
    runner = MyRunner(config)
    runner.train()
    print(f"best val acc {runner.best_score:.4f} at epoch {runner.best_index}")
    print(f"run directory: {runner.dir}")
    # --8<-- [end:main]
    return runner


if __name__ == "__main__":
    main()
