"""In-memory data fetched a batch at a time: a mapping of tensors as a dataset, and the same training either way.

Run it with:

    python examples/snippets/batch_fetching.py
"""

from __future__ import annotations

import tempfile

import torch
from torch import nn

import danling as dl


class MappingRunner(dl.TorchRunner):
    def __init__(self, config):
        super().__init__(config)
        features = torch.randn(100, 4, generator=torch.Generator().manual_seed(0))
        labels = (features.sum(1) > 0).long()
        # --8<-- [start:mapping]
        # A mapping of equal-length tensors (or NumPy arrays) is a dataset: sample i is {key: value[i]}, and a
        # batch is {"input": ..., "target": ...}, which the runner unpacks by those names.
        self.datasets.train = {"input": features, "target": labels}
        # --8<-- [end:mapping]
        self.model = nn.Linear(4, 2)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)


def train(fetch_batches: bool) -> MappingRunner:
    config = dl.Config(seed=0, log=False, epoch_end=2, fetch_batches=fetch_batches, project_root=tempfile.mkdtemp())
    config.dataloader.batch_size = 16
    runner = MappingRunner(config)
    runner.train()
    return runner


if __name__ == "__main__":
    # --8<-- [start:same]
    batched, per_sample = train(fetch_batches=True), train(fetch_batches=False)
    batch = next(iter(batched.dataloaders.train))
    print(f"batch: {sorted(batch)}, input {tuple(batch['input'].shape)}, target {tuple(batch['target'].shape)}")
    same = all(torch.equal(a, b) for a, b in zip(batched.model.parameters(), per_sample.model.parameters()))
    print(f"same weights fetching batches and samples: {same}")
    # --8<-- [end:same]
