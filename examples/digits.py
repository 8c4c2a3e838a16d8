"""Train a small network on scikit-learn's handwritten digits: the main example of DanLing.

The digits data set (1,797 images of 8x8 pixels, 10 classes) ships with scikit-learn, so this runs offline.

    python examples/digits.py                      # defaults below
    python examples/digits.py --epoch_end 5 --optim.lr 0.003
    torchrun --nproc_per_node 2 examples/digits.py # the same script, two processes
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl


class DigitsConfig(dl.Config):
    """Everything about the run; each field can be overridden on the command line."""

    experiment_name: str = "digits"
    epoch_end: int = 20
    seed: int = 1016
    score_split: str = "val"
    score_name: str = "acc"
    tensorboard: bool = True
    hidden: int = 128
    """Width of the hidden layer."""
    dropout: float = 0.1
    """Dropout before the classifier."""
    val_fraction: float = 0.2
    """Fraction of the data held out for validation."""
    warmup_fraction: float = 0.05
    """Fraction of the optimizer steps spent warming the learning rate up."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Plain mappings: nested sections must not receive the runner's top-level defaults.
        if "optim" not in self:
            self.optim = {"type": "adamw", "lr": 3e-3, "weight_decay": 1e-4}
        if "dataloader" not in self:
            self.dataloader = {"batch_size": 32}


def digits_datasets(val_fraction: float, seed: int) -> tuple[TensorDataset, TensorDataset]:
    """Train and validation splits of the digits, pixels scaled to [0, 1]; the split is fixed by `seed`."""
    images, labels = load_digits(return_X_y=True)
    inputs = torch.tensor(images, dtype=torch.float32) / 16.0
    targets = torch.tensor(labels, dtype=torch.long)
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))
    held_out = int(len(order) * val_fraction)
    val, train = order[:held_out], order[held_out:]
    return TensorDataset(inputs[train], targets[train]), TensorDataset(inputs[val], targets[val])


class DigitsRunner(dl.Runner):
    """A two-layer perceptron with AdamW, warmup and cosine decay, and multiclass metrics."""

    def __init__(self, config: DigitsConfig) -> None:
        super().__init__(config)
        self.datasets.train, self.datasets.val = digits_datasets(self.config.val_fraction, self.config.seed)
        self.model = nn.Sequential(
            nn.Linear(64, self.config.hidden),
            nn.GELU(),
            nn.Dropout(self.config.dropout),
            nn.Linear(self.config.hidden, 10),
        )
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = dl.optim.OPTIMIZERS.build(self.model.parameters(), **self.config.optim)
        self.scheduler = dl.LRScheduler(
            self.optimizer,
            total_steps=self.total_steps,
            warmup_steps=self.config.warmup_fraction,
            strategy="cosine",
            # Linear from the initial to the final lr: the default for a final_lr_ratio, "percentile", falls
            # geometrically and leaves too few steps at a useful lr for a run this short.
            method="numerical",
        )
        self.metrics = dl.metrics.multiclass_metrics(num_classes=10)


def main(argv: list[str] | None = None) -> dl.TorchRunner:
    """Train with the defaults of `DigitsConfig`, overridden by `argv` (the command line when `None`)."""
    config = DigitsConfig()
    config.parse(argv)
    runner = DigitsRunner(config)
    runner.train()
    print(runner.results_table(["train.loss", "val.loss", "val.acc"]))
    print(f"best validation accuracy {runner.best_score:.4f} at epoch {runner.best_index}; run directory: {runner.dir}")
    return runner


if __name__ == "__main__":
    main()
