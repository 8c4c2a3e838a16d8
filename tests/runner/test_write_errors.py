"""A checkpoint write that fails part-way through `train()`: the error names the file, the previous one survives."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# Trains two epochs unlimited, then limits file sizes to half the checkpoint (results files stay far below it) and
# trains a third epoch: its results are written, its checkpoint is not. SIGXFSZ is ignored so the write fails with
# "File too large" instead of killing the process. The last stdout line reports what happened, as JSON.
CHILD = """
import json, os, resource, shutil, signal, sys
import torch
from torch import nn
import danling as dl
from toys import make_config, regression_data


class WideRunner(dl.TorchRunner):
    def __init__(self, config):
        super().__init__(config)
        self.model = nn.Sequential(nn.Linear(4, 8192), nn.Linear(8192, 1))  # a checkpoint of about 400 KiB
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-4)
        self.datasets.train = regression_data(32, seed=0)
        self.datasets.val = regression_data(16, seed=1)


root, copy = sys.argv[1], sys.argv[2]
runner = WideRunner(make_config(root, epoch_end=2))
runner.train()
latest = os.path.join(runner.checkpoint_dir, "latest.pth")
shutil.copyfile(latest, copy)
limit = os.path.getsize(latest) // 2
largest_result = max(os.path.getsize(os.path.join(runner.dir, name)) for name in os.listdir(runner.dir)
                     if name.endswith(".json"))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
runner.config.epoch_begin, runner.config.epoch_end = 2, 3
report = {"latest": latest, "limit": limit, "largest_result": largest_result}
try:
    runner.train()
except Exception as error:
    report.update(type=type(error).__name__, message=str(error), errno=getattr(error, "errno", None))
report.update(epochs_with_results=sorted(runner.results), checkpoint_files=sorted(os.listdir(runner.checkpoint_dir)))
print(json.dumps(report))
"""


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ") or os.name != "posix", reason="needs RLIMIT_FSIZE and SIGXFSZ")
def test_train_whose_checkpoint_write_fails_part_way_raises_naming_it_and_keeps_the_previous_one(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), str(REPO_ROOT / "tests"), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    copy = tmp_path / "latest-before.pth"
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "runs"), str(copy)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert completed.returncode == 0, f"STDOUT:\n{completed.stdout}\nSTDERR:\n{completed.stderr}"
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["largest_result"] < report["limit"], report  # only the checkpoint can have failed

    assert report.get("type") == "OSError", report
    assert report["errno"] == errno.EFBIG
    assert report["latest"] in report["message"]
    # The third epoch ran, and its results were saved before its checkpoint failed.
    assert report["epochs_with_results"] == [0, 1, 2]
    latest = Path(report["latest"])
    assert latest.read_bytes() == copy.read_bytes()
    assert not [name for name in report["checkpoint_files"] if name.endswith((".tmp", ".retiring", ".link"))]
