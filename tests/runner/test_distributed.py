"""Two real processes on gloo: DDP training, evaluation that counts each sample once, files written once."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from toys import ClassificationRunner, make_config

SCRIPT = Path(__file__).parent / "dist_scripts" / "train_two_processes.py"


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, distributed_runner):
    output = tmp_path_factory.mktemp("dist")
    distributed_runner(SCRIPT, str(output), str(output / "experiments"))
    return [json.loads((output / f"rank{rank}.json").read_text()) for rank in (0, 1)], output


def test_parameters_are_identical_on_both_ranks_after_training(two_ranks):
    (rank0, rank1), _ = two_ranks
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["parameters"] == rank1["parameters"]


def test_both_ranks_share_run_id_directory_and_seed(two_ranks):
    (rank0, rank1), _ = two_ranks
    assert rank0["id"] == rank1["id"]
    assert rank0["dir"] == rank1["dir"]
    assert isinstance(rank0["seed"], int)
    assert rank0["seed"] == rank1["seed"]


def test_logged_training_loss_is_the_mean_over_ranks(two_ranks):
    (rank0, rank1), _ = two_ranks
    pairs = [(a, b) for a, b in zip(rank0["logged"], rank1["logged"]) if a["split"] == "train"]
    assert pairs and len(rank0["logged"]) == len(rank1["logged"])
    assert any(a["local"] != b["local"] for a, b in pairs), "equal local losses could not reveal a missing reduction"
    for a, b in pairs:
        mean = (a["local"] + b["local"]) / 2
        assert a["logged"] == pytest.approx(mean, rel=1e-6)
        assert b["logged"] == pytest.approx(mean, rel=1e-6)


def test_only_rank_zero_writes_files(two_ranks):
    (rank0, rank1), output = two_ranks
    assert rank1["writes"] == [], "rank 1 changed the filesystem under the project root"
    # Every file and directory under the project root was created by rank 0 (under its final name), so nothing
    # there comes from a write the audit of rank 1 could have missed.
    made_by_rank0 = {path for event, path in rank0["writes"] if event in ("open", "os.mkdir", "os.rename", "os.link")}
    on_disk = {os.path.abspath(path) for path in (output / "experiments").rglob("*")}
    latest = os.path.join(rank0["dir"], "checkpoints", "latest.pth")
    assert latest in on_disk, sorted(on_disk)
    assert sorted(on_disk - made_by_rank0) == []


def test_evaluation_counts_every_sample_once(two_ranks, tmp_path):
    (rank0, rank1), _ = two_ranks
    config = make_config(tmp_path, seed=rank0["seed"], samples=96, val_samples=101, with_metrics=True)
    single = ClassificationRunner(config)
    expected = single.evaluate(["val"])["val"].dict()
    assert rank0["initial_eval"].keys() == expected.keys()
    for key, value in expected.items():
        # An untrained model may predict one class only, where MCC is undefined (nan) on both sides alike.
        assert rank0["initial_eval"][key] == pytest.approx(value, rel=1e-5, nan_ok=True), key
        assert rank1["initial_eval"][key] == pytest.approx(value, rel=1e-5, nan_ok=True), key


def test_infer_gathers_predictions_in_dataset_order(two_ranks, tmp_path):
    (rank0, rank1), _ = two_ranks
    assert rank0["predictions"] == rank1["predictions"]
    assert len(rank0["predictions"]) == 101
    single = ClassificationRunner(make_config(tmp_path, seed=rank0["seed"], samples=96, val_samples=101))
    model = single.model
    with torch.no_grad():
        for parameter, values in zip(model.parameters(), rank0["parameters"]):
            parameter.copy_(torch.tensor(values).view_as(parameter))
    expected = single.infer("val")
    torch.testing.assert_close(torch.tensor(rank0["predictions"]), expected, rtol=1e-5, atol=1e-6)


EMA_SCRIPT = Path(__file__).parent / "dist_scripts" / "ema_broadcast.py"
EMA_PLATFORMS = ["torch", "fsdp"] + (["accelerate"] if importlib.util.find_spec("accelerate") else [])


@pytest.fixture(scope="module")
def emas(tmp_path_factory, distributed_runner):
    """The EMA each of two processes holds after construction, per platform and kind of EMA."""
    output = tmp_path_factory.mktemp("ema")
    distributed_runner(EMA_SCRIPT, str(output), str(output / "experiments"), *EMA_PLATFORMS)
    return [torch.load(output / f"ema-rank{rank}.pt") for rank in (0, 1)]


@pytest.mark.parametrize("kind", ["averaged", "update"])
@pytest.mark.parametrize("platform", EMA_PLATFORMS)
def test_every_process_starts_from_rank_zeros_ema(emas, platform, kind):
    rank0, rank1 = (report[platform, kind] for report in emas)
    # Seeded by rank, the processes built different EMAs (parameters and batch-norm buffers alike) ...
    assert all(not torch.equal(rank0["built"][key], rank1["built"][key]) for key in ("0.weight", "1.running_mean"))
    # ... and hold rank 0's once constructed, buffers included.
    assert rank0["constructed"].keys() == rank1["constructed"].keys()
    for key, value in rank0["constructed"].items():
        assert torch.equal(value, rank1["constructed"][key]), key
        assert torch.equal(value, rank0["built"][key]), key
