"""Resume equivalence: an interrupted run, resumed, ends bit for bit where an uninterrupted run ends."""

from __future__ import annotations

import os

import pytest
import torch
from toys import Interrupted, ResumableRunner, assert_bitwise_equal, final_state, make_config

import danling as dl
from danling.utils.io import CorruptFileError

# 60 training samples in batches of 8: 8 micro-batches per epoch, the last one holding 4 samples.
SETTINGS = {"epoch_end": 3, "samples": 60, "val_samples": 25}


def straight_run(root, **kwargs) -> dict:
    runner = ResumableRunner(make_config(root / "straight", **SETTINGS, **kwargs))
    runner.train()
    return final_state(runner)


def interrupted_run(root, fail_at_iter: int, **kwargs) -> ResumableRunner:
    runner = ResumableRunner(make_config(root / "interrupted", **SETTINGS, fail_at_iter=fail_at_iter, **kwargs))
    with pytest.raises(Interrupted):
        runner.train()
    return runner


def finish(runner: ResumableRunner) -> dict:
    runner.config.fail_at_iter = None
    runner.train()
    return final_state(runner)


CASES = {
    # name: (micro-batch after which the run dies, extra settings, steps the checkpoint must hold)
    "epoch_boundary": (9, {}, 8),
    "middle_of_epoch": (12, {"checkpoint_interval": 1}, 11),
    "middle_of_accumulation_window": (13, {"checkpoint_interval": 1, "accum_steps": 2}, 6),
}


@pytest.mark.parametrize("case", list(CASES))
def test_resume_from_checkpoint_matches_an_uninterrupted_run(tmp_path, case):
    fail_at_iter, extra, checkpoint_steps = CASES[case]
    expected = straight_run(tmp_path, **extra)
    interrupted = interrupted_run(tmp_path, fail_at_iter, **extra)
    latest = os.path.join(interrupted.checkpoint_dir, "latest.pth")
    assert dl.load(latest)["runner"]["steps"] == checkpoint_steps
    resumed = ResumableRunner.from_checkpoint(latest)
    assert resumed.dir == interrupted.dir
    assert_bitwise_equal(finish(resumed), expected)


def test_resume_through_config_checkpoint_matches(tmp_path):
    expected = straight_run(tmp_path, checkpoint_interval=1)
    interrupted = interrupted_run(tmp_path, 12, checkpoint_interval=1)
    latest = os.path.join(interrupted.checkpoint_dir, "latest.pth")
    config = make_config(tmp_path / "interrupted", **SETTINGS, checkpoint_interval=1, checkpoint=latest)
    resumed = ResumableRunner(config)
    assert resumed.dir == interrupted.dir
    assert_bitwise_equal(finish(resumed), expected)


def test_resume_true_finds_the_newest_latest_of_the_run(tmp_path):
    expected = straight_run(tmp_path, checkpoint_interval=1)
    interrupted = interrupted_run(tmp_path, 12, checkpoint_interval=1)
    config = make_config(tmp_path / "interrupted", **SETTINGS, checkpoint_interval=1, fail_at_iter=12, resume=True)
    resumed = ResumableRunner(config)
    assert resumed.config.checkpoint == os.path.join(interrupted.checkpoint_dir, "latest.pth")
    assert resumed.dir == interrupted.dir
    assert_bitwise_equal(finish(resumed), expected)


def test_resume_true_without_a_checkpoint_starts_fresh(tmp_path):
    runner = ResumableRunner(make_config(tmp_path, **SETTINGS, resume=True))
    assert runner.config.checkpoint is None
    assert runner.config.epoch_begin == 0


def test_load_checkpoint_resumes_best_tracking_and_patience(tmp_path):
    first = ResumableRunner(make_config(tmp_path, **SETTINGS, score_name="acc"))
    first.config.epoch_end = 2
    first.train()
    resumed = ResumableRunner.from_checkpoint(os.path.join(first.checkpoint_dir, "latest.pth"))
    assert resumed.best_index == first.best_index
    assert resumed.best_score == first.best_score
    assert resumed.scores.dict() == first.scores.dict()


def one_epoch_latest(root) -> tuple[ResumableRunner, str]:
    runner = ResumableRunner(make_config(root, **SETTINGS))
    runner.config.epoch_end = 1
    runner.train()
    return runner, os.path.join(runner.checkpoint_dir, "latest.pth")


def test_truncated_checkpoint_names_the_file(tmp_path):
    runner, latest = one_epoch_latest(tmp_path)
    with open(latest, "r+b") as fp:
        fp.truncate(os.path.getsize(latest) // 2)
    with pytest.raises(CorruptFileError, match="latest.pth"):
        runner.load_checkpoint(latest)


def test_corrupted_checkpoint_is_detected_by_its_checksum(tmp_path):
    _, latest = one_epoch_latest(tmp_path)
    with open(latest, "r+b") as fp:
        fp.seek(os.path.getsize(latest) // 2)
        byte = fp.read(1)
        fp.seek(-1, os.SEEK_CUR)
        fp.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CorruptFileError, match="latest.pth"):
        dl.load(latest)


def test_resume_true_falls_back_to_the_newest_good_checkpoint(tmp_path, capsys):
    settings = {**SETTINGS, "save_interval": 1}
    runner = ResumableRunner(make_config(tmp_path, **settings))
    runner.train()
    latest = os.path.join(runner.checkpoint_dir, "latest.pth")
    with open(latest, "rb") as fp:
        head = fp.read(100)
    # A new, truncated file in its place (in-place truncation would also cut epoch-2.pth, a hard link to it).
    os.unlink(latest)
    with open(latest, "wb") as fp:
        fp.write(head)
    resumed = ResumableRunner(make_config(tmp_path, **settings, resume=True))
    assert resumed.config.checkpoint == os.path.join(runner.checkpoint_dir, "epoch-2.pth")
    assert "skipping" in capsys.readouterr().err
    assert resumed.config.epoch_begin == 3
    assert torch.equal(resumed.model[0].weight, runner.model[0].weight)


def test_resume_without_a_fixed_seed_keeps_the_drawn_seed(tmp_path):
    settings = {**SETTINGS, "checkpoint_interval": 1, "seed": None}
    runner = ResumableRunner(make_config(tmp_path, **settings, fail_at_iter=12))
    drawn = runner.config.seed
    with pytest.raises(Interrupted):
        runner.train()
    resumed = ResumableRunner(make_config(tmp_path, **settings, fail_at_iter=12, resume=True))
    assert resumed.config.checkpoint is not None
    assert resumed.config.seed == drawn
    assert resumed.dir == runner.dir
