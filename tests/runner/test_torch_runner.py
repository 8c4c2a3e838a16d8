"""TorchRunner: loops, accumulation, precision, seeding, data order and results, against independent oracles."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from toys import ClassificationRunner, IndexDataset, RegressionRunner, make_config, regression_data

import danling as dl


class LinearOnIndex(dl.TorchRunner):
    """y = w * x on IndexDataset; the loss needs no model output beyond the prediction."""

    def __init__(self, config):
        super().__init__(config)
        self.model = nn.Linear(1, 1, bias=False)
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.config.get("lr", 0.0))
        self.datasets.train = IndexDataset(self.config.get("samples") or 10)
        if self.config.get("inf_samples"):
            self.datasets.inf = IndexDataset(self.config.inf_samples)


def test_accum_steps_2_steps_optimizer_every_other_iter(tmp_path):
    config = make_config(tmp_path, epoch_end=1, accum_steps=2, samples=40, dataloader={"batch_size": 4})
    runner = RegressionRunner(config)
    steps_seen = []
    original_step = runner.step
    runner.step = lambda: (steps_seen.append(runner.config.iters), original_step())
    runner.train(evaluate_splits=[])
    assert runner.config.iters == 10
    assert runner.config.steps == 5
    assert steps_seen == [2, 4, 6, 8, 10]


def test_accumulation_windows_close_at_epoch_end_with_their_own_length(tmp_path):
    # 5 micro-batches per epoch with accum_steps 2: windows of 2, 2 and 1 micro-batches, 3 steps per epoch.
    config = make_config(tmp_path, epoch_end=2, accum_steps=2, samples=20, dataloader={"batch_size": 4})
    runner = RegressionRunner(config)
    assert runner.total_steps == 6
    runner.train(evaluate_splits=[])
    assert (runner.config.iters, runner.config.steps) == (10, 6)
    plain = RegressionRunner(make_config(tmp_path / "plain", epoch_end=2, samples=20, dataloader={"batch_size": 8}))
    plain.train(evaluate_splits=[])
    for a, b in zip(runner.model.parameters(), plain.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_accumulation_matches_a_double_batch_without_accumulation(tmp_path):
    accumulated = RegressionRunner(
        make_config(tmp_path / "a", epoch_end=2, accum_steps=2, samples=40, dataloader={"batch_size": 4})
    )
    accumulated.train(evaluate_splits=[])
    plain = RegressionRunner(make_config(tmp_path / "b", epoch_end=2, samples=40, dataloader={"batch_size": 8}))
    plain.train(evaluate_splits=[])
    assert plain.config.steps == accumulated.config.steps == 10
    for a, b in zip(accumulated.model.parameters(), plain.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bf16_precision_runs_forward_in_bfloat16_on_cpu(tmp_path):
    runner = RegressionRunner(make_config(tmp_path, epoch_end=1, precision="bf16", samples=16))
    dtypes = []
    runner.model.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    runner.train(evaluate_splits=[])
    assert dtypes and set(dtypes) == {torch.bfloat16}


def test_unknown_precision_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="fp16, bf16"):
        RegressionRunner(make_config(tmp_path, precision="int3"))


def initial_weights(tmp_path, seed):
    return copy.deepcopy(RegressionRunner(make_config(tmp_path, seed=seed)).model.state_dict())


def test_different_seeds_give_different_weights_and_shuffles(tmp_path):
    one, two = initial_weights(tmp_path / "1", 1), initial_weights(tmp_path / "2", 2)
    assert not torch.equal(one["weight"], two["weight"])
    orders = [list(RegressionRunner(make_config(tmp_path / str(s), seed=s)).datasamplers.train) for s in (1, 2)]
    assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1])


def test_same_seed_gives_identical_trained_weights(tmp_path):
    trained = []
    for name in ("a", "b"):
        runner = RegressionRunner(make_config(tmp_path / name, seed=3, epoch_end=2, val_samples=16))
        runner.train()
        trained.append(runner.model.state_dict())
    for key in trained[0]:
        assert torch.equal(trained[0][key], trained[1][key])


def test_seed_zero_is_reproducible(tmp_path):
    assert torch.equal(initial_weights(tmp_path / "a", 0)["weight"], initial_weights(tmp_path / "b", 0)["weight"])
    torch.manual_seed(0)
    expected = nn.Linear(4, 1).weight.detach().clone()
    assert torch.equal(initial_weights(tmp_path / "c", 0)["weight"], expected)


def test_infer_returns_predictions_in_dataset_order(tmp_path):
    runner = LinearOnIndex(make_config(tmp_path, inf_samples=23, dataloader={"batch_size": 5}))
    with torch.no_grad():
        runner.model.weight.fill_(2.0)
    predictions = runner.infer("inf")
    torch.testing.assert_close(predictions, torch.arange(23, dtype=torch.float32).unsqueeze(1) * 2)


def test_evaluation_splits_are_never_shuffled(tmp_path):
    runner = ClassificationRunner(make_config(tmp_path))
    assert list(runner.dataloaders.val.sampler) == list(range(len(runner.datasets.val)))


def test_epoch_loss_is_sample_weighted_over_every_batch(tmp_path):
    # lr 0 keeps w fixed; batches of 4, 4, 2 samples; logging only at the first batch.
    config = make_config(tmp_path, epoch_end=1, samples=10, log_interval=100, dataloader={"batch_size": 4})
    runner = LinearOnIndex(config)
    with torch.no_grad():
        runner.model.weight.fill_(0.5)
    runner.train(evaluate_splits=[])
    x = torch.arange(10, dtype=torch.float64)
    expected = ((0.5 * x - x) ** 2).mean().item()
    assert runner.results[0]["train"]["loss"] == pytest.approx(expected, rel=1e-6)


def test_without_a_terminal_each_pass_writes_at_most_five_step_lines_to_run_log(tmp_path):
    # 320 training samples in 40 batches, 101 validation samples in 13; log_interval left unset.
    config = make_config(tmp_path, epoch_end=2, samples=320, val_samples=101)
    config.log = True
    runner = ClassificationRunner(config)
    runner.train()
    logged = Path(runner.log_path).read_text()
    steps = re.findall(r"(?:training|evaluating) on (\w+) \[(\d+)/(\d+)\]", logged)
    train = [("train", str(batch), "40") for batch in (1, 11, 21, 31, 40)]
    val = [("val", str(batch), "13") for batch in (1, 11, 13)]
    assert steps == (train + val) * 2


def test_a_run_of_many_epochs_logs_steps_less_often_so_its_log_stays_small(tmp_path):
    # 45 batches an epoch for 200 epochs (the digits example, run longer): 9000 micro-batches, so a step line every
    # 18 batches at most 500 times in the run, where 5 lines per pass alone would log every 11.
    runner = ClassificationRunner(make_config(tmp_path, epoch_end=200, samples=360))
    assert len(runner.dataloaders.train) == 45
    assert runner.config.log_interval == 18
    shorter = ClassificationRunner(make_config(tmp_path, epoch_end=2, samples=360))
    assert shorter.config.log_interval == 11


def test_train_records_every_split_each_epoch_and_loss_falls(tmp_path):
    runner = ClassificationRunner(make_config(tmp_path, epoch_end=4))
    results = runner.train()
    assert sorted(results.keys()) == [0, 1, 2, 3]
    assert all(set(results[epoch].keys()) == {"train", "val"} for epoch in results)
    assert results[3]["train"]["loss"] < results[0]["train"]["loss"] / 2
    assert os.path.isfile(os.path.join(runner.checkpoint_dir, "latest.pth"))


def test_best_checkpoint_holds_the_weights_of_the_best_epoch(tmp_path):
    runner = RegressionRunner(make_config(tmp_path, epoch_end=5, val_samples=16, score_name="loss", score_mode="max"))
    snapshots = {}
    original = runner.save_checkpoint

    def snapshot_then_save(*args, **kwargs):
        snapshots[runner.config.epochs] = copy.deepcopy(runner.model.state_dict())
        original(*args, **kwargs)

    runner.save_checkpoint = snapshot_then_save
    runner.train()
    best = runner.best_index  # score_mode=max on a falling loss: the first epoch is the best
    assert best == 0
    saved = torch.load(os.path.join(runner.checkpoint_dir, "best.pth"), weights_only=True)
    for key, value in snapshots[best].items():
        assert torch.equal(saved["model"][key], value)


def test_save_interval_keeps_epoch_snapshots(tmp_path):
    runner = RegressionRunner(make_config(tmp_path, epoch_end=4, save_interval=2))
    runner.train()
    assert sorted(f for f in os.listdir(runner.checkpoint_dir) if f.startswith("epoch")) == [
        "epoch-1.pth",
        "epoch-3.pth",
    ]


def test_save_checkpoints_off_writes_no_checkpoint(tmp_path):
    runner = RegressionRunner(make_config(tmp_path, epoch_end=2, save_checkpoints=False))
    runner.train()
    assert os.listdir(runner.checkpoint_dir) == []


def test_patience_stops_training_without_improvement(tmp_path):
    runner = RegressionRunner(make_config(tmp_path, epoch_end=10, val_samples=16, score_mode="max", patience=2))
    runner.train()
    assert sorted(runner.results.keys()) == [0, 1, 2]


def test_mapping_batches_pass_inputs_as_keyword_arguments(tmp_path):
    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 1)

        def forward(self, features):
            return self.linear(features)

    class MappingRunner(dl.TorchRunner):
        def __init__(self, config):
            super().__init__(config)
            self.model = Keyword()
            self.criterion = nn.MSELoss()
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)
            data = regression_data(32)
            self.datasets.train = [{"input": {"features": x}, "target": y} for x, y in data]

    runner = MappingRunner(make_config(tmp_path, epoch_end=3))
    results = runner.train(evaluate_splits=[])
    assert results[2]["train"]["loss"] < results[0]["train"]["loss"]


def test_per_split_dataloader_options_override_defaults(tmp_path):
    config = make_config(tmp_path, val_samples=20, dataloader={"batch_size": 8, "val": {"batch_size": 5}})
    runner = RegressionRunner(config)
    assert runner.dataloaders.train.batch_size == 8
    assert runner.dataloaders.val.batch_size == 5
    assert len(runner.dataloaders.val) == 4


def test_runner_without_model_or_datasets_constructs(tmp_path):
    runner = dl.TorchRunner(make_config(tmp_path))
    assert runner.model is None and not runner.dataloaders


def test_max_grad_norm_clips_the_update(tmp_path):
    runner = LinearOnIndex(
        make_config(tmp_path, samples=8, lr=1.0, max_grad_norm=0.5, epoch_end=1, dataloader={"batch_size": 8})
    )
    with torch.no_grad():
        runner.model.weight.fill_(0.0)
    runner.train(evaluate_splits=[])
    # One step of SGD with lr 1 moves the weight by the clipped gradient norm exactly.
    assert runner.model.weight.abs().item() == pytest.approx(0.5, rel=1e-5)


def test_ema_follows_every_optimizer_step_and_is_what_evaluation_scores(tmp_path):
    decay = 0.9

    class EMARunner(RegressionRunner):
        def __init__(self, config):
            super().__init__(config)
            self.ema = torch.optim.swa_utils.AveragedModel(
                self.model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay)
            )

    # 64 samples in batches of 8: 8 optimizer steps per epoch, then an evaluation of 16 samples.
    runner = EMARunner(make_config(tmp_path, epoch_end=2, samples=64, val_samples=16))
    weights_after_each_step = []
    runner.optimizer.register_step_post_hook(
        lambda optimizer, args, kwargs: weights_after_each_step.append(
            {name: value.detach().clone() for name, value in runner.model.named_parameters()}
        )
    )
    runner.train()
    assert len(weights_after_each_step) == 16

    # The oracle: the first update copies the weights; each later one moves the average 1 - decay of the way to them.
    def ema_after(steps):
        average = dict(weights_after_each_step[0])
        for weights in weights_after_each_step[1:steps]:
            average = {name: decay * average[name] + (1 - decay) * weights[name] for name in average}
        model = nn.Linear(4, 1)
        model.load_state_dict(average)
        return model

    def val_loss(model):
        inputs, targets = runner.datasets.val.tensors
        with torch.no_grad():
            return nn.functional.mse_loss(model(inputs), targets).item()

    assert runner.results[0]["val"]["loss"] == pytest.approx(val_loss(ema_after(8)), rel=1e-5)
    final = ema_after(16)
    assert runner.results[1]["val"]["loss"] == pytest.approx(val_loss(final), rel=1e-5)
    for name, value in final.named_parameters():
        torch.testing.assert_close(getattr(runner.ema.module, name), value, rtol=1e-5, atol=1e-6)
    # The EMA lags the model, so scoring the model instead would give another number.
    assert val_loss(runner.model) != pytest.approx(val_loss(final), rel=1e-2)
    assert runner.evaluation_model() in (runner.ema, runner.ema.module)


def test_tensorboard_writes_train_steps_and_epoch_results(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runner = RegressionRunner(make_config(tmp_path, epoch_end=2, val_samples=16, tensorboard=True, log_interval=2))
    runner.train()
    runner.writer.close()
    events = EventAccumulator(os.path.join(runner.dir, "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/epoch/loss", "val/epoch/loss"} <= tags
    assert [event.step for event in events.Scalars("val/epoch/loss")] == [0, 1]


def test_runner_dispatches_on_platform(tmp_path):
    assert isinstance(dl.Runner(make_config(tmp_path, platform="torch")), dl.TorchRunner)
    with pytest.raises(ValueError, match="expected one of: auto, torch"):
        dl.Runner(make_config(tmp_path, platform="tpu"))


@pytest.mark.parametrize("platform", ["fsdp", "accelerate", "deepspeed"])
def test_another_platform_on_a_torch_runner_subclass_is_an_error_naming_runner(tmp_path, platform):
    # It used to run DDP without a word; now it raises before any process group or package is set up.
    with pytest.raises(
        ValueError,
        match=rf"config.platform is '{platform}', but RegressionRunner subclasses "
        r"TorchRunner, which runs platform 'torch': subclass danling.Runner",
    ):
        RegressionRunner(make_config(tmp_path, platform=platform))
    assert not torch.distributed.is_initialized()
    with pytest.raises(ValueError, match="unknown platform 'tpu'; expected one of: auto, torch"):
        RegressionRunner(make_config(tmp_path, platform="tpu"))


def test_a_platform_runner_refuses_another_platform_and_torch_runners_take_auto_and_torch(tmp_path):
    from danling.runner.fsdp_runner import FSDPRunner

    class Sharded(FSDPRunner):
        pass

    with pytest.raises(ValueError, match="Sharded subclasses FSDPRunner, which runs platform 'fsdp'"):
        Sharded(make_config(tmp_path, platform="accelerate"))
    for platform in ("auto", "torch"):
        runner = RegressionRunner(make_config(tmp_path, platform=platform, epoch_end=1))
        assert type(runner) is RegressionRunner and runner.train()[0]["train"]["loss"] > 0


@pytest.mark.parametrize("platform", ["deepspeed", "accelerate"])
def test_a_platform_whose_package_is_missing_says_what_to_install(tmp_path, platform):
    # None in sys.modules is how Python itself marks a module as not importable.
    script = (
        "import sys, danling as dl\n"
        f"sys.modules[{platform!r}] = None\n"
        "try:\n"
        f"    dl.Runner({{'platform': {platform!r}, 'log': False, 'tensorboard': False}})\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert f"pip install 'danling[{platform}]'" in result.stdout, result.stdout + result.stderr


def test_runner_works_as_a_user_base_class(tmp_path):
    class Mine(dl.Runner):
        def __init__(self, config):
            super().__init__(config)
            self.model = nn.Linear(4, 1)
            self.criterion = nn.MSELoss()
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)
            self.datasets.train = regression_data(32)

    results = Mine(make_config(tmp_path, epoch_end=2)).train()
    assert len(results) == 2


def test_progress_bars_only_on_a_terminal_and_when_enabled(tmp_path, monkeypatch):
    import sys

    from tqdm.auto import tqdm

    runner = RegressionRunner(make_config(tmp_path))
    loader = runner.dataloaders.train
    assert runner._progress_bar(loader, "train") is loader  # pytest's captured stdout is not a terminal
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    bar = runner._progress_bar(loader, "train")
    assert isinstance(bar, tqdm)
    bar.close()
    runner.config.progress = False
    assert runner._progress_bar(loader, "train") is loader


class RandomDataset(torch.utils.data.Dataset):
    """Each sample is a draw from Python's, NumPy's and torch's global generators in the process that loads it."""

    def __len__(self):
        return 16

    def __getitem__(self, index):
        import random

        import numpy as np

        return torch.tensor([random.random(), float(np.random.rand()), float(torch.rand(()))]), torch.zeros(1)


class WorkerDrawsRunner(dl.TorchRunner):
    """Trains with lr 0 on RandomDataset; `config.width` sizes the model, so its initialisation draws more or less."""

    def __init__(self, config):
        super().__init__(config)
        width = self.config.get("width") or 4
        self.model = nn.Sequential(nn.Linear(3, width), nn.Linear(width, 1))
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.0)
        self.datasets.train = RandomDataset()


def worker_draws(root, seed, epoch_end=2, **kwargs) -> dict[int, torch.Tensor]:
    """The samples drawn in the workers, in the order trained on, by epoch."""
    config = make_config(root, seed=seed, epoch_end=epoch_end, dataloader={"batch_size": 2, "num_workers": 2}, **kwargs)
    runner = WorkerDrawsRunner(config)
    draws: dict[int, list[torch.Tensor]] = {}
    runner.model.register_forward_pre_hook(
        lambda module, args: draws.setdefault(runner.config.epochs, []).append(args[0].clone())
    )
    runner.train(evaluate_splits=[])
    return {epoch: torch.cat(batches) for epoch, batches in draws.items()}


def test_draws_in_dataloader_workers_follow_the_seed_alone(tmp_path):
    reference = worker_draws(tmp_path / "reference", seed=5)
    assert sorted(reference) == [0, 1] and reference[0].shape == (16, 3)
    for generator in range(3):  # random, numpy and torch: no draw repeats, across workers or epochs
        assert len(set(torch.cat([reference[0], reference[1]])[:, generator].tolist())) == 32
    # The same seed with a wider model, whose initialisation draws more from the main process's generators.
    wider = worker_draws(tmp_path / "wider", seed=5, width=64)
    for epoch in (0, 1):
        assert torch.equal(wider[epoch], reference[epoch])
    other = worker_draws(tmp_path / "other", seed=6)
    assert not torch.isin(other[0], reference[0]).any()


def test_draws_in_dataloader_workers_repeat_after_a_resume(tmp_path):
    uninterrupted = worker_draws(tmp_path / "uninterrupted", seed=5)
    first = worker_draws(tmp_path / "resumed", seed=5, epoch_end=1)
    checkpoint = next((tmp_path / "resumed").rglob("latest.pth"))
    resumed = worker_draws(tmp_path / "resumed", seed=5, checkpoint=str(checkpoint))
    assert sorted(resumed) == [1]
    assert torch.equal(first[0], uninterrupted[0])
    assert torch.equal(resumed[1], uninterrupted[1])


def test_train_without_an_optimizer_says_what_to_assign(tmp_path):
    class NoOptimizer(dl.TorchRunner):
        def __init__(self, config):
            super().__init__(config)
            self.model = nn.Linear(4, 1)
            self.criterion = nn.MSELoss()
            self.datasets.train = regression_data(16)

    with pytest.raises(ValueError, match="optimizer"):
        NoOptimizer(make_config(tmp_path, epoch_end=1)).train()


def test_evaluate_without_a_model_says_what_to_assign(tmp_path):
    runner = dl.TorchRunner(make_config(tmp_path))
    runner.datasets.val = regression_data(8)
    runner.build_dataloaders()
    with pytest.raises(ValueError, match="self.model"):
        runner.evaluate(["val"])
