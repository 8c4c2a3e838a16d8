"""Throughput in the training log lines, held to counts made here from the batches themselves, on a fake clock
(fetching a sample takes 0.25 s, a step 1 s): samples per second over every process, the share of time waiting for
data, peak memory, MFU; under accumulation, a short last batch and two processes."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest
from throughput_toys import ClockedRunner, expected_window
from toys import make_config

from danling.runner.throughput import Throughput, batch_samples

SCRIPT = Path(__file__).parent / "dist_scripts" / "throughput_two_processes.py"


@pytest.fixture(autouse=True)
def real_clock_after():
    clock = Throughput.clock
    yield
    Throughput.clock = clock


def windows(sizes: list[int], logged: list[int]) -> list[list[int]]:
    """The micro-batch sizes of each log line's window: from after the last logged iteration to this one."""
    result, begin = [], 0
    for iteration in logged:
        result.append(sizes[begin : iteration + 1])
        begin = iteration + 1
    return result


def test_each_line_shows_the_samples_per_second_and_waiting_of_its_window(tmp_path):
    # 60 samples in batches of 8: seven of 8 and a short one of 4; a line every 3 micro-batches and at the last.
    config = make_config(tmp_path, epoch_end=1, samples=60, log_interval=3, accum_steps=2)
    runner = ClockedRunner(config)
    runner.train()
    assert runner.sizes == [8] * 7 + [4]
    logged = [line["iteration"] for line in runner.lines]
    assert logged == [0, 3, 6, 7]
    for line, window in zip(runner.lines, windows(runner.sizes, logged)):
        samples_per_s, data_wait = expected_window(window)
        assert line["samples_per_s"] == pytest.approx(samples_per_s, rel=1e-9), (line, window)
        assert line["data_wait"] == pytest.approx(data_wait, rel=1e-9), (line, window)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    assert 0 < runner.lines[-1]["peak_memory_gb"] <= peak
    assert "mfu" not in runner.lines[0] and "tokens_per_s" not in runner.lines[0]


class TokenRunner(ClockedRunner):
    def count_tokens(self, batch):
        return 3 * len(batch[0])  # three tokens a sample


def test_tokens_and_mfu_when_the_runner_counts_them(tmp_path):
    config = make_config(tmp_path, epoch_end=1, samples=16, log_interval=1, flops_per_sample=100.0, peak_flops=1000.0)
    runner = TokenRunner(config)
    runner.train()
    samples_per_s, _ = expected_window([8])
    first = runner.lines[0]
    assert first["tokens_per_s"] == pytest.approx(3 * samples_per_s)
    assert first["mfu"] == pytest.approx(samples_per_s * 100.0 / 1000.0)


def test_throughput_off_adds_nothing(tmp_path):
    runner = ClockedRunner(make_config(tmp_path, epoch_end=1, samples=16, log_interval=1, throughput=False))
    runner.train()
    assert not {"samples_per_s", "data_wait", "peak_memory_gb"} & set(runner.lines[0])


def test_two_processes_log_the_samples_of_both_over_their_time(tmp_path, distributed_runner):
    distributed_runner(SCRIPT, str(tmp_path))
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    sizes = [report["sizes"] for report in reports]
    assert sizes[0] == sizes[1] == [8, 8, 8, 6]  # 60 samples: 30 a process
    logged = [line["iteration"] for line in reports[0]["lines"]]
    for report in reports:  # every process logs the same global numbers
        for line, window in zip(report["lines"], windows(sizes[0], logged)):
            samples_per_s, data_wait = expected_window(window, world_size=2)
            assert line["samples_per_s"] == pytest.approx(samples_per_s, rel=1e-9), (line, window)
            assert line["data_wait"] == pytest.approx(data_wait, rel=1e-9)


def test_batch_samples_counts_the_first_dimension_of_the_input():
    import torch

    assert batch_samples((torch.zeros(6, 2), torch.zeros(6))) == 6
    assert batch_samples({"x": torch.zeros(3, 2)}) == 3
