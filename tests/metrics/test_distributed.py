"""Two real processes (gloo) with uneven shards read the same numbers as one process holding the union."""

from __future__ import annotations

import json
import runpy
from math import isnan
from pathlib import Path
from typing import Any

import pytest
import torch

from danling.metrics import AverageMeter, MetricMeters, Metrics, accuracy, binary_metrics
from tests.conftest import run_distributed

SCRIPT = Path(__file__).parent / "dist_scripts" / "metrics_across_processes.py"
DATA = runpy.run_path(str(SCRIPT), run_name="metrics_across_processes")
RANKS = (0, 1)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What each of the two processes read; one launch serves every test here."""
    directory = tmp_path_factory.mktemp("metrics_across_processes")
    run_distributed(SCRIPT, str(directory))
    return [json.loads((directory / f"rank{rank}.json").read_text()) for rank in RANKS]


@pytest.fixture(scope="module")
def shards() -> list[dict[str, list[tuple[torch.Tensor, torch.Tensor]]]]:
    return [DATA["make_batches"](rank) for rank in RANKS]


def assert_same(actual: dict, expected: dict, where: str) -> None:
    assert list(actual) == list(expected), where
    for name, value in expected.items():
        if isinstance(value, dict):
            assert_same(actual[name], value, f"{where}.{name}")
        elif isnan(value):
            assert isnan(actual[name]), f"{where}.{name}"
        else:
            assert actual[name] == pytest.approx(value, rel=1e-6, abs=1e-9), f"{where}.{name}"


def union_metrics(metrics: Metrics, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    for input, target in batches:
        metrics.update(input, target)
    return metrics.average().dict()


def test_average_meter_reads_combine_processes(results, shards) -> None:
    oracle = AverageMeter()
    for shard in shards:
        for loss, size in shard["loss"]:
            oracle.update(loss, int(size))
    last_losses = [float(shard["loss"][-1][0]) for shard in shards]
    for rank, result in enumerate(results):
        assert result["meter"]["average"] == pytest.approx(oracle.avg), rank
        assert result["meter"]["batch"] == pytest.approx(sum(last_losses) / 2), rank
        assert result["meter"]["bat"] == result["meter"]["batch"], rank


def test_multitask_meters_average_over_tasks_after_combining_processes(results, shards) -> None:
    oracle = AverageMeter()
    for shard in shards:
        for loss, size in shard["loss"]:
            oracle.update(loss, int(size))
    sizes = [int(size) for _, size in shards[1]["loss"]]
    last_losses = [float(shard["loss"][-1][0]) for shard in shards]
    a_average, b_average = oracle.avg, sum(sizes) / len(sizes)
    expected_average = {
        "a": {"loss": a_average},
        "b": {"loss": b_average},
        "average": {"loss": (a_average + b_average) / 2},
    }
    a_batch, b_batch = sum(last_losses) / 2, sizes[-1]
    expected_batch = {"a": {"loss": a_batch}, "b": {"loss": b_batch}, "average": {"loss": (a_batch + b_batch) / 2}}
    for rank, result in enumerate(results):
        assert_same(result["task_meters"]["average"], expected_average, f"rank{rank}.task_meters.average")
        assert_same(result["task_meters"]["batch"], expected_batch, f"rank{rank}.task_meters.batch")


def test_average_meters_combine_processes_including_a_meter_one_process_lacks(results, shards) -> None:
    oracle = AverageMeter()
    for shard in shards:
        for loss, size in shard["loss"]:
            oracle.update(loss, int(size))
    aux_sizes = [int(size) for _, size in shards[1]["loss"]]
    expected_average = {"loss": oracle.avg, "aux": sum(aux_sizes) / len(aux_sizes)}
    for rank, result in enumerate(results):
        assert_same(result["meters"]["average"], expected_average, f"rank{rank}.meters.average")
        assert result["meters"]["batch"]["aux"] == pytest.approx(aux_sizes[-1]), rank


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel", "regression"])
def test_metrics_average_equals_one_process_on_the_union(results, shards, task: str) -> None:
    expected = union_metrics(DATA["build_metrics"]()[task], shards[0][task] + shards[1][task])
    for rank, result in enumerate(results):
        assert_same(result["metrics"][task]["average"], expected, f"rank{rank}.{task}.average")


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel", "regression"])
def test_metrics_value_covers_the_last_batch_of_every_process(results, shards, task: str) -> None:
    last = [shard[task][-1] for shard in shards]
    union = (torch.cat([input for input, _ in last]), torch.cat([target for _, target in last]))
    expected = union_metrics(DATA["build_metrics"]()[task], [union])
    for rank, result in enumerate(results):
        assert_same(result["metrics"][task]["value"], expected, f"rank{rank}.{task}.value")


def test_multitask_metrics_gather_a_task_only_one_process_saw(results, shards) -> None:
    expected = {
        "binary": union_metrics(binary_metrics(), shards[0]["binary"] + shards[1]["binary"]),
        "rare": union_metrics(binary_metrics(), shards[1]["binary"]),
    }
    expected["average"] = {name: (expected["binary"][name] + expected["rare"][name]) / 2 for name in expected["binary"]}
    for rank, result in enumerate(results):
        assert_same(result["multitask"], expected, f"rank{rank}.multitask")


def test_metric_meters_average_over_processes(results, shards) -> None:
    oracle = MetricMeters(acc=accuracy)
    for shard in shards:
        for input, target in shard["binary"]:
            oracle.update(input, target)
    for rank, result in enumerate(results):
        assert_same(result["metric_meters"], oracle.avg.dict(), f"rank{rank}.metric_meters")


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel", "regression"])
def test_input_and_target_hold_every_process_last_batch_in_rank_order(results, shards, task: str) -> None:
    expected_input = torch.cat([shard[task][-1][0] for shard in shards])
    expected_target = torch.cat([shard[task][-1][1] for shard in shards])
    for rank, result in enumerate(results):
        stored = result["stored"][task]
        assert stored["input"]["shape"] == list(expected_input.shape), rank
        assert torch.tensor(stored["input"]["values"]).equal(expected_input), rank
        assert torch.tensor(stored["target"]["values"]).equal(expected_target), rank


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel", "regression"])
def test_inputs_and_targets_hold_every_process_batches_in_rank_order(results, shards, task: str) -> None:
    expected_inputs = torch.cat([input for shard in shards for input, _ in shard[task]])
    expected_targets = torch.cat([target for shard in shards for _, target in shard[task]])
    for rank, result in enumerate(results):
        stored = result["stored"][task]
        assert torch.tensor(stored["inputs"]["values"]).equal(expected_inputs), rank
        assert torch.tensor(stored["targets"]["values"]).equal(expected_targets), rank


def test_stored_batches_of_one_process_reach_every_process(results, shards) -> None:
    last_input, last_target = shards[1]["binary"][-1]
    for rank, result in enumerate(results):
        stored = result["stored"]["lone"]
        assert torch.tensor(stored["input"]["values"]).equal(last_input), rank
        assert torch.tensor(stored["target"]["values"]).equal(last_target), rank
        assert len(stored["inputs"]["values"]) == sum(len(target) for _, target in shards[1]["binary"]), rank


def test_stored_batches_are_empty_when_no_process_has_any(results) -> None:
    for rank, result in enumerate(results):
        for name, stored in result["stored"]["empty"].items():
            assert stored == {"values": [], "shape": [0]}, (rank, name)
