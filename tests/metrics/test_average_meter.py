"""Meters: sample-weighted averages, tensors kept on their device until read, formatting and resets."""

from __future__ import annotations

import subprocess
import sys
from math import isnan

import pytest
import torch
from chanfig import FlatDict, NestedDict

from danling.metrics import AverageMeter, AverageMeters, MultiTaskAverageMeters


@pytest.fixture
def no_tensor_reads(monkeypatch: pytest.MonkeyPatch):
    """Make reading a tensor's value on the host fail, as a stand-in for a device synchronisation."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a tensor was read on the host")

    for name in ("item", "tolist", "__float__", "__bool__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    yield
    monkeypatch.undo()


def test_average_is_weighted_by_samples() -> None:
    meter = AverageMeter()
    updates = [(0.5, 4), (0.25, 2), (1.0, 1), (0.0, 3)]
    for value, n in updates:
        meter.update(value, n)
    expected = sum(value * n for value, n in updates) / sum(n for _, n in updates)
    assert meter.avg == pytest.approx(expected)
    assert meter.sum == pytest.approx(sum(value * n for value, n in updates))
    assert meter.count == 10
    assert meter.val == 0.0


def test_tensor_values_match_numbers() -> None:
    numbers, tensors = AverageMeter(), AverageMeter()
    for value, n in [(0.3, 5), (0.7, 2), (0.1, 9)]:
        numbers.update(value, n)
        tensors.update(torch.tensor(value, dtype=torch.float64), n)
    assert tensors.avg == pytest.approx(numbers.avg)
    assert tensors.val == pytest.approx(0.1)
    assert isinstance(tensors.val, float)
    assert isinstance(tensors.avg, float)


def test_update_with_a_tensor_does_not_read_it(no_tensor_reads) -> None:
    meter = AverageMeter()
    loss = torch.tensor(0.5, requires_grad=True) * 2
    meter.update(loss, 3)
    meter.update(torch.tensor(0.25))
    meter.update(0.5)
    meters = AverageMeters()
    meters.update(loss=loss, acc=(torch.tensor(0.5), 4))
    meters.update({"loss": torch.tensor(2.0)})


def test_tensor_is_detached_and_not_modified() -> None:
    meter = AverageMeter()
    loss = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    meter.update(loss, 2)
    meter.update(torch.tensor(1.0), 2)
    assert loss.item() == 0.5
    assert not meter._sum.requires_grad
    assert meter.avg == pytest.approx(0.75)


def test_number_values_stay_numbers() -> None:
    meter = AverageMeter()
    meter.update(0.5, 2)
    assert isinstance(meter._sum, float)
    assert isinstance(meter._val, float)


def test_numbers_then_tensors_accumulate_together() -> None:
    meter = AverageMeter()
    meter.update(1.0, 2)
    meter.update(torch.tensor(4.0, dtype=torch.bfloat16), 2)
    meter.update(2.0, 4)
    assert meter.avg == pytest.approx((2 + 8 + 8) / 8)


def test_half_precision_sum_does_not_lose_precision() -> None:
    meter = AverageMeter()
    for _ in range(4096):
        meter.update(torch.tensor(1.0, dtype=torch.float16))
    assert meter.sum == 4096.0


def test_multi_element_tensor_is_rejected() -> None:
    with pytest.raises(ValueError, match="one value"):
        AverageMeter().update(torch.tensor([0.1, 0.2]))


def test_format_shows_value_then_average() -> None:
    meter = AverageMeter()
    meter.update(0.0)
    meter.update(0.5)
    assert f"{meter:.4f}" == "0.5000 (0.2500)"
    assert f"{meter}" == "0.5 (0.25)"


def test_reset_forgets_everything() -> None:
    meter = AverageMeter()
    meter.update(torch.tensor(3.0), 2)
    meter.reset()
    assert meter.count == 0
    assert meter.sum == 0.0
    assert isnan(meter.avg)
    assert isnan(meter.val)
    assert f"{meter:.2f}" == "nan (nan)"


def test_single_process_reads_are_local_values() -> None:
    meter = AverageMeter()
    meter.update(0.2, 3)
    meter.update(0.6, 1)
    assert meter.value() == meter.val == meter.batch() == pytest.approx(0.6)
    assert meter.average() == meter.avg == pytest.approx(0.3)


def test_meters_are_created_on_first_use() -> None:
    meters = AverageMeters()
    meters.update(loss=0.5)
    meters.update({"acc": (0.75, 4)})
    assert list(meters) == ["loss", "acc"]
    assert isinstance(meters.loss, AverageMeter)
    assert meters["acc"].count == 4


def test_meters_reads_return_flat_dicts_of_floats() -> None:
    meters = AverageMeters()
    meters.update(loss=(torch.tensor(1.0), 2), acc=0.5)
    meters.update(loss=(torch.tensor(0.25), 2))
    for read in (meters.val, meters.avg, meters.sum, meters.value(), meters.batch(), meters.average()):
        assert isinstance(read, FlatDict)
        assert all(isinstance(value, float) for value in read.values())
    assert meters.count.dict() == {"loss": 4, "acc": 1}
    assert meters.avg.dict() == {"loss": 0.625, "acc": 0.5}
    assert meters.value().dict() == {"loss": 0.25, "acc": 0.5}
    assert meters.average().dict() == meters.avg.dict()
    assert meters.sum.dict() == {"loss": 2.5, "acc": 0.5}


def test_meters_format_joins_meters_with_tabs() -> None:
    meters = AverageMeters()
    meters.update(loss=0.0)
    meters.update(loss=0.5, acc=1.0)
    assert f"{meters:.4f}" == "loss: 0.5000 (0.2500)\tacc: 1.0000 (1.0000)"


def test_meters_reset_keeps_the_meters() -> None:
    meters = AverageMeters()
    meters.update(loss=1.0, acc=0.5)
    meters.reset()
    assert list(meters) == ["loss", "acc"]
    assert all(count == 0 for count in meters.count.values())


def test_multitask_meters_nest_dotted_and_nested_keys() -> None:
    meters = MultiTaskAverageMeters()
    meters.update({"task1.loss": 0.5, "task2": {"loss": 1.0, "acc": 0.5}})
    meters.update({"task1": {"loss": (0.25, 2)}})
    assert isinstance(meters["task1.loss"], AverageMeter)
    assert meters["task1"]["loss"].count == 3
    average = meters.average()
    assert isinstance(average, NestedDict)
    assert average.dict() == {"task1": {"loss": pytest.approx(1.0 / 3)}, "task2": {"loss": 1.0, "acc": 0.5}}
    assert meters.value().dict() == {"task1": {"loss": 0.25}, "task2": {"loss": 1.0, "acc": 0.5}}
    assert meters["task2"].avg.dict() == {"loss": 1.0, "acc": 0.5}


def test_multitask_meters_format_and_reset() -> None:
    meters = MultiTaskAverageMeters()
    meters.update({"a.loss": 0.5, "b.loss": 0.25})
    assert f"{meters:.2f}" == "a.loss: 0.50 (0.50)\tb.loss: 0.25 (0.25)"
    meters.reset()
    assert meters.count.dict() == {"a": {"loss": 0}, "b": {"loss": 0}}


def test_multitask_meters_reject_a_value_for_a_task() -> None:
    meters = MultiTaskAverageMeters()
    meters.update({"task1.loss": 0.5})
    with pytest.raises(TypeError, match="not an AverageMeter"):
        meters.update({"task1": 0.5})


def test_importing_metrics_loads_neither_sklearn_nor_scipy() -> None:
    code = "import sys, danling.metrics; print(sorted({'sklearn', 'scipy'} & set(sys.modules)))"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"


def test_state_dict_round_trip_resumes_the_averages() -> None:
    meters, resumed = AverageMeters(), AverageMeters()
    meters.update(loss=(torch.tensor(0.5), 4), acc=1.0)
    resumed.load_state_dict(meters.state_dict())
    for collection in (meters, resumed):
        collection.update(loss=(0.25, 4))
    assert resumed.avg.dict() == meters.avg.dict() == {"loss": 0.375, "acc": 1.0}
    assert resumed.val.dict() == meters.val.dict()
    assert resumed.count.dict() == meters.count.dict()


def test_multitask_state_dict_round_trip_recreates_nested_meters() -> None:
    meters, resumed = MultiTaskAverageMeters(), MultiTaskAverageMeters()
    meters.update({"a.loss": (0.5, 2), "b": {"loss": 1.0}})
    resumed.load_state_dict(meters.state_dict())
    assert resumed.average().dict() == meters.average().dict()
    assert isinstance(resumed["a.loss"], AverageMeter)


def test_bat_is_the_batch_read() -> None:
    meter = AverageMeter()
    meter.update(0.2, 3)
    meter.update(torch.tensor(0.6), 1)
    assert meter.bat == meter.batch() == pytest.approx(0.6)
    meters = AverageMeters()
    meters.update(loss=(0.5, 2), acc=0.25)
    meters.update(loss=1.5)
    assert isinstance(meters.bat, FlatDict)
    assert meters.bat.dict() == meters.batch().dict() == {"loss": 1.5, "acc": 0.25}


def test_numpy_and_integer_values_are_numbers() -> None:
    numpy = pytest.importorskip("numpy")
    meter = AverageMeter()
    meter.update(numpy.float32(0.5), 2)
    meter.update(1, numpy.int64(2))
    assert meter.avg == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("value", "error", "fragments"),
    [
        ("0.3", TypeError, ["str", "'0.3'"]),
        (None, TypeError, ["NoneType", "None"]),
        ([0.1, 0.2], TypeError, ["list", "[0.1, 0.2]"]),
        (torch.tensor([0.1, 0.2]), ValueError, ["one value", "(2,)"]),
    ],
)
def test_meter_rejects_values_that_are_not_one_number(value, error, fragments) -> None:
    meter = AverageMeter()
    meter.update(0.5)
    with pytest.raises(error) as info:
        meter.update(value)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert (meter.count, meter.sum) == (1, 0.5)


@pytest.mark.parametrize(
    ("n", "error", "fragment"), [("4", TypeError, "'4'"), (None, TypeError, "None"), (-1, ValueError, "-1")]
)
def test_meter_rejects_a_bad_sample_count(n, error, fragment) -> None:
    with pytest.raises(error, match=fragment):
        AverageMeter().update(0.5, n)


@pytest.mark.parametrize(
    ("entry", "error", "fragments"),
    [
        ("high", TypeError, ["'acc'", "str 'high'"]),
        (None, TypeError, ["'acc'", "None"]),
        ((0.5, 2, 3), TypeError, ["'acc'", "pair", "3"]),
        ((0.5, "2"), TypeError, ["'acc'", "n must be", "'2'"]),
        (torch.ones(3), ValueError, ["'acc'", "(3,)"]),
    ],
)
def test_meters_update_names_the_key_of_a_bad_value_and_changes_nothing(entry, error, fragments) -> None:
    meters = AverageMeters()
    meters.update(loss=1.0)
    with pytest.raises(error) as info:
        meters.update(loss=0.5, acc=entry)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert list(meters) == ["loss"], "no meter is created for a rejected value"
    assert meters.count.dict() == {"loss": 1}, "no meter changes when one value is rejected"


def test_multitask_meters_update_names_the_dotted_key_of_a_bad_value() -> None:
    meters = MultiTaskAverageMeters()
    with pytest.raises(TypeError, match="'task1.acc'"):
        meters.update({"task1": {"loss": 0.5, "acc": "high"}})
    assert meters.count.dict() == {}


@pytest.mark.parametrize(
    "build",
    [
        lambda: AverageMeters(loss=0.5),
        lambda: AverageMeters({"loss": AverageMeter(), "acc": "0.9"}),
        lambda: AverageMeters(loss={"value": 0.5}),
    ],
)
def test_average_meters_reject_members_that_are_not_meters(build) -> None:
    with pytest.raises(TypeError, match="AverageMeters holds AverageMeters"):
        build()


def test_average_meters_accept_meters_and_reject_assigned_values() -> None:
    loss = AverageMeter()
    meters = AverageMeters(loss=loss)
    assert meters["loss"] is loss
    with pytest.raises(TypeError, match="'acc'"):
        meters["acc"] = 0.5
    with pytest.raises(TypeError, match="'acc'"):
        meters.acc = 0.5
    assert list(meters) == ["loss"]


def test_multitask_meters_reject_members_that_are_not_meters() -> None:
    meters = MultiTaskAverageMeters({"task1": {"loss": AverageMeter()}})
    assert isinstance(meters["task1.loss"], AverageMeter)
    with pytest.raises(TypeError, match="'task1.loss'"):
        MultiTaskAverageMeters({"task1": {"loss": 0.5}})
    with pytest.raises(TypeError, match="'loss'"):
        MultiTaskAverageMeters(loss="0.5")


def test_multitask_meters_return_average_is_the_mean_over_tasks() -> None:
    meters = MultiTaskAverageMeters(return_average=True)
    meters.update({"a": {"loss": (0.5, 2), "acc": 0.75}, "b.loss": 0.25, "c": {"loss": 3.0}})
    meters.update({"a.loss": (1.0, 2), "b.loss": 0.75})
    # Written out: a.loss averages (0.5*2 + 1*2) / 4 = 0.75, b.loss (0.25 + 0.75) / 2 = 0.5, c.loss 3.
    expected_average = {"loss": (0.75 + 0.5 + 3.0) / 3, "acc": 0.75}
    expected_last = {"loss": (1.0 + 0.75 + 3.0) / 3, "acc": 0.75}
    for read in (meters.average(), meters.avg):
        assert list(read) == ["a", "b", "c", "average"]
        assert read["average"].dict() == pytest.approx(expected_average)
    for read in (meters.value(), meters.val, meters.batch(), meters.bat):
        assert read["average"].dict() == pytest.approx(expected_last)
    assert "average" not in meters.sum and "average" not in meters.count
    assert "average" not in MultiTaskAverageMeters().value()


def test_multitask_meters_average_leaves_out_nan_and_meters_outside_tasks() -> None:
    meters = MultiTaskAverageMeters(return_average=True)
    meters.update({"a.loss": 0.5, "b.loss": 1.5, "loss": 100.0})
    meters["b.loss"].reset()
    average = meters.average()
    assert isnan(average["b.loss"])
    assert average["average"].dict() == {"loss": 0.5}
    meters["a.loss"].reset()
    assert isnan(meters.average()["average.loss"])


def test_multitask_meters_return_average_rejects_a_task_named_average() -> None:
    meters = MultiTaskAverageMeters(return_average=True)
    meters.update({"average.loss": 0.5, "b.loss": 1.0})
    with pytest.raises(ValueError, match="'average'"):
        meters.average()


def test_multitask_meters_sub_collection_of_one_task_has_no_average() -> None:
    meters = MultiTaskAverageMeters(return_average=True)
    meters.update({"a.loss": 0.5, "b.loss": 1.5})
    assert meters["a"].average().dict() == {"loss": 0.5}
