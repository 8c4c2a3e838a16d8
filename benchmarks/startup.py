"""Start-up: a fresh interpreter that imports torch, against one that imports danling and touches its runner.

`danling` is lazy (its subpackages load on first use), so the danling command touches `danling.Runner`,
`danling.TorchRunner` and `danling.Config`, as a training script does before it builds its runner. A third command
imports torch and chanfig, the floor for any runner built on chanfig. The commands run in fresh interpreters
(bytecode caches on, written by the warm-up), interleaved, the order alternating; the figures are medians of wall
time (or, with `--clock cpu`, of the CPU time of the child, steadier on a busy machine).

Whole interpreters differ from one start to the next by more than danling costs, so a second measure pairs the
parts inside each interpreter: it times `import torch`, then `import chanfig`, then danling's imports, one after
the other in the same process, and gives the median over the interpreters of `(torch + chanfig + danling) / torch`.
Each interpreter is its own baseline: what drifts between starts (the page cache, the machine's load) cancels.

    python benchmarks/startup.py [--repeats 21] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "import torch": "import torch",
    # The floor for any runner built on chanfig, a runtime dependency: chanfig imports yaml, lazy_imports and
    # tomllib when it is imported, before a line of danling runs.
    "import torch, chanfig": "import torch; import chanfig",
    "import danling, touch the runner": "import danling; danling.Runner; danling.TorchRunner; danling.Config",
}


def child_env() -> dict[str, str]:
    # Bytecode caches written and read, as for an installed package (pip compiles them): with
    # PYTHONDONTWRITEBYTECODE set (as on some CI machines), every start would compile danling's source anew.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONWARNINGS": "ignore"}


def timed(code: str, clock: str) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=child_env())
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu if clock == "cpu" else wall


# One interpreter, three parts timed in turn; it prints the three durations in seconds.
PAIRED = """
import time
start = time.perf_counter()
import torch
torch_done = time.perf_counter()
import chanfig
chanfig_done = time.perf_counter()
import danling
danling.Runner; danling.TorchRunner; danling.Config
danling_done = time.perf_counter()
print(torch_done - start, chanfig_done - torch_done, danling_done - chanfig_done)
"""


def paired(repeats: int) -> list[tuple[float, float, float]]:
    runs = []
    for _ in range(repeats + 1):  # the first warms the caches and is dropped
        command = [sys.executable, "-c", PAIRED]
        output = subprocess.run(command, check=True, capture_output=True, text=True, env=child_env()).stdout
        torch, chanfig, danling = map(float, output.split())
        runs.append((torch, chanfig, danling))
    return runs[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args()
    names = list(COMMANDS)
    for name in names:  # warm-up: the page cache, and bytecode caches where they are written
        timed(COMMANDS[name], args.clock)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            times[name].append(timed(COMMANDS[name], args.clock))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"start-up, median of {args.repeats} interleaved fresh interpreters ({args.clock} clock)")
    for name, seconds in medians.items():
        print(f"  {name:<34} {seconds * 1e3:8.1f} ms")
    danling, torch, floor = (
        medians[name] for name in ("import danling, touch the runner", "import torch", "import torch, chanfig")
    )
    print(f"  danling / torch: {danling / torch:.3f}")
    print(f"  torch + chanfig / torch: {floor / torch:.3f} (the floor)")
    print(f"  danling / (torch + chanfig): {danling / floor:.3f}")

    runs = paired(args.repeats)
    median = statistics.median
    print(f"start-up, each part timed inside the same interpreter (wall clock), median of {args.repeats}")
    print(f"  import torch                       {median(run[0] for run in runs) * 1e3:8.1f} ms")
    print(f"  then import chanfig                {median(run[1] for run in runs) * 1e3:8.1f} ms")
    print(f"  then danling, touch the runner     {median(run[2] for run in runs) * 1e3:8.1f} ms")
    ratios = sorted(sum(run) / run[0] for run in runs)
    floors = [(run[0] + run[1]) / run[0] for run in runs]
    print(f"  (torch + chanfig + danling) / torch: {median(ratios):.3f} (from {ratios[0]:.3f} to {ratios[-1]:.3f})")
    print(f"  (torch + chanfig) / torch: {median(floors):.3f} (the floor)")


if __name__ == "__main__":
    main()
