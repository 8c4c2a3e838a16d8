"""One script for one process or many: run it with `python`, or with `torchrun --nproc_per_node 2`.

Run it with:

    python examples/snippets/distributed.py
    torchrun --nproc_per_node 2 examples/snippets/distributed.py
"""

from __future__ import annotations

import os
import tempfile

import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl


def regression(samples: int, seed: int) -> TensorDataset:
    inputs = torch.randn(samples, 4, generator=torch.Generator().manual_seed(seed))
    return TensorDataset(inputs, inputs @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]))


# --8<-- [start:runner]
class DistributedRunner(dl.TorchRunner):
    def __init__(self, config):
        super().__init__(config)  # joins the process group torchrun describes (gloo on CPU, nccl on GPUs)
        self.datasets.train = regression(96, seed=0)
        self.datasets.val = regression(25, seed=1)  # 25 samples: 13 on rank 0 and 12 on rank 1
        self.model = nn.Linear(4, 1)
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)


# --8<-- [end:runner]


def main() -> None:
    # --8<-- [start:main]
    # Every process builds the same config, with the same project_root: the main process writes the run's files
    # there, and every process must see them (a resume reads the checkpoint on every process).
    project_root = os.path.join(tempfile.gettempdir(), "danling-distributed")
    config = dl.Config(seed=0, epoch_end=3, log=False, project_root=project_root)
    config.dataloader.batch_size = 8
    runner = DistributedRunner(config)
    print(
        f"rank {runner.rank} of {runner.world_size}: {len(runner.dataloaders.train)} train batches, "
        f"{len(runner.datasamplers.val)} val samples",
        force=True,  # print on every process, not only the main one
    )
    runner.train()  # the model is wrapped in DistributedDataParallel when world_size > 1

    # Evaluation counts every sample once, whatever the number of processes, and every process gets the result.
    result = runner.evaluate(["val"])
    model = runner.unwrap(runner.model)
    inputs, targets = runner.datasets.val.tensors
    with torch.no_grad():
        expected = runner.criterion(model(inputs), targets).item()
    loss = result["val"]["loss"]
    print(f"rank {runner.rank}: val loss {loss:.6f}, over all 25 samples at once {expected:.6f}", force=True)
    # infer gathers the predictions of every process, in dataset order, on every process.
    predictions = runner.infer("val")
    match = torch.allclose(predictions, model(inputs))
    print(f"rank {runner.rank}: predictions: {tuple(predictions.shape)}, match the model: {match}", force=True)
    # --8<-- [end:main]


if __name__ == "__main__":
    main()
