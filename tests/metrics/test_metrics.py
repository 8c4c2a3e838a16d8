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
    assert torch.equal(metrics.input, every_input)
    assert torch.equal(metrics.target, every_target)


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
    assert metrics.input is None and metrics.target is None
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
    assert resumed.input is None


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
