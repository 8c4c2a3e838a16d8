"""Checkpoints that are directories behind pointer files (FSDP's `.dcp`, DeepSpeed's `.ds`, Accelerate's
`.accelerate`): old epoch snapshots pruned with their directories, and damage done after a save found on reading.

Each run is one process in this process: these platforms make a process group even then, which `own_process_group`
(conftest.py) tears down after the test.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from toys import ResumableRunner, make_config

from danling.runner.fsdp_runner import FSDPRunner
from danling.runner.pointers import resolve_checkpoint
from danling.utils.io import CorruptFileError

# 16 training samples and 8 for validation: 2 batches and 1 per epoch, so four epochs take seconds.
SMALL = {"samples": 16, "val_samples": 8}


def pointed_at(checkpoint_dir: str, extension: str) -> dict[str, str]:
    """Every pointer in `checkpoint_dir`, by name, with the directory it names."""
    paths = Path(checkpoint_dir).glob(f"*{extension}")
    return {path.name: os.path.normpath(resolve_checkpoint(str(path))) for path in paths}


@pytest.mark.usefixtures("own_process_group")
@pytest.mark.parametrize("platform", ["fsdp", "deepspeed", "accelerate"])
def test_max_epoch_checkpoints_prunes_old_epoch_pointers_and_the_directories_they_named(tmp_path, platform):
    if platform != "fsdp":
        pytest.importorskip(platform, reason=f"{platform} is not installed: pip install 'danling[{platform}]'")
    config = make_config(tmp_path, platform=platform, epoch_end=4, save_interval=1, max_epoch_checkpoints=2, **SMALL)
    runner = ResumableRunner(config)
    runner.train()
    extension, checkpoint_dir = runner.checkpoint_extension, runner.checkpoint_dir
    assert extension != ".pth"
    pointers = pointed_at(checkpoint_dir, extension)
    # The two newest snapshots only; an older one kept would keep its directory alive with it.
    snapshots = sorted(name for name in pointers if name.startswith("epoch-"))
    assert snapshots == [f"epoch-2{extension}", f"epoch-3{extension}"], snapshots
    assert {f"latest{extension}", f"best{extension}"} <= set(pointers)
    states = Path(checkpoint_dir, runner.checkpoint_states_dir)
    directories = {os.path.normpath(path) for path in states.iterdir() if path.is_dir()}
    assert directories == set(pointers.values()), (sorted(directories), pointers)
    assert not list(Path(checkpoint_dir).glob("*.pth")), "a directory checkpoint left a .pth file"


@pytest.mark.usefixtures("own_process_group")
def test_a_dcp_shard_truncated_after_the_save_is_named_with_its_sizes_and_resume_skips_it(tmp_path, capsys):
    settings = {"platform": "fsdp", "epoch_end": 2, "save_interval": 1, **SMALL}
    runner = ResumableRunner(make_config(tmp_path, **settings))
    runner.train()
    checkpoint_dir = runner.checkpoint_dir
    latest = os.path.join(checkpoint_dir, "latest.dcp")
    directory = resolve_checkpoint(latest)
    shard = os.path.join(directory, "__0_0.distcp")
    size = os.path.getsize(shard)
    # The save finished (`.metadata` is there): the damage comes later, as a disk or a copy would do it.
    with open(shard, "r+b") as file:
        file.truncate(size // 2)
    message = rf"{re.escape(directory)} is incomplete: __0_0\.distcp holds {size // 2} bytes, the metadata needs (\d+)"
    with pytest.raises(CorruptFileError, match=message) as raised:
        FSDPRunner.read_checkpoint_file(latest)
    needed = int(re.search(message, str(raised.value)).group(1))
    assert size // 2 < needed <= size
    capsys.readouterr()

    # latest.dcp and epoch-1.dcp name the damaged directory: resume=True says so and takes epoch-0.dcp.
    resumed = ResumableRunner(make_config(tmp_path, resume=True, **settings))
    err = capsys.readouterr().err
    for name in ("latest.dcp", "epoch-1.dcp"):
        assert f"resume: skipping {os.path.join(checkpoint_dir, name)}: " in err and "__0_0.distcp holds" in err, err
    assert resumed.config.checkpoint == os.path.join(checkpoint_dir, "epoch-0.dcp")
    assert resumed.config.epoch_begin == 1
