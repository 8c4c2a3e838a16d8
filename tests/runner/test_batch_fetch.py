"""In-memory datasets fetched a batch at a time: the same batches and the same training as one sample at a time."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from torch.utils.data import StackDataset, TensorDataset
from toys import (
    IndexDataset,
    Interrupted,
    RegressionRunner,
    ResumableRunner,
    assert_bitwise_equal,
    final_state,
    make_config,
)

from danling.runner.batching import BatchFetch, RunnerLoader, TensorMapping
from danling.runner.training import TrainingLoop

generator = torch.Generator().manual_seed(0)
X = torch.randn(23, 3, generator=generator)
Y = torch.randint(4, (23,), generator=generator)
DATASETS = {
    "tensor_dataset": lambda: TensorDataset(X, Y),
    "stack_tuple": lambda: StackDataset(TensorDataset(X), Y),
    "stack_dict": lambda: StackDataset(input=X, target=TensorDataset(Y, X[:, 0])),
    "tensor_mapping": lambda: {"input": X, "target": Y},
    "numpy_mapping": lambda: {"input": X.numpy(), "target": Y.numpy().astype(np.int32), "flag": Y.numpy() > 1},
}


class DataRunner(RegressionRunner):
    """`RegressionRunner` whose `train` and `val` splits are `config.data` of `DATASETS`."""

    def __init__(self, config):
        super().__init__(config)
        self.datasets.train = DATASETS[self.config.data]()
        self.datasets.val = DATASETS[self.config.data]()


def first_leaf(batch):
    while isinstance(batch, (list, dict)):
        batch = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return batch


def batches(tmp_path, fetch_batches: bool, split: str = "train", epochs: int = 2, **dataloader) -> list:
    config = make_config(tmp_path / str(fetch_batches), fetch_batches=fetch_batches, **dataloader.pop("config", {}))
    config.dataloader.update({"batch_size": 5, **dataloader})
    runner = DataRunner(config)
    loader, sampler = runner.dataloaders[split], runner.datasamplers[split]
    passes = []
    for epoch in range(epochs):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        passes.append(list(loader))
    return passes


@pytest.mark.parametrize("data", list(DATASETS))
@pytest.mark.parametrize("split", ["train", "val"])
def test_batched_loader_yields_the_per_sample_loaders_batches(tmp_path, data, split):
    per_sample = batches(tmp_path, False, split, config={"data": data})
    batched = batches(tmp_path, True, split, config={"data": data})
    assert len(batched[0]) == 5
    assert_bitwise_equal(batched, per_sample)
    if split == "train":
        # Shuffled: the first batch is not the first five samples.
        assert not torch.equal(torch.as_tensor(first_leaf(batched[0][0])), X[:5])


def test_drop_last_drops_the_same_short_batch(tmp_path):
    per_sample = batches(tmp_path, False, drop_last=True, config={"data": "tensor_dataset"})
    batched = batches(tmp_path, True, drop_last=True, config={"data": "tensor_dataset"})
    assert [len(batch[1]) for batch in batched[0]] == [5, 5, 5, 5]
    assert_bitwise_equal(batched, per_sample)


def test_a_loader_without_batch_size_yields_the_same_samples(tmp_path):
    per_sample = batches(tmp_path, False, "val", epochs=1, batch_size=None, config={"data": "numpy_mapping"})
    batched = batches(tmp_path, True, "val", epochs=1, batch_size=None, config={"data": "numpy_mapping"})
    assert len(batched[0]) == 23 and isinstance(batched[0][0]["input"], torch.Tensor)
    assert_bitwise_equal(batched, per_sample)


def test_batches_are_fetched_without_a_getitem_per_sample(tmp_path):
    config = make_config(tmp_path, data="tensor_dataset")
    runner = DataRunner(config)
    loader = runner.dataloaders.train
    assert isinstance(loader.dataset, BatchFetch) and loader.dataset.dataset is runner.datasets.train
    with mock.patch.object(TensorDataset, "__getitem__", side_effect=AssertionError("fetched one sample")):
        assert len(list(loader)) == 3


def test_user_collate_fn_gets_the_samples_it_would_get(tmp_path):
    received = {}

    def collate(samples):
        received.setdefault("calls", []).append(samples)
        return torch.stack([sample["target"][1] for sample in samples])

    per_sample = batches(tmp_path, False, config={"data": "stack_dict"}, collate_fn=collate)
    samples_per_sample = received.pop("calls")
    batched = batches(tmp_path, True, config={"data": "stack_dict"}, collate_fn=collate)
    assert_bitwise_equal(batched, per_sample)
    assert_bitwise_equal(received["calls"], samples_per_sample)
    assert type(received["calls"][0][0]["target"]) is tuple


def test_dataset_that_cannot_batch_is_untouched(tmp_path):
    class Transformed(TensorDataset):
        def __getitem__(self, index):
            x, y = super().__getitem__(index)
            return x * 2, y

    config = make_config(tmp_path)
    runner = RegressionRunner(config)
    runner.datasets.other = IndexDataset(7)
    runner.datasets.transformed = Transformed(X, Y)
    runner.build_dataloaders()
    assert runner.dataloaders.other.dataset is runner.datasets.other
    assert runner.dataloaders.transformed.dataset is runner.datasets.transformed
    assert torch.equal(next(iter(runner.dataloaders.transformed))[0], X[:8] * 2)


def test_dataset_with_getitems_is_called_once_per_batch(tmp_path):
    class Batched(IndexDataset):
        calls: list = []

        def __getitems__(self, indices):
            self.calls.append(list(indices))
            return [self[index] for index in indices]

    config = make_config(tmp_path)
    config.dataloader.val = {"batch_size": 3}
    runner = RegressionRunner(config)
    runner.datasets.val = Batched(7)
    runner.build_dataloaders()
    values = [batch[0].flatten().tolist() for batch in runner.dataloaders.val]
    assert Batched.calls == [[0, 1, 2], [3, 4, 5], [6]]
    assert values == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0]]


def test_workers_give_the_same_batches(tmp_path):
    per_sample = batches(tmp_path, False, epochs=1, num_workers=2, config={"data": "tensor_mapping"})
    batched = batches(tmp_path, True, epochs=1, num_workers=2, config={"data": "tensor_mapping"})
    assert_bitwise_equal(batched, per_sample)
    assert_bitwise_equal(batched, batches(tmp_path / "main", True, epochs=1, config={"data": "tensor_mapping"}))


def test_a_pass_skipped_to_its_end_yields_no_batch(tmp_path):
    runner = DataRunner(make_config(tmp_path, data="tensor_dataset"))
    runner.datasamplers.train.skip(len(runner.datasets.train))
    assert list(runner.dataloaders.train) == []


def test_runner_loader_keeps_the_generators_course(tmp_path):
    """The loader's generator (its workers' seeds) moves as a DataLoader's does, pass after pass."""
    dataset = TensorDataset(X, Y)
    runner_loader = RunnerLoader(dataset, batch_size=4, generator=torch.Generator().manual_seed(3))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, generator=torch.Generator().manual_seed(3))
    for _ in range(2):
        assert_bitwise_equal(list(runner_loader), list(loader))
        assert torch.equal(runner_loader.generator.get_state(), loader.generator.get_state())


def test_mapping_dataset_trains_and_counts_rows(tmp_path):
    config = make_config(tmp_path, data="tensor_mapping", epoch_end=1)
    runner = DataRunner(config)
    assert runner.iters_per_epoch == len(runner.dataloaders.train) == 3
    assert isinstance(runner.dataloaders.train.dataset.dataset, TensorMapping)


def test_mapping_dataset_of_unequal_lengths_is_refused(tmp_path):
    runner = RegressionRunner(make_config(tmp_path))
    runner.datasets.bad = {"input": X, "target": Y[:5]}
    with pytest.raises(ValueError, match=r"one length; they have \{'input': 23, 'target': 5\}"):
        runner.build_dataloaders()


def test_training_is_bit_identical_with_batches_and_samples(tmp_path):
    states = []
    for fetch_batches in (False, True):
        runner = ResumableRunner(make_config(tmp_path / str(fetch_batches), epoch_end=2, fetch_batches=fetch_batches))
        assert isinstance(runner.dataloaders.train.dataset, BatchFetch) is fetch_batches
        runner.train()
        states.append(final_state(runner))
    assert_bitwise_equal(states[1], states[0])


@pytest.mark.parametrize(("before", "after"), [(True, True), (True, False), (False, True)])
def test_resume_mid_epoch_matches_a_straight_per_sample_run_whichever_way_each_part_fetches(tmp_path, before, after):
    # Batches or samples train the same weights, so the switch is not part of the run's id: `--resume true` finds the
    # interrupted run with it kept or flipped, continues it in its own directory, and matches a straight run.
    settings = {"epoch_end": 2, "checkpoint_interval": 1}
    straight = ResumableRunner(make_config(tmp_path / "straight", fetch_batches=False, **settings))
    straight.train()
    interrupted = ResumableRunner(make_config(tmp_path / "run", fail_at_iter=10, fetch_batches=before, **settings))
    with pytest.raises(Interrupted):
        interrupted.train()
    config = make_config(tmp_path / "run", fail_at_iter=10, fetch_batches=after, resume=True, **settings)
    resumed = ResumableRunner(config)
    assert resumed.config.checkpoint == os.path.join(interrupted.checkpoint_dir, "latest.pth")
    assert resumed.dir == interrupted.dir
    assert resumed.config.epochs == 1
    resumed.config.fail_at_iter = None
    resumed.train()
    assert isinstance(resumed.dataloaders.train.dataset, BatchFetch) is after
    assert_bitwise_equal(final_state(resumed), final_state(straight))


def test_two_processes_resumed_with_batches_train_as_per_sample(tmp_path, distributed_runner):
    script = Path(__file__).parent / "dist_scripts" / "batch_fetch_two_processes.py"
    distributed_runner(script, str(tmp_path))
    for rank in (0, 1):
        per_sample = torch.load(tmp_path / f"rank{rank}-per_sample.pt", weights_only=False)
        resumed = torch.load(tmp_path / f"rank{rank}-resumed.pt", weights_only=False)
        assert_bitwise_equal(resumed, per_sample)


class PlainRunner(RegressionRunner):
    """`RegressionRunner` with a scheduler and metrics: plain steps, yet every part a step touches is there."""

    def __init__(self, config):
        super().__init__(config)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=3, gamma=0.5)


class FullRunner(PlainRunner):
    def plain_steps(self) -> bool:
        return False


def test_plain_steps_train_bit_identically_to_full_steps(tmp_path):
    settings = {"epoch_end": 2, "samples": 50, "val_samples": 20, "momentum": 0.9}
    plain = PlainRunner(make_config(tmp_path / "plain", **settings))
    assert plain.plain_steps()
    full = FullRunner(make_config(tmp_path / "full", **settings))
    full.train()
    # Patched where TorchRunner finds it, so the plain path still stands for it: a plain pass never calls it.
    with mock.patch.object(TrainingLoop, "train_step", side_effect=AssertionError("took the full step")):
        plain.train()
    assert_bitwise_equal(final_state(plain), final_state(full))
    assert plain.config.steps == full.config.steps == 14


@pytest.mark.parametrize(
    "setting",
    [{"accum_steps": 2}, {"max_grad_norm": 1.0}, {"max_grad_value": 1.0}, {"precision": "bf16"}],
)
def test_steps_that_need_more_are_not_plain(tmp_path, setting):
    assert PlainRunner(make_config(tmp_path / "plain")).plain_steps()
    assert not PlainRunner(make_config(tmp_path, **setting)).plain_steps()


def test_an_overridden_step_part_or_an_ema_is_never_skipped(tmp_path):
    class Clipping(PlainRunner):
        def clip_gradients(self):
            self.clipped = True

    runner = Clipping(make_config(tmp_path, epoch_end=1))
    assert not runner.plain_steps()
    runner.train()
    assert runner.clipped
    assert not ResumableRunner(make_config(tmp_path / "ema", epoch_end=1)).plain_steps()
