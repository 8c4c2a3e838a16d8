"""What happens when a runner is constructed: `__init__` (yours and the base's), then `__post_init__`.

Run it with:

    python examples/snippets/lifecycle.py
"""

from __future__ import annotations

import tempfile

import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl


# --8<-- [start:runner]
class TracedRunner(dl.TorchRunner):
    def __init__(self, config):
        super().__init__(config)
        # BaseRunner.__init__ has run: the config is validated, the seed is set and the run has its id.
        print(f"__init__: seed {self.config.seed}, id {self.id}, dataloaders {list(self.dataloaders)}")
        self.model = nn.Linear(4, 1)
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.datasets.train = TensorDataset(torch.randn(16, 4), torch.randn(16, 1))

    def __post_init__(self):
        # Called by RunnerMeta once the whole __init__ chain has returned.
        super().__post_init__()  # logging, dataloaders, device, checkpoint restore, DDP wrapping
        print(f"__post_init__: dataloaders {list(self.dataloaders)}, device {self.device}")


# --8<-- [end:runner]


def main() -> None:
    config = dl.Config(seed=7, log=False, project_root=tempfile.mkdtemp())
    config.dataloader.batch_size = 4
    # --8<-- [start:construct]
    runner = TracedRunner(config)
    print(f"batches per epoch: {len(runner.dataloaders.train)}")
    # --8<-- [end:construct]


if __name__ == "__main__":
    main()
