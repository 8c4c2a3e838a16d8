"""Train slowly, printing each micro-batch, so a test can send SIGTERM mid-run.  Usage: preemptible_train.py ROOT"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from toys import SlowRunner, make_config

SETTINGS = {"epoch_end": 3, "samples": 60, "val_samples": 25}


if __name__ == "__main__":
    runner = SlowRunner(make_config(sys.argv[1], **SETTINGS))
    print(f"checkpoints {runner.checkpoint_dir}", flush=True)
    runner.train()
    print("finished", flush=True)
