"""Train a few short epochs as a person would watch them: bars, step lines, a print and a warning mid-epoch.

Usage: terminal_train.py ROOT [--no-log] [--steps]. Ends with the results table, as `examples/digits.py` does.
With `--steps`, the same data is trained by steps (30 steps, evaluating every 10: inside the passes).
"""

from __future__ import annotations

import os
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from toys import ClassificationRunner, make_config

# 96 training samples in 12 batches, 101 validation samples in 13; a step line every 3 batches.
SETTINGS = {"epoch_end": 3, "samples": 96, "val_samples": 101, "with_metrics": True, "log_interval": 3}
# The batch after which the script prints and warns, in every training epoch.
NOTE_AT = 6


class WatchedRunner(ClassificationRunner):
    """Slow enough for the bar to be redrawn between batches; prints (and, with a log, warns) mid-epoch."""

    def train_step(self, batch):
        loss = super().train_step(batch)
        time.sleep(0.03)
        if self.config.iters % 12 == NOTE_AT:
            print(f"a note from the script at iteration {self.config.iters}")
            if self.config.log:  # Python writes warnings to stderr itself unless the runner's log captures them
                warnings.warn(f"a warning at iteration {self.config.iters}", UserWarning, stacklevel=1)
        return loss

    def evaluate_step(self, batch, model=None):
        time.sleep(0.01)
        return super().evaluate_step(batch, model)


if __name__ == "__main__":
    settings = dict(SETTINGS)
    if "--steps" in sys.argv:
        del settings["epoch_end"]
        settings.update(step_end=30, eval_interval=10)
    config = make_config(sys.argv[1], **settings)
    config.log = "--no-log" not in sys.argv
    runner = WatchedRunner(config)
    runner.train()
    print(runner.results_table(["train.loss", "val.loss", "val.acc"]))
    print(f"run directory: {runner.dir}")
