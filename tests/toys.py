"""Tiny, deterministic runners and data shared by the tests and the multi-process scripts they launch."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import danling as dl


def regression_data(samples: int, features: int = 4, seed: int = 0) -> TensorDataset:
    """A noiseless linear problem: targets are a fixed linear map of the inputs."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, features, generator=generator)
    weight = torch.arange(1, features + 1, dtype=torch.float32).unsqueeze(1) / features
    return TensorDataset(x, x @ weight)


def classification_data(samples: int, features: int = 8, classes: int = 3, seed: int = 0) -> TensorDataset:
    """Separable classes: each sample is its class's centre plus noise."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, features, generator=generator) * 3
    labels = torch.randint(classes, (samples,), generator=generator)
    return TensorDataset(centres[labels] + torch.randn(samples, features, generator=generator), labels)


class IndexDataset(Dataset):
    """Sample `i` is `float(i)`, so a batch tells exactly which samples it holds."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        value = torch.tensor([float(index)])
        return value, value


class RegressionRunner(dl.TorchRunner):
    """Linear regression with SGD; `config.samples`, `config.val_samples` size the splits."""

    def __init__(self, config):
        super().__init__(config)
        self.model = nn.Linear(4, 1)
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=self.config.get("lr") or 0.05, momentum=self.config.get("momentum") or 0.0
        )
        self.datasets.train = regression_data(self.config.get("samples") or 64, seed=0)
        if self.config.get("val_samples"):
            self.datasets.val = regression_data(self.config.val_samples, seed=1)


class ClassificationRunner(dl.TorchRunner):
    """A small MLP on separable 3-class data, with multiclass metrics when `danling.metrics` provides them."""

    def __init__(self, config):
        super().__init__(config)
        self.model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.config.get("lr") or 0.1)
        self.datasets.train = classification_data(self.config.get("samples") or 96, seed=0)
        self.datasets.val = classification_data(self.config.get("val_samples") or 101, seed=1)
        if self.config.get("with_metrics"):
            self.metrics = dl.metrics.multiclass_metrics(num_classes=3)


def make_config(root, **kwargs) -> dl.Config:
    """A quiet config rooted at `root` (a tmp_path) with a batch size of 8."""
    config = dl.Config(project_root=str(root), log=False, seed=kwargs.pop("seed", 0), **kwargs)
    if "dataloader" not in kwargs:
        config.dataloader.batch_size = 8
    return config
