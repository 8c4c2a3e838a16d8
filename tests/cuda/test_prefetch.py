"""Batches prefetched to the GPU: the loader's batches, in its order, copied on a side stream while the step before
runs, and training bit-identical to training without prefetching.

Marked `cuda` and skipped, with the reason, on a machine without CUDA, as the rest of `tests/cuda`.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from toys import ResumableRunner, assert_bitwise_equal, final_state, make_config

from danling.runner import prefetch as prefetching
from danling.runner.data import to_device
from danling.runner.prefetch import DevicePrefetcher, side_stream

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run with `pytest -m cuda` on one)"),
]

DEVICE = torch.device("cuda", 0)
CPU = torch.device("cpu")


class Records(Dataset):
    """Ten samples `{"input": [i, i], "target": i, "name": "sample i"}`: batches are dicts with a list of names."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> dict:
        return {"input": torch.full((2,), float(index)), "target": torch.tensor(index), "name": f"sample {index}"}


def tensors(data) -> list[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        return [data]
    if isinstance(data, dict):
        data = list(data.values())
    return [tensor for value in data for tensor in tensors(value)] if isinstance(data, (list, tuple)) else []


@pytest.mark.parametrize("pin_memory", [True, False])
@pytest.mark.parametrize("kind", ["tensors", "dicts"])
def test_the_loader_s_batches_arrive_on_the_gpu_in_order_value_for_value(kind, pin_memory):
    dataset = TensorDataset(torch.randn(10, 3), torch.arange(10)) if kind == "tensors" else Records()
    loader = DataLoader(dataset, batch_size=4, pin_memory=pin_memory)
    expected = list(loader)
    assert all(tensor.is_pinned() is pin_memory for tensor in tensors(expected))
    arrived = list(DevicePrefetcher(loader, DEVICE))
    assert all(tensor.device == DEVICE for tensor in tensors(arrived))
    back = to_device(arrived, CPU)
    torch.cuda.synchronize()  # a non-blocking copy to the host is done only once the device says so
    assert_bitwise_equal(back, expected)
    assert [len(tensors(batch)[0]) for batch in arrived] == [4, 4, 2]
    if kind == "dicts":
        assert arrived[2]["name"] == ["sample 8", "sample 9"]


def test_the_next_batch_s_copy_is_issued_on_the_side_stream_before_a_batch_is_handed_out(monkeypatch):
    log = []

    def recording(batch, device):
        log.append(("copy", int(batch[1][0]), torch.cuda.current_stream(device)))
        return to_device(batch, device)

    monkeypatch.setattr(prefetching, "to_device", recording)
    # The target of every sample of batch `k` is `k`.
    loader = DataLoader(TensorDataset(torch.zeros(12, 2), torch.arange(3).repeat_interleave(4)), batch_size=4)
    for k, _ in enumerate(DevicePrefetcher(loader, DEVICE)):
        log.append(("step", k, torch.cuda.current_stream(DEVICE)))
    assert [entry[:2] for entry in log] == [
        ("copy", 0),
        ("copy", 1),
        ("step", 0),
        ("copy", 2),
        ("step", 1),
        ("step", 2),
    ]
    side, current = side_stream(DEVICE), torch.cuda.current_stream(DEVICE)
    assert side != current
    assert all(stream == side for event, _, stream in log if event == "copy")
    assert all(stream == current for event, _, stream in log if event == "step")


def test_a_copy_on_the_side_stream_runs_while_the_step_s_stream_is_busy():
    side = side_stream(DEVICE)
    current = torch.cuda.current_stream(DEVICE)
    shape = (1024, 1024)
    # A first pass leaves device blocks of these sizes cached for the side stream: a device allocation issued
    # between the busy kernel and the copies would keep them from running at the same time.
    list(DevicePrefetcher([(torch.full(shape, -1.0).pin_memory(),) for _ in range(2)], DEVICE))
    torch.cuda._sleep(1)
    torch.cuda.synchronize()
    batches = [(torch.full(shape, float(k)).pin_memory(),) for k in range(2)]
    iterator = iter(DevicePrefetcher(batches, DEVICE))
    torch.cuda._sleep(2_000_000_000)  # the step: about a second of work on its stream
    (first,) = next(iterator)  # issues the copies of batches 0 and 1
    side.synchronize()
    assert not current.query(), "the copies are done while the step still runs"
    with torch.cuda.stream(side):
        assert torch.equal(first.cpu(), batches[0][0])
    assert not current.query()
    torch.cuda.synchronize()


def test_training_with_prefetching_on_or_off_on_the_gpu_is_bitwise_equal(tmp_path):
    devices = {True: set(), False: set()}

    class Recording(ResumableRunner):
        def train_step(self, batch):
            devices[self.config.prefetch].add(batch[0].device.type)
            return super().train_step(batch)

    states, predictions = {}, {}
    for switch in (True, False):
        config = make_config(tmp_path / str(switch), device="cuda:0", epoch_end=3, samples=60, prefetch=switch)
        runner = Recording(config)
        loader = runner.dataloaders.train
        assert isinstance(runner._prefetched(loader), DevicePrefetcher) is switch
        runner.train()
        states[switch], predictions[switch] = final_state(runner), runner.infer("val")
    assert devices == {True: {"cuda"}, False: {"cpu"}}
    assert_bitwise_equal(states[True], states[False])
    assert_bitwise_equal(predictions[True], predictions[False])
