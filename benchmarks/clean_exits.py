"""Count clean exits: run the two-process snippet under torchrun N times and count the runs that did not end with
exit status 0, and the runs whose output holds an abort at exit (`terminate called ...`, a core dump).

Run it with:

    python benchmarks/clean_exits.py --runs 100

A rare `terminate called without an active exception` at exit was once seen in CI; this is the figure that says
whether it comes back. Each run gets a fresh port; the launcher is stopped (and its workers with it) if a run
takes longer than `--timeout` seconds, which counts as a failure too.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SNIPPET = REPO_ROOT / "examples" / "snippets" / "distributed.py"
ABORTS = ("terminate called", "core dumped", "Aborted", "Segmentation fault")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def one_run(timeout: float) -> tuple[int | None, str]:
    """The launcher's exit status (`None` if it timed out) and its output."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={free_port()}", str(SNIPPET),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        output, _ = launcher.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        launcher.terminate()  # torchrun stops its workers on SIGTERM
        output, _ = launcher.communicate(timeout=60)
        return None, output
    return launcher.returncode, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    failed, aborted = [], []
    start = time.perf_counter()
    for index in range(args.runs):
        status, output = one_run(args.timeout)
        if status != 0:
            failed.append((index, status))
        if any(marker in output for marker in ABORTS):
            aborted.append(index)
            print(f"run {index}: abort at exit:\n{output[-2000:]}", file=sys.stderr)
    seconds = time.perf_counter() - start
    clean = args.runs - len({index for index, _ in failed} | set(aborted))
    print(f"{clean} of {args.runs} runs ended cleanly ({seconds:.0f} s)")
    print(f"non-zero exit: {len(failed)} {failed}")
    print(f"abort messages: {len(aborted)} {aborted}")


if __name__ == "__main__":
    main()
