"""Regress diabetes progression from ten clinical measurements: DanLing's regression example.

The diabetes data set (442 patients, 10 features, a continuous target: disease progression one year after baseline)
ships with scikit-learn, so this runs offline. Features and target are standardised with the training split's mean
and standard deviation; a small perceptron is trained with mean squared error and scored by R² on the validation
split. With the defaults below it takes a few seconds on a CPU and reaches a validation R² of about 0.58 (a linear
least-squares fit reaches 0.54 on this split; the data set is small and noisy, and a test checks R² >= 0.5).

    python examples/regression.py                              # defaults below
    python examples/regression.py --epoch_end 10 --optim.lr 0.01 --hidden 64
    python examples/regression.py --score_name rmse            # rank epochs by RMSE instead (lower is better)
    python examples/regression.py --log false --tensorboard true
    torchrun --nproc_per_node 2 examples/regression.py         # the same script, two processes
    torchrun --nproc_per_node 2 examples/regression.py -- --log false

Under `torchrun`, put `--` before options it could take for an abbreviation of its own (`--log` would match its
`--log-dir`).

`rmse` in the results is in units of the target's standard deviation; the last line also gives it in the data
set's own units.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from sklearn.datasets import load_diabetes
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl


class DiabetesConfig(dl.Config):
    """Everything about the run; each field can be overridden on the command line."""

    experiment_name: str = "diabetes"
    epoch_end: int = 30
    seed: int = 1016
    score_split: str = "val"
    score_name: str = "r2"
    hidden: int = 32
    """Width of the hidden layer."""
    dropout: float = 0.1
    """Dropout before the output layer."""
    val_fraction: float = 0.2
    """Fraction of the data held out for validation."""
    warmup_fraction: float = 0.05
    """Fraction of the optimizer steps spent warming the learning rate up."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Plain mappings: nested sections must not receive the runner's top-level defaults.
        if "optim" not in self:
            self.optim = {"type": "adamw", "lr": 3e-3, "weight_decay": 1e-2}
        if "dataloader" not in self:
            self.dataloader = {"batch_size": 32}


class Standardised(TensorDataset):
    """Standardised features and target, with the target's mean and standard deviation to undo the scaling."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, target_mean: float, target_std: float) -> None:
        super().__init__(inputs, targets)
        self.target_mean = target_mean
        self.target_std = target_std


def diabetes_datasets(val_fraction: float, seed: int) -> tuple[Standardised, Standardised]:
    """Train and validation splits, standardised with the training split's statistics; the split is fixed by `seed`.

    Targets have shape `(N, 1)`, matching the model's output, as `nn.MSELoss` needs.
    """
    features, progression = load_diabetes(return_X_y=True)
    inputs = torch.tensor(features, dtype=torch.float32)
    targets = torch.tensor(progression, dtype=torch.float32).unsqueeze(1)
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))
    held_out = int(len(order) * val_fraction)
    val, train = order[:held_out], order[held_out:]
    # Statistics of the training split only: the validation split must not leak into the preprocessing.
    input_mean, input_std = inputs[train].mean(0), inputs[train].std(0)
    target_mean, target_std = targets[train].mean().item(), targets[train].std().item()
    inputs = (inputs - input_mean) / input_std
    targets = (targets - target_mean) / target_std
    return (
        Standardised(inputs[train], targets[train], target_mean, target_std),
        Standardised(inputs[val], targets[val], target_mean, target_std),
    )


class DiabetesRunner(dl.Runner):
    """A two-layer perceptron with AdamW, warmup and cosine decay, mean squared error and regression metrics."""

    def __init__(self, config: DiabetesConfig) -> None:
        super().__init__(config)
        self.datasets.train, self.datasets.val = diabetes_datasets(self.config.val_fraction, self.config.seed)
        num_features = self.datasets.train.tensors[0].shape[1]
        self.model = nn.Sequential(
            nn.Linear(num_features, self.config.hidden),
            nn.GELU(),
            nn.Dropout(self.config.dropout),
            nn.Linear(self.config.hidden, 1),
        )
        self.criterion = nn.MSELoss()
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
        # pearson, spearman, r2 and rmse
        self.metrics = dl.metrics.regression_metrics(num_outputs=1)


def main(argv: Sequence[str] | None = None) -> DiabetesRunner:
    """Train with the defaults, overridden by `argv` (the command line when `None`); return the runner."""
    config = DiabetesConfig()
    config.parse(argv)
    runner = DiabetesRunner(config)
    runner.train()
    print(runner.results_table(["train.loss", "val.loss", "val.r2", "val.rmse", "val.pearson"]))
    best = runner.results[runner.best_index]["val"]
    target_std = runner.datasets.val.target_std
    print(
        f"best validation {config.score_name} {runner.best_score:.4f} at epoch {runner.best_index} "
        f"(r2 {best['r2']:.4f}, rmse {best['rmse'] * target_std:.1f} in the target's units); "
        f"run directory: {runner.dir}"
    )
    return runner


if __name__ == "__main__":
    main()
