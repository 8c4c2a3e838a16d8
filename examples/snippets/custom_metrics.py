"""Custom metrics: add one to a factory's set, build a set from scratch, or average per-batch values.

Run it with:

    python examples/snippets/custom_metrics.py
"""

from __future__ import annotations

import tempfile

import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl


# --8<-- [start:function]
def top2_accuracy(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose class is among the two highest scores."""
    return (input.topk(2, dim=1).indices == target.unsqueeze(1)).any(dim=1).float().mean()


# --8<-- [end:function]


def standalone() -> None:
    # --8<-- [start:factory]
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.1, 0.3]])
    target = torch.tensor([1, 1, 0, 2])
    # A factory's set, plus a metric (by keyword), minus one (given None).
    metrics = dl.metrics.multiclass_metrics(num_classes=3, top2=top2_accuracy, mcc=None)
    metrics.update(scores[:2], target[:2])  # batches are stored; metrics are computed on demand
    metrics.update(scores[2:], target[2:])
    print({name: round(value, 4) for name, value in metrics.average().items()})
    # --8<-- [end:factory]

    # --8<-- [start:scratch]
    # A set from scratch: any function (input, target) -> number, computed over every prediction of the epoch.
    errors = dl.Metrics(mae=lambda input, target: (input - target).abs().mean())
    errors.update(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 2.0]))
    errors.update(torch.tensor([3.0]), torch.tensor([2.0]))
    print(f"mae over every prediction: {errors.average()['mae']:.4f}")
    # Meters average per-batch values (weighted by batch size) and store nothing: for large evaluations.
    meters = dl.MetricMeters(mae=lambda input, target: (input - target).abs().mean())
    meters.update(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 2.0]))
    meters.update(torch.tensor([3.0]), torch.tensor([2.0]))
    print(f"mae averaged over batches: {meters.average()['mae']:.4f}")
    # --8<-- [end:scratch]


# --8<-- [start:runner]
class MetricRunner(dl.TorchRunner):
    def __init__(self, config):
        super().__init__(config)
        centres = torch.randn(3, 8, generator=torch.Generator().manual_seed(0)) * 2
        labels = torch.randint(3, (96,), generator=torch.Generator().manual_seed(1))
        inputs = centres[labels] + torch.randn(96, 8, generator=torch.Generator().manual_seed(2))
        self.datasets.train = TensorDataset(inputs[:64], labels[:64])
        self.datasets.val = TensorDataset(inputs[64:], labels[64:])
        self.model = nn.Linear(8, 3)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        # Used for every split; set train_metrics or evaluate_metrics to use other ones there.
        self.metrics = dl.metrics.multiclass_metrics(num_classes=3, top2=top2_accuracy)
        self.train_metrics = dl.Metrics(top2=top2_accuracy)  # cheaper while training


# --8<-- [end:runner]


def in_a_runner() -> None:
    # --8<-- [start:train]
    config = dl.Config(seed=0, epoch_end=3, score_name="top2", log=False, project_root=tempfile.mkdtemp())
    config.dataloader.batch_size = 16
    runner = MetricRunner(config)
    runner.train()
    print(f"train metrics: {sorted(runner.latest_result['train'])}")
    print(f"val metrics: {sorted(runner.latest_result['val'])}")
    print(f"best {runner.config.score_name} ({runner.best_fn.__name__}): {runner.best_score:.4f}")
    # --8<-- [end:train]


if __name__ == "__main__":
    standalone()
    in_a_runner()
