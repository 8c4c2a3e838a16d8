"""FSDP2 on two real gloo processes: DDP's numbers, exact resume, and resume on another number of processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from danling.runner.fsdp_runner import FSDPRunner, resolve_checkpoint
from danling.utils.io import CorruptFileError

SCRIPT = Path(__file__).parent / "dist_scripts" / "fsdp_scenarios.py"


def run(distributed_runner, tmp_path, scenario, *args, nproc=2):
    distributed_runner(SCRIPT, scenario, str(tmp_path), str(tmp_path / "experiments"), *args, nproc=nproc)
    return [torch.load(tmp_path / f"{scenario}-rank{rank}.pt", weights_only=False) for rank in range(nproc)]


def assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=atol), (key, (a[key] - b[key]).abs().max().item())


def test_fsdp_matches_ddp_with_clipping_accumulation_ema_and_evaluation(tmp_path, distributed_runner):
    for report in run(distributed_runner, tmp_path, "versus-ddp"):
        ddp, fsdp = report["torch"], report["fsdp"]
        # Same samples, same global norm for clipping, same mean gradient: only the reduction order differs.
        assert_close(fsdp["model"], ddp["model"], atol=1e-6)
        assert_close(fsdp["ema"], ddp["ema"], atol=1e-6)
        assert fsdp["counters"] == ddp["counters"]
        # Evaluation under FSDP (uneven shards: 13 and 12 samples) counts every sample once, as DDP's does.
        assert fsdp["val"]["loss"] == pytest.approx(ddp["val"]["loss"], abs=1e-6)
        assert fsdp["infer"].shape == (25, 3)
        assert torch.allclose(fsdp["infer"], ddp["infer"], atol=1e-5)
        assert any(not torch.equal(fsdp["model"][k], report["fsdp"]["ema"][k]) for k in fsdp["model"])


def test_fsdp_resume_mid_epoch_is_bitwise_equal_to_an_uninterrupted_run(tmp_path, distributed_runner):
    for report in run(distributed_runner, tmp_path, "resume"):
        assert report["resumed_from"] and report["resumed_from"].endswith("latest.dcp")
        straight, resumed = report["straight"], report["resumed"]
        for part in ("model", "ema"):
            assert all(torch.equal(straight[part][k], resumed[part][k]) for k in straight[part]), part
        assert straight["results"] == resumed["results"]
        assert straight["counters"] == resumed["counters"] and straight["lr"] == resumed["lr"]


@pytest.mark.parametrize(("first", "then"), [(2, 1), (1, 2)])
def test_fsdp_resume_on_another_number_of_processes_continues_the_run(tmp_path, distributed_runner, first, then):
    reference = run(distributed_runner, tmp_path / "reference", "train", "4", nproc=first)[0]["final"]
    run(distributed_runner, tmp_path / "split", "train", "2", nproc=first)
    resumed = run(distributed_runner, tmp_path / "split", "train", "4", nproc=then)
    assert resumed[0]["resumed_from"].endswith("latest.dcp")
    final = resumed[0]["final"]
    # Steps and epochs agree; `iters` counts each process's micro-batches, which accumulation doubles on one.
    assert final["counters"][1:] == reference["counters"][1:]
    assert list(final["results"]) == [0, 1, 2, 3]
    # The same samples reach the same global steps; only the order of float additions differs (a gradient is
    # reduced over 2 processes in one case and accumulated over 2 micro-batches in the other), so the weights
    # agree to float32 rounding accumulated over 24 AdamW steps, not bit for bit.
    assert_close(final["model"], reference["model"], atol=1e-5)
    assert final["results"][3]["train"]["loss"] == pytest.approx(reference["results"][3]["train"]["loss"], abs=1e-5)
    if then == 1:
        consolidated = resumed[0]["consolidated"]
        assert_close(consolidated, final["model"], atol=0)


def test_an_incomplete_dcp_checkpoint_is_named_and_skipped(tmp_path):
    directory = tmp_path / "checkpoints" / "dcp" / "latest-s1-1"
    directory.mkdir(parents=True)
    pointer = tmp_path / "checkpoints" / "latest.dcp"
    pointer.write_text('{"path": "dcp/latest-s1-1"}')
    assert os.path.samefile(resolve_checkpoint(str(pointer)), directory)
    with pytest.raises(CorruptFileError, match=r"\.metadata is missing"):
        FSDPRunner.read_checkpoint_file(str(pointer))
    with pytest.raises(FileNotFoundError, match="nowhere.dcp"):
        FSDPRunner.read_checkpoint_file(str(tmp_path / "nowhere.dcp"))


def test_fsdp_on_one_process_resumes_as_fsdp_and_loads_pretrained_weights_either_way(tmp_path, distributed_runner):
    report = run(distributed_runner, tmp_path, "single", nproc=1)[0]
    # Runner(platform="fsdp") and from_checkpoint of its checkpoint are FSDP runners; platform "torch" is not.
    assert report["types"] == [True, True, True, False]
    assert report["epoch_begin"] == 1
    assert_close(report["resumed"]["model"], report["final"]["model"], atol=0)
    assert_close(report["resumed"]["ema"], report["final"]["ema"], atol=0)
    assert_close(report["pretrained"], report["final"]["model"], atol=0)
    assert_close(report["plain"], report["final"]["model"], atol=0)
