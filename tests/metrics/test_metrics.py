"""Metric containers: storing batches without computing, last-batch and epoch values, tasks, and metric meters."""

from __future__ import annotations

from functools import partial
from math import isnan

import pytest
import torch
from chanfig import FlatDict, NestedDict

from danling.metrics import (
    MetricMeter,
    MetricMeters,
    Metrics,
    MultiTaskMetricMeters,
    MultiTaskMetrics,
    accuracy,
    auroc,
    binary_metrics,
    f1_score,
    multiclass_metrics,
    multilabel_metrics,
    regression_metrics,
    rmse,
)


def binary_batches(sizes=(4, 1, 9, 6), seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.rand(n, generator=generator), torch.randint(0, 2, (n,), generator=generator)) for n in sizes]


class CountingMetric:
    """A metric that records how often it runs."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return accuracy(input, target)


def test_update_stores_without_computing(monkeypatch: pytest.MonkeyPatch) -> None:
    metric = CountingMetric()
    metrics = Metrics(acc=metric)

    def forbidden(*args, **kwargs):
        raise AssertionError("a tensor was read on the host")

    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "__float__", "__bool__"):
            patch.setattr(torch.Tensor, name, forbidden)
        for input, target in binary_batches():
            metrics.update(input.requires_grad_(), target)
    assert metric.calls == 0
    assert not metrics.input.requires_grad
    assert not metrics.inputs.requires_grad


def test_value_is_last_batch_and_average_is_everything() -> None:
    batches = binary_batches()
    metrics = binary_metrics()
    for input, target in batches:
        metrics.update(input, target)
    every_input = torch.cat([input for input, _ in batches])
    every_target = torch.cat([target for _, target in batches])
    last_input, last_target = batches[-1]
    value, average = metrics.value(), metrics.average()
    assert isinstance(value, FlatDict)
    assert value["auroc"] == pytest.approx(float(auroc(last_input, last_target)))
    assert average["auroc"] == pytest.approx(float(auroc(every_input, every_target)))
    assert average["acc"] == pytest.approx(float(accuracy(every_input, every_target)))
    assert all(isinstance(item, float) for item in average.values())


def test_input_and_target_are_the_last_batch_inputs_and_targets_everything() -> None:
    batches = binary_batches()
    metrics = binary_metrics()
    for input, target in batches:
        metrics.update(input, target)
    last_input, last_target = batches[-1]
    assert torch.equal(metrics.input, last_input)
    assert torch.equal(metrics.target, last_target)
    # The last batch is the caller's storage, not a copy.
    assert metrics.input.data_ptr() == last_input.data_ptr()
    assert torch.equal(metrics.inputs, torch.cat([input for input, _ in batches]))
    assert torch.equal(metrics.targets, torch.cat([target for _, target in batches]))
    metrics.update(torch.tensor([0.5]), torch.tensor([1]))
    assert metrics.input.tolist() == [0.5]
    assert len(metrics.inputs) == sum(len(target) for _, target in batches) + 1
    metrics.reset()
    for stored in (metrics.input, metrics.target, metrics.inputs, metrics.targets):
        assert stored.shape == (0,)


def test_empty_metrics_read_as_empty_tensors() -> None:
    metrics = Metrics()
    empty = torch.empty(0)
    for name in ("input", "target", "inputs", "targets"):
        stored = getattr(metrics, name)
        assert isinstance(stored, torch.Tensor), name
        assert (stored == empty).all(), name
        assert stored.shape == empty.shape, name


def test_computing_on_empty_reads_gives_nan() -> None:
    metrics = binary_metrics()
    assert all(isnan(value) for value in metrics.compute(metrics.inputs, metrics.targets).values())


@pytest.mark.parametrize("factory", [regression_metrics, binary_metrics])
def test_single_output_predictions_are_stored_flat_like_their_targets(factory) -> None:
    generator = torch.Generator().manual_seed(0)
    predictions = [torch.randn(8, 1, generator=generator) for _ in range(3)]
    targets = [torch.randint(0, 2, (8,), generator=generator).float() for _ in range(3)]
    metrics = factory()
    for prediction, target in zip(predictions, targets):
        metrics.update(prediction, target)
    assert metrics.inputs.shape == (24,)
    assert (torch.cat(predictions).view(-1) == metrics.inputs).all()
    assert torch.equal(metrics.input, predictions[-1].view(-1))
    # The value and the average see the same layout, so a metric that cares about shapes agrees on both.
    assert metrics.value().dict() == pytest.approx(metrics.compute(predictions[-1], targets[-1]).dict())
    assert metrics.average().dict() == pytest.approx(
        metrics.compute(torch.cat(predictions).view(-1), torch.cat(targets)).dict()
    )


def test_multi_output_and_matching_shapes_are_stored_as_given() -> None:
    metrics = regression_metrics(num_outputs=1)
    metrics.update(torch.randn(4, 1), torch.randn(4, 1))
    assert metrics.inputs.shape == (4, 1)
    metrics = multilabel_metrics(num_labels=1)
    metrics.update(torch.rand(4, 1), torch.randint(0, 2, (4, 1)))
    assert metrics.inputs.shape == (4, 1)


@pytest.mark.parametrize(
    ("metrics", "make_batch"),
    [
        (binary_metrics(), lambda g: (torch.randn(8, generator=g) * 3, torch.randint(0, 2, (8,), generator=g))),
        (
            multiclass_metrics(num_classes=3),
            lambda g: (torch.randn(8, 3, generator=g) * 3, torch.randint(0, 3, (8,), generator=g)),
        ),
        (
            multilabel_metrics(num_labels=3),
            lambda g: (torch.randn(8, 3, generator=g) * 3, torch.randint(0, 2, (8, 3), generator=g)),
        ),
    ],
    ids=["binary", "multiclass", "multilabel"],
)
def test_input_is_the_batch_as_given_and_preprocess_gives_what_the_metrics_saw(metrics, make_batch) -> None:
    generator = torch.Generator().manual_seed(0)
    batches = [make_batch(generator) for _ in range(3)]
    for logits, target in batches:
        metrics.update(logits, target)
        assert torch.equal(metrics.input, logits) and torch.equal(metrics.target, target)
        seen = metrics.preprocess(metrics.input, metrics.target)
        expected = {name: metric(*seen) for name, metric in metrics.metrics.items()}
        assert metrics.value().dict() == pytest.approx({k: float(v) for k, v in expected.items()}, nan_ok=True)
    seen = metrics.preprocess(metrics.inputs, metrics.targets)
    expected = {name: float(metric(*seen)) for name, metric in metrics.metrics.items()}
    assert metrics.average().dict() == pytest.approx(expected, nan_ok=True)


def test_metrics_without_preprocess_have_an_identity_preprocess() -> None:
    metrics = Metrics(acc=accuracy)
    input, target = torch.tensor([0.2, 0.9]), torch.tensor([0, 1])
    metrics.update(input, target)
    seen_input, seen_target = metrics.preprocess(metrics.input, metrics.target)
    assert seen_input is metrics.input and seen_target is metrics.target


def test_val_and_avg_are_value_and_average() -> None:
    batches = binary_batches()
    metrics = Metrics(acc=accuracy, f1=f1_score)
    for input, target in batches:
        metrics.update(input, target)
    every = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert isinstance(metrics.val, FlatDict) and isinstance(metrics.avg, FlatDict)
    assert metrics.val.dict() == metrics.value().dict()
    assert metrics.avg.dict() == metrics.average().dict()
    assert metrics.val["acc"] == pytest.approx(float(accuracy(*batches[-1])))
    assert metrics.avg["acc"] == pytest.approx(float(accuracy(*every)))


def test_reading_compacts_storage_and_keeps_updating() -> None:
    batches = binary_batches()
    metrics = Metrics(acc=accuracy)
    for input, target in batches[:2]:
        metrics.update(input, target)
    first = metrics.average()["acc"]
    for input, target in batches[2:]:
        metrics.update(input, target)
    every_input = torch.cat([input for input, _ in batches])
    every_target = torch.cat([target for _, target in batches])
    assert first == pytest.approx(
        float(accuracy(torch.cat([b[0] for b in batches[:2]]), torch.cat([b[1] for b in batches[:2]])))
    )
    assert metrics.average()["acc"] == pytest.approx(float(accuracy(every_input, every_target)))
    assert metrics.value()["acc"] == pytest.approx(float(accuracy(*batches[-1])))


def test_reset_and_empty_metrics_are_nan() -> None:
    metrics = binary_metrics()
    assert all(isnan(value) for value in metrics.average().values())
    metrics.update(*binary_batches()[0])
    metrics.reset()
    assert metrics.inputs.numel() == 0 and metrics.targets.numel() == 0
    assert all(isnan(value) for value in metrics.value().values())


def test_preprocess_runs_once_before_every_metric() -> None:
    calls = []

    def preprocess(input, target):
        calls.append(len(target))
        return input.flatten(), target.flatten()

    metrics = Metrics(acc=accuracy, f1=f1_score, preprocess=preprocess)
    metrics.update(torch.tensor([[0.9], [0.1]]), torch.tensor([[1], [1]]))
    assert metrics.average().dict() == {"acc": 0.5, "f1": pytest.approx(2 / 3)}
    assert calls == [2]


def test_format_shows_last_batch_then_average() -> None:
    metrics = Metrics(acc=accuracy)
    metrics.update(torch.tensor([0.9, 0.1, 0.8, 0.2]), torch.tensor([1, 0, 0, 0]))
    metrics.update(torch.tensor([0.9]), torch.tensor([1]))
    assert f"{metrics:.4f}" == "acc: 1.0000 (0.8000)"


def test_per_class_results_become_lists() -> None:
    metrics = multiclass_metrics(num_classes=3, average=None)
    metrics.update(torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7]]), torch.tensor([0, 1, 2]))
    assert metrics.average()["f1"] == [1.0, 1.0, 1.0]
    assert "f1: [1.00, 1.00, 1.00]" in f"{metrics:.2f}"


@pytest.mark.parametrize(
    ("factory", "task", "names"),
    [
        (binary_metrics, "binary", ["auroc", "auprc", "acc", "f1", "mcc"]),
        (partial(multiclass_metrics, num_classes=4), "multiclass", ["auroc", "auprc", "acc", "f1", "mcc"]),
        (partial(multilabel_metrics, num_labels=4), "multilabel", ["auroc", "auprc", "acc", "f1", "mcc"]),
    ],
)
def test_factories_bind_the_task(factory, task: str, names: list[str]) -> None:
    metrics = factory()
    assert list(metrics.metrics) == names
    assert all(metric.keywords["task"] == task for metric in metrics.metrics.values())


def test_regression_factory_names() -> None:
    assert list(regression_metrics(num_outputs=2).metrics) == ["pearson", "spearman", "r2", "rmse"]


def test_factory_keywords_add_replace_and_remove_metrics() -> None:
    metrics = binary_metrics(mcc=None, auroc=partial(auroc, task="binary"), brier=lambda i, t: ((i - t) ** 2).mean())
    assert list(metrics.metrics) == ["auroc", "auprc", "acc", "f1", "brier"]
    metrics.update(torch.tensor([1.0, 0.0]), torch.tensor([1, 0]))
    assert metrics.average()["brier"] == 0.0


def test_factory_threshold_and_ignore_index() -> None:
    metrics = binary_metrics(ignore_index=-1, threshold=0.8)
    metrics.update(torch.tensor([0.7, 0.9, 0.1, 0.5]), torch.tensor([1, 1, 0, -1]))
    assert metrics.average()["acc"] == pytest.approx(2 / 3)


def test_factory_checks_the_number_of_classes() -> None:
    metrics = multiclass_metrics(num_classes=3)
    metrics.update(torch.rand(4, 5), torch.tensor([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="num_classes=3"):
        metrics.average()


def multitask_data():
    generator = torch.Generator().manual_seed(1)
    inputs = {"spam": torch.rand(8, generator=generator), "price": {"low": torch.randn(8, generator=generator)}}
    targets = {"spam": torch.randint(0, 2, (8,), generator=generator), "price.low": torch.randn(8, generator=generator)}
    return inputs, targets


def test_multitask_metrics_update_by_task_name() -> None:
    metrics = MultiTaskMetrics({"spam": binary_metrics(), "price.low": regression_metrics()})
    inputs, targets = multitask_data()
    metrics.update(inputs, targets)
    metrics.update({"spam": inputs["spam"][:3]}, {"spam": targets["spam"][:3]})
    average = metrics.average()
    assert isinstance(average, NestedDict)
    every_spam = (torch.cat([inputs["spam"], inputs["spam"][:3]]), torch.cat([targets["spam"], targets["spam"][:3]]))
    assert average["spam.auroc"] == pytest.approx(float(auroc(*every_spam)))
    assert average["price"]["low"]["rmse"] == pytest.approx(float(rmse(inputs["price"]["low"], targets["price.low"])))
    assert metrics.value()["spam.acc"] == pytest.approx(float(accuracy(inputs["spam"][:3], targets["spam"][:3])))
    assert f"{metrics:.3f}".startswith("spam.auroc: ")
    assert "\tprice.low.pearson: " in f"{metrics:.3f}"
    metrics.reset()
    assert isnan(metrics.average()["spam.acc"])


def test_multitask_metrics_return_average_is_the_mean_over_tasks() -> None:
    batches_a, batches_b = binary_batches(sizes=(6, 5, 7), seed=1), binary_batches(sizes=(4, 9, 3), seed=2)
    metrics = MultiTaskMetrics(a=Metrics(acc=accuracy, f1=f1_score), b=Metrics(acc=accuracy), return_average=True)
    for (input_a, target_a), (input_b, target_b) in zip(batches_a, batches_b):
        metrics.update({"a": input_a, "b": input_b}, {"a": target_a, "b": target_b})
    every_a = torch.cat([b[0] for b in batches_a]), torch.cat([b[1] for b in batches_a])
    every_b = torch.cat([b[0] for b in batches_b]), torch.cat([b[1] for b in batches_b])
    acc_a, acc_b = float(accuracy(*every_a)), float(accuracy(*every_b))
    assert acc_a != acc_b
    average = metrics.average()
    assert list(average) == ["a", "b", "average"]
    # f1 is reported by task a only, so its mean is a's.
    assert average["average"].dict() == {
        "acc": pytest.approx((acc_a + acc_b) / 2),
        "f1": pytest.approx(float(f1_score(*every_a))),
    }
    last_acc_a, last_acc_b = float(accuracy(*batches_a[-1])), float(accuracy(*batches_b[-1]))
    assert metrics.value()["average.acc"] == pytest.approx((last_acc_a + last_acc_b) / 2)
    assert metrics.avg.dict() == average.dict()
    assert metrics.val.dict() == metrics.value().dict()
    assert "average" not in MultiTaskMetrics(a=Metrics(acc=accuracy)).average()


def test_multitask_metrics_average_leaves_out_tasks_without_data_and_lists() -> None:
    metrics = MultiTaskMetrics(
        a=Metrics(acc=accuracy),
        b=Metrics(acc=accuracy),
        c=multiclass_metrics(num_classes=3, average=None),
        return_average=True,
    )
    metrics.update({"a": torch.tensor([0.9, 0.1])}, {"a": torch.tensor([1, 1])})
    average = metrics.average()
    assert isnan(average["b.acc"])
    # b has no data: its nan is left out; c has none either, so its metrics average to nan.
    assert average["average.acc"] == 0.5
    assert all(isnan(average["average"][name]) for name in ("auroc", "auprc", "f1", "mcc"))
    metrics.update({"c": torch.eye(3)}, {"c": torch.tensor([0, 1, 2])})
    average = metrics.average()
    assert average["c.f1"] == [1.0, 1.0, 1.0]
    # c's scalar metrics join the mean; its per-class lists (auroc, auprc, f1) do not.
    assert isinstance(average["c.auroc"], list)
    assert average["average"].dict() == {"acc": pytest.approx(0.75), "mcc": 1.0}


def test_multitask_metrics_return_average_rejects_a_task_named_average() -> None:
    with pytest.raises(ValueError, match="'average'"):
        MultiTaskMetrics(average=Metrics(acc=accuracy), b=Metrics(acc=accuracy), return_average=True)
    metrics = MultiTaskMetrics({"average.x": Metrics(acc=accuracy)})
    metrics.setattr("return_average", True)
    with pytest.raises(ValueError, match="return_average"):
        metrics.average()


def test_metric_meter_weights_batches_by_size() -> None:
    batches = binary_batches()
    meter = MetricMeter(accuracy)
    for input, target in batches:
        meter.update(input, target)
    every = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert meter.avg == pytest.approx(float(accuracy(*every)))
    assert meter.average() == pytest.approx(meter.avg)
    assert meter.count == sum(len(b[1]) for b in batches)


def test_metric_meters_preprocess_once_and_average() -> None:
    calls = []

    def preprocess(input, target):
        calls.append(1)
        keep = target != -1
        return input[keep], target[keep]

    meters = MetricMeters(acc=accuracy, f1=f1_score, preprocess=preprocess)
    meters.update(torch.tensor([0.9, 0.2, 0.7]), torch.tensor([1, -1, 0]))
    meters.update(torch.tensor([0.8, 0.6]), torch.tensor([1, 1]))
    assert calls == [1, 1]
    assert meters.count.dict() == {"acc": 4, "f1": 4}
    assert meters.average()["acc"] == pytest.approx(0.75)
    assert f"{meters:.2f}" == "acc: 1.00 (0.75)\tf1: 1.00 (0.83)"
    meters.reset()
    assert isnan(meters.avg["acc"])


def test_multitask_metric_meters_update_by_task_name() -> None:
    meters = MultiTaskMetricMeters(spam=MetricMeters(acc=accuracy), price=MetricMeters(rmse=rmse))
    meters.update({"spam": torch.tensor([0.9, 0.1])}, {"spam": torch.tensor([1, 1])})
    meters.update(
        {"spam": torch.tensor([0.9]), "price": torch.tensor([1.0, 3.0])},
        {"spam": torch.tensor([1]), "price": torch.tensor([1.0, 1.0])},
    )
    average = meters.average()
    assert isinstance(average, NestedDict)
    assert average.dict() == {"spam": {"acc": pytest.approx(2 / 3)}, "price": {"rmse": pytest.approx(2**0.5)}}
    assert isinstance(meters["spam"], MetricMeters)


def test_metrics_state_dict_round_trip_resumes_the_epoch() -> None:
    batches = binary_batches()
    metrics, resumed = binary_metrics(), binary_metrics()
    for input, target in batches[:2]:
        metrics.update(input, target)
    state = metrics.state_dict()
    assert all(value.device.type == "cpu" for value in state.values())
    resumed.load_state_dict(state)
    assert resumed.value().dict() == pytest.approx(metrics.value().dict(), nan_ok=True)
    for input, target in batches[2:]:
        metrics.update(input, target)
        resumed.update(input, target)
    assert resumed.average().dict() == pytest.approx(metrics.average().dict(), nan_ok=True)


def test_empty_metrics_state_dict_round_trip() -> None:
    resumed = binary_metrics()
    resumed.load_state_dict(binary_metrics().state_dict())
    assert resumed.input.numel() == 0 and resumed.inputs.numel() == 0


def test_multitask_metrics_and_metric_meters_state_dict_round_trip() -> None:
    inputs, targets = multitask_data()
    metrics = MultiTaskMetrics({"spam": binary_metrics(), "price.low": regression_metrics()})
    metrics.update(inputs, targets)
    resumed = MultiTaskMetrics({"spam": binary_metrics(), "price.low": regression_metrics()})
    resumed.load_state_dict(metrics.state_dict())
    assert resumed.average().dict() == metrics.average().dict()
    meters = MultiTaskMetricMeters(spam=MetricMeters(acc=accuracy))
    meters.update({"spam": inputs["spam"]}, {"spam": targets["spam"]})
    resumed_meters = MultiTaskMetricMeters(spam=MetricMeters(acc=accuracy))
    resumed_meters.load_state_dict(meters.state_dict())
    assert resumed_meters.average().dict() == meters.average().dict()
    with pytest.raises(KeyError, match="no meter"):
        resumed_meters.load_state_dict({"spam.f1": {"val": 1.0, "sum": 1.0, "count": 1}})


def test_multitask_metric_meters_return_average_is_the_mean_over_tasks() -> None:
    meters = MultiTaskMetricMeters(spam=MetricMeters(acc=accuracy), ham=MetricMeters(acc=accuracy), return_average=True)
    meters.update(
        {"spam": torch.tensor([0.9, 0.1, 0.8]), "ham": torch.tensor([0.2])},
        {"spam": torch.tensor([1, 1, 1]), "ham": torch.tensor([1])},
    )
    assert meters.average().dict() == {
        "spam": {"acc": pytest.approx(2 / 3)},
        "ham": {"acc": 0.0},
        "average": {"acc": pytest.approx(1 / 3)},
    }
