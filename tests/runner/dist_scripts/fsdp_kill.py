"""An FSDP run whose processes are killed with SIGKILL while DCP writes their shards, and the launch that resumes it.

Usage: fsdp_kill.py OUTPUT ROOT INTERVAL [KILL_AT KILL_RANKS]

Trains `ResumableRunner` on FSDP for 2 epochs (3 optimizer steps each on 2 processes) with `resume=True`, run id
`killed`, under ROOT, saving `latest` every INTERVAL steps and at each epoch's end. Every launch records the
checkpoint it resumed from in `OUTPUT/launch-rank{r}.json`.

With KILL_AT and KILL_RANKS (comma-separated ranks), the processes in KILL_RANKS kill themselves with SIGKILL
during the KILL_AT-th checkpoint this launch saves: inside DCP's write of their shard file, once `KILL_BYTES` of it
are on disk. Right before, each writes `OUTPUT/killed-rank{r}.json` with the file and the bytes written. The
storage writer DCP uses is the stock one; only its file streams are replaced by ones that kill the process. Nothing
in the runner is changed.

Without them, the run trains to its end, then an uninterrupted run of the same config (run id `straight`) trains
too; both final states go to `OUTPUT/final-rank{r}.pt`.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from contextlib import contextmanager

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import torch
import torch.distributed.checkpoint as dcp
from fsdp_scenarios import SAMPLES, full
from torch.distributed.checkpoint.filesystem import FileSystem
from toys import ResumableRunner, make_config

KILL_BYTES = 2048


class KillingFile(io.FileIO):
    """A shard file that, once `KILL_BYTES` are written and synced, records that and kills its process."""

    def __init__(self, path: str, marker: str) -> None:
        super().__init__(path, "wb")
        self.marker = marker
        self.written = 0

    def write(self, data) -> int:
        count = super().write(data)
        self.written += count
        if self.written >= KILL_BYTES:
            os.fsync(self.fileno())
            with open(self.marker, "w", encoding="utf-8") as file:
                json.dump({"file": str(self.name), "bytes": self.written}, file)
                file.flush()
                os.fsync(file.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return count


class KillingFileSystem(FileSystem):
    """DCP's local file system, except that shard files (`.distcp`) are `KillingFile`s."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    @contextmanager
    def create_stream(self, path, mode):
        if not str(path).endswith(".distcp"):
            with super().create_stream(path, mode) as stream:
                yield stream
            return
        with KillingFile(str(path), self.marker) as stream:
            yield stream


def install_killer(kill_at: int, marker: str) -> None:
    """Make the `kill_at`-th `FileSystemWriter` created in this process (one per DCP save) write through a killer."""
    stock = dcp.FileSystemWriter
    created = 0

    class Writer(stock):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs) -> None:
            nonlocal created
            super().__init__(*args, **kwargs)
            created += 1
            if created == kill_at:
                self.fs = KillingFileSystem(marker)

    # `danling.runner.dcp.dcp_save` looks the writer up on `torch.distributed.checkpoint` at every save.
    dcp.FileSystemWriter = Writer  # type: ignore[misc]


def runner(root: str, run_id: str, interval: int) -> ResumableRunner:
    settings = {"epoch_end": 2, "accum_steps": 2, "checkpoint_interval": interval, **SAMPLES}
    return ResumableRunner(make_config(root, platform="fsdp", run_id=run_id, resume=True, **settings))


def main() -> None:
    output, root, interval = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rank = int(os.environ.get("RANK", "0"))
    os.makedirs(output, exist_ok=True)
    if len(sys.argv) > 4 and rank in {int(r) for r in sys.argv[5].split(",")}:
        install_killer(int(sys.argv[4]), os.path.join(output, f"killed-rank{rank}.json"))
    killed = runner(root, "killed", interval)
    with open(os.path.join(output, f"launch-rank{rank}.json"), "w", encoding="utf-8") as file:
        json.dump({"resumed_from": killed.config.checkpoint, "checkpoint_dir": killed.checkpoint_dir}, file)
    killed.train()
    if len(sys.argv) > 4:
        raise SystemExit(f"rank {rank}: the run was to be killed during save {sys.argv[4]}, but it finished")
    straight = runner(root, "straight", interval)
    straight.train()
    torch.save({"resumed": full(killed), "straight": full(straight)}, os.path.join(output, f"final-rank{rank}.pt"))


if __name__ == "__main__":
    main()
