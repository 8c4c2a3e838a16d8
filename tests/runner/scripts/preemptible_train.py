"""Train slowly, printing each micro-batch, so a test can send SIGTERM mid-run.

Usage: preemptible_train.py ROOT [SETTINGS_JSON]  (the settings default to 3 epochs of 60 samples; a `delay`
setting sets the seconds slept after each micro-batch)
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from toys import SlowRunner, make_config

SETTINGS = {"epoch_end": 3, "samples": 60, "val_samples": 25}


if __name__ == "__main__":
    settings = json.loads(sys.argv[2]) if len(sys.argv) > 2 else SETTINGS
    SlowRunner.delay = settings.pop("delay", SlowRunner.delay)
    runner = SlowRunner(make_config(sys.argv[1], **settings))
    print(f"checkpoints {runner.checkpoint_dir}", flush=True)
    runner.train()
    print("finished", flush=True)
