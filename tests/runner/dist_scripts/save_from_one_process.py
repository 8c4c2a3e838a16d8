"""Two processes train, then call `save_checkpoint(name="manual")` on rank 0 only, rank 1 only, or both.

Usage: save_from_one_process.py OUTPUT_DIR PROJECT_ROOT {main,rank1,all}

Writes `OUTPUT_DIR/rank{r}.json` with the final parameters of a run that continues after the save, so the test can
compare them with a run resumed from the manual checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from toys import ResumableRunner, make_config

import danling as dl


def parameters(runner: dl.TorchRunner) -> list[float]:
    return [
        value for tensor in runner.unwrap(runner.model).state_dict().values() for value in tensor.flatten().tolist()
    ]


def main() -> None:
    output, root, who = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    config = make_config(root, epoch_end=2)
    runner = ResumableRunner(config)
    runner.train()
    callers = {"main": (0,), "rank1": (1,), "all": (0, 1)}[who]
    if runner.rank in callers:
        runner.save_checkpoint(name="manual")
    # Go on training in the same processes: the resumed run must end where this one does.
    runner.config.epoch_begin, runner.config.epoch_end = 2, 4
    runner.train()
    report = {"dir": runner.dir, "parameters": parameters(runner), "rank": runner.rank}
    (output / f"rank{runner.rank}.json").write_text(json.dumps(report))

    manual = Path(runner.checkpoint_dir) / "manual.pth"
    if who != "rank1":
        resumed = ResumableRunner.from_checkpoint(str(manual))
        resumed.config.epoch_end = 4
        resumed.train()
        resumed_report = {"parameters": parameters(resumed), "epochs": resumed.config.epochs}
        (output / f"resumed{runner.rank}.json").write_text(json.dumps(resumed_report))


if __name__ == "__main__":
    main()
