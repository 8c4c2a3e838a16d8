"""`danling.utils.distributed`: identity on one process, real collectives on two gloo processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import distributed as dist

from danling.utils.distributed import (
    all_gather_object,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    broadcast_object,
    collective_device,
    gather_tensor,
    get_local_rank,
    get_rank,
    get_world_size,
    is_distributed,
)

SCRIPT = Path(__file__).parent / "dist_scripts" / "collectives.py"


@pytest.fixture
def single_process():
    assert not (dist.is_available() and dist.is_initialized()), "a process group leaked into the test process"


def test_single_process_world_size_is_one_and_rank_is_zero(single_process):
    assert get_world_size() == 1
    assert get_rank() == 0
    assert not is_distributed()
    assert collective_device() == torch.device("cpu")


def test_local_rank_reads_the_environment(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert get_local_rank() == 0
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert get_local_rank() == 3


def test_single_process_reductions_return_the_input(single_process):
    tensor = torch.tensor([1.0, 2.0])
    assert all_reduce_sum(tensor) is tensor
    assert all_reduce_mean(tensor) is tensor
    assert tensor.tolist() == [1.0, 2.0]


def test_single_process_gather_tensor_returns_the_input(single_process):
    tensor = torch.arange(6).reshape(3, 2)
    assert gather_tensor(tensor) is tensor


def test_single_process_object_collectives_are_identity(single_process):
    obj = {"a": [1, 2]}
    assert all_gather_object(obj) == [obj]
    assert all_gather_object(obj)[0] is obj
    assert broadcast_object(obj) is obj
    assert barrier() is None


def test_a_group_of_one_process_counts_as_not_distributed(single_process, tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert get_world_size() == 1
        assert not is_distributed()
        tensor = torch.ones(2)
        assert all_reduce_sum(tensor) is tensor
        assert gather_tensor(tensor) is tensor
        barrier()
    finally:
        dist.destroy_process_group()


# The two-process run is launched once, by whichever test asks first; its outcome (or failure) is shared.
_LAUNCH: dict = {}


@pytest.fixture
def ranks(distributed_runner, tmp_path_factory) -> list[dict]:
    if "outcome" not in _LAUNCH:
        out_dir = tmp_path_factory.mktemp("collectives")
        try:
            distributed_runner(SCRIPT, str(out_dir), nproc=2)
            _LAUNCH["outcome"] = [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(2)]
        except Exception as error:
            _LAUNCH["outcome"] = error
    if isinstance(_LAUNCH["outcome"], Exception):
        pytest.fail(f"the two-process run failed: {_LAUNCH['outcome']}")
    return _LAUNCH["outcome"]


def test_two_processes_see_their_ranks_and_world_size(ranks):
    assert [result["rank"] for result in ranks] == [0, 1]
    assert [result["local_rank"] for result in ranks] == [0, 1]
    for result in ranks:
        assert result["world_size"] == 2
        assert result["is_distributed"] is True
        assert result["collective_device"] == "cpu"


def test_all_reduce_sum_adds_over_processes_without_modifying_the_input(ranks):
    for rank, result in enumerate(ranks):
        assert result["sum"] == [3.0, 30.0]
        assert result["sum_input_after"] == [rank + 1.0, 10.0 * (rank + 1)]
        assert result["sum_is_a_new_tensor"] is True
        assert result["int_sum"] == [3]


def test_all_reduce_mean_averages_over_processes(ranks):
    for result in ranks:
        assert result["mean"] == [1.5, 15.0]


def test_gather_tensor_concatenates_uneven_shards_in_rank_order_on_every_rank(ranks):
    expected = [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]] + [[100.0 + 2 * row, 101.0 + 2 * row] for row in range(5)]
    for result in ranks:
        assert result["gather"] == expected
        assert result["gather_dtype"] == "torch.float32"
    assert ranks[0]["gather"] == ranks[1]["gather"]


def test_gather_tensor_keeps_integer_dtype(ranks):
    for result in ranks:
        assert result["gather_int"] == [0, 0, 0, 1, 1, 1, 1, 1]
        assert result["gather_int_dtype"] == "torch.int64"


def test_gather_tensor_with_an_empty_shard(ranks):
    for result in ranks:
        assert result["gather_with_empty_shard"] == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]


def test_all_gather_object_returns_every_object_in_rank_order(ranks):
    expected = [{"rank": 0, "name": "process-0"}, {"rank": 1, "name": "process-1"}]
    for result in ranks:
        assert result["all_gather_object"] == expected


def test_broadcast_object_gives_every_rank_the_source_object(ranks):
    for result in ranks:
        assert result["broadcast_from_0"] == {"from": 0, "payload": [0, 0, 0]}
        assert result["broadcast_from_1"] == "sent by 1"


def test_barrier_waits_for_every_process(ranks):
    for result in ranks:
        assert result["marker_seen_after_barrier"] is True


def test_every_process_seeing_the_main_process_directory_passes_and_leaves_nothing_behind(ranks):
    assert all(rank["shared_left_clean"] == [] for rank in ranks)


def test_processes_naming_different_directories_all_stop_with_both_names(ranks):
    for rank in ranks:
        message = rank["own_directory"]
        assert message is not None and message.startswith("the processes do not name the same checkpoint directory")
        assert "own0" in message and "rank 1 on" in message and "own1" in message and "same commit" in message


def test_a_relative_directory_another_process_resolves_elsewhere_is_named_as_not_visible(ranks):
    for rank in ranks:
        message = rank["relative_directory"]
        assert message is not None and "is not visible to rank 1" in message, message
        assert "elsewhere" in message and "'relative' is relative" in message
