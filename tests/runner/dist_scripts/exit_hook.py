"""Two processes train for an epoch; an exit hook registered before the runner exists records, in
OUTPUT/exit-rank{r}.json, whether the process group is still initialised when the interpreter exits.

Usage: exit_hook.py OUTPUT ROOT

`atexit` runs its hooks last registered, first run: this one, registered before the runner registers its
teardown, runs after it, and so sees what the teardown left.
"""

from __future__ import annotations

import atexit
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from torch import distributed as dist
from toys import RegressionRunner, make_config


def record(path: str) -> None:
    with open(path, "w", encoding="utf-8") as file:
        json.dump({"initialized": dist.is_available() and dist.is_initialized()}, file)


def main() -> None:
    output, root = sys.argv[1], sys.argv[2]
    atexit.register(record, os.path.join(output, f"exit-rank{os.environ['RANK']}.json"))
    runner = RegressionRunner(make_config(root, epoch_end=1, samples=32))
    runner.train()
    print(f"trained on {runner.world_size} processes", flush=True)


if __name__ == "__main__":
    main()
