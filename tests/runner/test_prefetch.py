"""Batches prefetched to a CUDA device a step ahead: on the CPU nothing changes; on a GPU, the order of the calls.

On any device but CUDA the loops iterate over the loader itself. What a prefetcher does on a GPU is checked here
against a stand-in for `torch.cuda` that records each call (which stream a copy is issued on, when the step's stream
waits, which tensors are marked as used by it); `tests/cuda/test_prefetch.py` checks the copies on a real GPU.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict, defaultdict
from typing import NamedTuple

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from toys import ResumableRunner, assert_bitwise_equal, final_state, make_config

import danling as dl
from danling.runner import prefetch as prefetching
from danling.runner.data import to_device
from danling.runner.prefetch import DevicePrefetcher, prefetch

SETTINGS = {"epoch_end": 2, "samples": 44, "val_samples": 13}


def test_on_the_cpu_the_loader_itself_is_iterated():
    loader = DataLoader(TensorDataset(torch.arange(10.0)), batch_size=4)
    assert prefetch(loader, torch.device("cpu")) is loader
    assert prefetch(loader, torch.device("meta")) is loader


def test_prefetching_is_on_by_default():
    assert dl.Config().prefetch is True


@pytest.mark.parametrize("switch", [True, False])
def test_a_cpu_runner_hands_its_loops_the_loader_itself(tmp_path, switch):
    runner = ResumableRunner(make_config(tmp_path, prefetch=switch, **SETTINGS))
    loader = runner.dataloaders.train
    assert runner._prefetched(loader) is loader


def test_training_with_prefetching_on_or_off_on_the_cpu_is_bitwise_equal(tmp_path):
    states = {}
    for switch in (True, False):
        runner = ResumableRunner(make_config(tmp_path / str(switch), prefetch=switch, **SETTINGS))
        runner.train()
        states[switch] = final_state(runner)
    assert_bitwise_equal(states[True], states[False])


class Pair(NamedTuple):
    input: torch.Tensor
    names: list


def test_to_device_moves_every_nested_tensor_and_keeps_everything_else_as_it_is():
    # The meta device stands for a GPU: a tensor moved there keeps its shape and dtype, and says where it went.
    meta = torch.device("meta")
    counts = defaultdict(int, seen=torch.ones(2))
    batch = {
        "pair": Pair(torch.zeros(3, 2), ["a", "b", "c"]),
        "ordered": OrderedDict(first=torch.zeros(3), second=(torch.ones(3, dtype=torch.long), None)),
        "counts": counts,
        "label": "train",
        "step": 7,
    }
    moved = to_device(batch, meta)
    assert type(moved) is dict and list(moved) == list(batch)
    assert type(moved["pair"]) is Pair and moved["pair"].input.device == meta
    assert moved["pair"].names == ["a", "b", "c"]
    assert type(moved["ordered"]) is OrderedDict and moved["ordered"]["first"].device == meta
    second = moved["ordered"]["second"]
    assert type(second) is tuple and second[0].device == meta and second[0].dtype == torch.long and second[1] is None
    assert type(moved["counts"]) is defaultdict and moved["counts"].default_factory is int
    assert moved["counts"]["seen"].device == meta
    assert counts["seen"].device.type == "cpu", "the batch itself is left as it was"
    assert moved["label"] == "train" and moved["step"] == 7


def test_the_length_is_the_loader_s_and_an_iterable_without_one_has_none():
    loader = DataLoader(TensorDataset(torch.arange(10.0)), batch_size=4)
    assert len(DevicePrefetcher(loader, torch.device("cuda", 0))) == 3
    with pytest.raises(TypeError, match="no len"):
        len(DevicePrefetcher((batch for batch in loader), torch.device("cuda", 0)))


class Stream:
    """A stand-in for a CUDA stream that writes what waits for it to `log`."""

    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    def wait_stream(self, stream: Stream) -> None:
        self.log.append(("wait", self.name, stream.name))


class Recorder:
    """A stand-in for the CUDA calls a prefetcher makes, writing each one to `log` in order."""

    def __init__(self, monkeypatch) -> None:
        self.log: list[tuple] = []
        self.side, self.current = Stream("side", self.log), Stream("current", self.log)
        self.active = self.current
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: self.current)
        monkeypatch.setattr(torch.cuda, "stream", self.stream)
        monkeypatch.setattr(prefetching, "to_device", self.to_device)
        monkeypatch.setattr(torch.Tensor, "record_stream", self.record_stream())

    def record_stream(self):
        # A function, not a bound method: set on `torch.Tensor`, it is called with the tensor as its first argument.
        def record(tensor: torch.Tensor, stream: Stream) -> None:
            self.log.append(("record", first(tensor), stream.name))

        return record

    @contextlib.contextmanager
    def stream(self, stream: Stream):
        self.active = stream
        try:
            yield
        finally:
            self.active = self.current

    def to_device(self, batch, device):
        self.log.append(("copy", index(batch), self.active.name))
        return to_device(batch, device)


def first(tensor: torch.Tensor) -> int:
    return int(tensor.flatten()[0])


def index(batch) -> int:
    """The batch's number: its first value, as `numbered` makes them."""
    return first(batch["input"] if isinstance(batch, dict) else batch[0])


def numbered(count: int, log: list | None = None, fail_at: int | None = None):
    """`count` batches `{"input": tensor of k, "name": "k"}`, logging when each is taken from the loader."""
    for k in range(count):
        if fail_at == k:
            raise RuntimeError(f"batch {k} is broken")
        if log is not None:
            log.append(("take", k))
        yield {"input": torch.full((2,), float(k)), "name": str(k)}


def test_the_copy_of_the_next_batch_is_issued_on_the_side_stream_before_a_batch_is_handed_out(monkeypatch):
    cuda = Recorder(monkeypatch)
    prefetcher = DevicePrefetcher(numbered(3, cuda.log), torch.device("cpu"), stream=cuda.side)
    for batch in prefetcher:
        cuda.log.append(("step", index(batch)))
    expected = [("take", 0), ("copy", 0, "side")]
    for k in range(3):
        # The step's stream waits for the copies issued so far, and the batch is marked as used by it; only then is
        # the next batch taken and its copy issued, and the batch handed out.
        expected += [("wait", "current", "side"), ("record", k, "current")]
        if k < 2:
            expected += [("take", k + 1), ("copy", k + 1, "side")]
        expected += [("step", k)]
    assert cuda.log == expected


def test_a_loader_error_ahead_is_raised_after_the_step_before_it(monkeypatch):
    cuda = Recorder(monkeypatch)
    batches = iter(DevicePrefetcher(numbered(5, fail_at=2), torch.device("cpu"), stream=cuda.side))
    steps = [index(next(batches)), index(next(batches))]
    with pytest.raises(RuntimeError, match="batch 2 is broken"):
        next(batches)
    assert steps == [0, 1]
    assert [entry[1] for entry in cuda.log if entry[0] == "copy"] == [0, 1]


def test_the_batches_handed_out_are_the_loader_s_in_order_with_a_short_last_one(monkeypatch):
    cuda = Recorder(monkeypatch)
    loader = DataLoader(TensorDataset(torch.arange(10.0).unsqueeze(1), torch.arange(10)), batch_size=4)
    prefetched = list(DevicePrefetcher(loader, torch.device("cpu"), stream=cuda.side))
    assert_bitwise_equal(prefetched, list(loader))
    assert [len(batch[0]) for batch in prefetched] == [4, 4, 2]
    # A second pass starts again from the loader's first batch.
    assert_bitwise_equal(list(DevicePrefetcher(loader, torch.device("cpu"), stream=cuda.side)), prefetched)


class Augmented(torch.utils.data.Dataset):
    """A dataset that draws random numbers for each sample, in whichever process fetches it."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(2) + index


def test_only_loaders_that_cannot_draw_random_numbers_in_this_process_are_prefetched(tmp_path, monkeypatch):
    # On a GPU, a batch taken a step early from a loader that draws in the main process would draw before the step
    # it precedes: a mid-epoch checkpoint would then hold the generators past the next batch's draws.
    from danling.runner import evaluation

    prefetched = []
    monkeypatch.setattr(evaluation, "prefetch", lambda batches, device: prefetched.append(batches) or batches)
    runner = ResumableRunner(make_config(tmp_path, **SETTINGS))
    in_memory = runner.dataloaders.train  # a TensorDataset, fetched a batch at a time: indexing only
    in_main_process = DataLoader(Augmented(), batch_size=4)
    in_workers = DataLoader(Augmented(), batch_size=4, num_workers=2)
    for loader in (in_memory, in_main_process, in_workers):
        runner._prefetched(loader)
    assert prefetched == [in_memory, in_workers]
    runner.config.prefetch = False
    assert runner._prefetched(in_workers) is in_workers and len(prefetched) == 2
