"""Tiny, deterministic runners and data shared by the tests and the multi-process scripts they launch."""

from __future__ import annotations

import time

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
    # The class centres are the same for every split; `seed` only draws the samples.
    centres = torch.randn(classes, features, generator=torch.Generator().manual_seed(1234)) * 3
    generator = torch.Generator().manual_seed(seed)
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


class ResumableRunner(dl.Runner):
    """Everything resume must restore: dropout (RNG), momentum, a warmup-cosine schedule, EMA, metrics, shuffling.

    `config.fail_at_iter` raises `Interrupted` right after that micro-batch, as a crash would; `config.dropout`
    (default 0.2) sets the dropout; `config.platform` picks the backend (`Runner`).
    """

    def __init__(self, config):
        super().__init__(config)
        dropout = self.config.get("dropout")
        self.model = nn.Sequential(
            nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2 if dropout is None else dropout), nn.Linear(16, 3)
        )
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.datasets.train = classification_data(self.config.get("samples") or 60, seed=0)
        self.datasets.val = classification_data(self.config.get("val_samples") or 25, seed=1)
        self.scheduler = dl.LRScheduler(self.optimizer, total_steps=self.total_steps, warmup_steps=0.2)
        self.ema = torch.optim.swa_utils.AveragedModel(
            self.model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9)
        )
        self.metrics = dl.metrics.multiclass_metrics(num_classes=3)

    def train_step(self, batch):
        loss = super().train_step(batch)
        if self.config.get("fail_at_iter") is not None and self.config.iters == self.config.fail_at_iter:
            raise Interrupted(f"interrupted after micro-batch {self.config.iters}")
        return loss


class SlowRunner(ResumableRunner):
    """`ResumableRunner` that prints each micro-batch and sleeps `delay` seconds after it, so a test can signal it."""

    delay = 0.05

    def train_step(self, batch):
        loss = super().train_step(batch)
        print(f"iter {self.config.iters}", flush=True)
        time.sleep(self.delay)
        return loss


class Interrupted(RuntimeError):
    """Stands for a crash in the middle of training."""


def final_state(runner: dl.TorchRunner) -> dict:
    """What two equivalent runs must agree on, bit for bit."""
    return {
        "model": {k: v.clone() for k, v in runner.unwrap(runner.model).state_dict().items()},
        "ema": {k: v.clone() for k, v in runner.ema.state_dict().items()} if runner.ema is not None else None,
        "optimizer": runner.optimizer.state_dict(),
        "scheduler": runner.scheduler.state_dict() if runner.scheduler is not None else None,
        "results": {index: result.dict() for index, result in runner.results.items()},
        "best_index": runner.best_index,
        "counters": (runner.config.iters, runner.config.steps, runner.config.epochs),
    }


def assert_bitwise_equal(a, b, path="state"):
    """Recursive equality where tensors must match exactly (and NaN equals NaN)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"
        for key in a:
            assert_bitwise_equal(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for index, (x, y) in enumerate(zip(a, b)):
            assert_bitwise_equal(x, y, f"{path}[{index}]")
    elif isinstance(a, float) and a != a:
        assert isinstance(b, float) and b != b, path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


class UpdateEma:
    """An EMA of the `update(model)` kind (timm's `ModelEmaV2` style): not a module, its copy in `.module`."""

    def __init__(self, model: nn.Module, decay: float = 0.9) -> None:
        import copy

        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for average, value in zip(self.module.state_dict().values(), model.state_dict().values()):
            if average.is_floating_point():
                average.lerp_(value.to(average.dtype), 1 - self.decay)
            else:
                average.copy_(value)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)


def peak_cpu_bytes(function) -> int:
    """The most CPU memory held at once by what `function()` allocates (net of what it frees), by the profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        function()
    live = peak = 0
    # An operator's own allocations are on its event; frees are events of their own, named "[memory]".
    for event in sorted(profiler.events(), key=lambda event: event.time_range.start):
        live += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak
