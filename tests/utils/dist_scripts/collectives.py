"""Run under torchrun with two processes: exercise `danling.utils.distributed` on gloo and write what each rank saw.

Usage: `python -m torch.distributed.run --nproc_per_node 2 collectives.py OUT_DIR`; rank `r` writes
`OUT_DIR/rank{r}.json`. `tests/utils/test_distributed.py` launches it and asserts the results.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import distributed as dist

from danling.utils.distributed import (
    all_gather_object,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    broadcast_object,
    check_shared_directory,
    collective_device,
    gather_tensor,
    get_local_rank,
    get_rank,
    get_world_size,
    is_distributed,
)


def collect(out_dir: Path) -> dict:
    rank = get_rank()
    results: dict = {
        "rank": rank,
        "world_size": get_world_size(),
        "local_rank": get_local_rank(),
        "is_distributed": is_distributed(),
        "collective_device": str(collective_device()),
    }

    value = torch.tensor([rank + 1.0, 10.0 * (rank + 1)])
    summed = all_reduce_sum(value)
    results["sum"] = summed.tolist()
    results["sum_input_after"] = value.tolist()
    results["sum_is_a_new_tensor"] = summed is not value
    results["mean"] = all_reduce_mean(value).tolist()
    results["int_sum"] = all_reduce_sum(torch.tensor([rank + 1])).tolist()

    # Uneven shards: rank 0 holds 3 rows, rank 1 holds 5; row values say which rank and row they came from.
    rows = 3 if rank == 0 else 5
    shard = torch.arange(rows * 2, dtype=torch.float32).reshape(rows, 2) + 100 * rank
    gathered = gather_tensor(shard)
    results["gather"] = gathered.tolist()
    results["gather_dtype"] = str(gathered.dtype)
    ids = gather_tensor(torch.full((rows,), rank, dtype=torch.int64))
    results["gather_int"] = ids.tolist()
    results["gather_int_dtype"] = str(ids.dtype)
    # One rank with no rows at all.
    empty = gather_tensor(torch.ones(2 if rank == 0 else 0, 3))
    results["gather_with_empty_shard"] = empty.tolist()

    results["all_gather_object"] = all_gather_object({"rank": rank, "name": f"process-{rank}"})
    results["broadcast_from_0"] = broadcast_object({"from": rank, "payload": [rank] * 3})
    results["broadcast_from_1"] = broadcast_object(f"sent by {rank}", src=1)

    # Rank 1 writes a marker late; rank 0 may only pass the barrier after that.
    marker = out_dir / "marker"
    if rank == 1:
        time.sleep(1.0)
        marker.write_text("written before the barrier")
    barrier()
    results["marker_seen_after_barrier"] = marker.exists()

    # The shared-directory check: one directory both see; a directory of each; a relative one, which rank 1 looks
    # for under another working directory (as a second node would).
    shared = out_dir / "shared"
    check_shared_directory(str(shared), "checkpoint directory")
    barrier()  # the main process removes its probe once every process has read it
    results["shared_left_clean"] = sorted(path.name for path in shared.iterdir())
    results["own_directory"] = _check_error(str(out_dir / f"own{rank}"))
    if rank == 1:
        (out_dir / "elsewhere").mkdir()
        os.chdir(out_dir / "elsewhere")
    else:
        os.chdir(out_dir)
    results["relative_directory"] = _check_error("relative")
    return results


def _check_error(directory: str) -> str | None:
    try:
        check_shared_directory(directory, "checkpoint directory")
    except RuntimeError as error:
        return str(error)
    return None


def main(out_dir: Path) -> None:
    dist.init_process_group("gloo")
    try:
        results = collect(out_dir)
        barrier()
    finally:
        dist.destroy_process_group()
    (out_dir / f"rank{results['rank']}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
