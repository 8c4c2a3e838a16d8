"""One run of `ResumableRunner` configured from the command line, as a user's script is: a test launches it on one
process, stops it, and launches the same command again with `--resume true` on two.

Usage: relaunch.py REPORT [--key value ...] — the main process writes what the run did to REPORT (JSON), or the
`ValueError` that refused it before training (`{"error": message}`).

`STOP_AFTER_ITER=N` in the environment raises `Interrupted` right after micro-batch N, as a crash would: the stop
comes from outside the config, so the relaunched command (and the run's id) is the same.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from toys import Interrupted, ResumableRunner

import danling as dl


class StoppedRunner(ResumableRunner):
    """`ResumableRunner` that crashes after the micro-batch `STOP_AFTER_ITER` names, if it names one."""

    def train_step(self, batch):
        loss = super().train_step(batch)
        stop = os.environ.get("STOP_AFTER_ITER")
        if stop is not None and self.config.iters == int(stop):
            raise Interrupted(f"stopped after micro-batch {self.config.iters}")
        return loss


def main() -> None:
    report_path = sys.argv[1]
    # 48 samples in batches of 8: 6 micro-batches an epoch on one process, 3 on each of two.
    config = dl.Config(log=False, seed=0, samples=48, val_samples=16, dropout=0.0)
    config.dataloader.batch_size = 8
    config.parse(sys.argv[2:])
    try:
        runner = StoppedRunner(config)
    except ValueError as error:  # a run refused before training: the test reads why
        if int(os.environ.get("RANK", "0")) == 0:
            with open(report_path, "w") as file:
                json.dump({"error": str(error)}, file)
        return
    report = {
        "id": runner.id,
        "run_id": runner.config.run_id,
        "dir": os.path.abspath(runner.dir),
        "checkpoint": runner.config.checkpoint,
        "epoch_begin": runner.config.epoch_begin,
        "world_size": runner.world_size,
    }
    try:
        runner.train()
    except Interrupted:
        report["stopped_at_iter"] = runner.config.iters
    report["epochs"] = sorted(int(index) for index in runner.results)
    if runner.is_main_process:
        with open(report_path, "w") as file:
            json.dump(report, file)


if __name__ == "__main__":
    main()
