"""How many launcher attempts a run needs per worker killed: restarts spent on anything but the kills are wasted.

Each trial launches `tests/runner/dist_scripts/elastic_kill.py` under `python -m torch.distributed.run
--nproc_per_node 2 --max-restarts R` with `resume=True`; the script kills one of its workers with SIGKILL at
KILLS seeded micro-batches (one kill per attempt). A run that wastes nothing needs KILLS + 1 attempts; a restart
whose process group cannot connect (`Gloo connectFullMesh failed ... Connection refused`) costs one more.

Usage: python benchmarks/elastic_restarts.py [--trials 3] [--kills 3] [--max-restarts 10] [--timeout 300]

Prints one line per trial (attempts, retries announced on stderr, seconds) and the total.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "runner" / "dist_scripts" / "elastic_kill.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def trial(kills: int, seed: int, max_restarts: int, timeout: float) -> dict:
    output = tempfile.mkdtemp(prefix="elastic-")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH")]))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--max-restarts={max_restarts}",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(SCRIPT), output, str(kills), str(seed),
        "--no-straight",
    ]  # fmt: skip
    start = time.monotonic()
    # A session of its own: a run that hangs is ended with every worker, not only the launcher.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)  # fmt: skip
    try:
        _, stderr = process.communicate(timeout=timeout)
        returncode = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        returncode = None
    seconds = time.monotonic() - start
    report_path = os.path.join(output, "report.json")
    attempts = None
    if returncode == 0:
        with open(report_path) as file:
            attempts = json.load(file)["restart"] + 1
    return {
        "returncode": returncode,
        "attempts": attempts,
        "connect_failures": stderr.count("connectFullMesh failed"),
        "retries": stderr.count("retrying the process group"),
        "seconds": round(seconds, 1),
        **({"stderr": stderr[-600:]} if returncode not in (0, None) else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--max-restarts", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    attempts = []
    for seed in range(args.trials):
        result = trial(args.kills, seed, args.max_restarts, args.timeout)
        print(f"trial {seed}: {json.dumps(result)}", flush=True)
        attempts.append(result["attempts"])
    done = [a for a in attempts if a is not None]
    print(
        f"{len(done)}/{len(attempts)} trials finished; attempts for {args.kills} kills: {done} "
        f"(the least possible is {args.kills + 1} each)"
    )


if __name__ == "__main__":
    main()
