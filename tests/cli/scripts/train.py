"""Train the toy classifier slowly, printing each micro-batch, so a test can stop it with SIGTERM.

Usage: train.py --project_root ROOT --run_name NAME [other config overrides]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from toys import SlowRunner, make_config

if __name__ == "__main__":
    config = make_config(".", epoch_end=3, samples=60, val_samples=25, score_name="acc")
    config.parse()
    runner = SlowRunner(config)
    print(f"dir {runner.dir}", flush=True)
    runner.train()
    print("finished", flush=True)
