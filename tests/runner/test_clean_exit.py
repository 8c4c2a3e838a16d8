"""A finished two-process run exits 0: the process group the runner created is torn down at interpreter exit.

Left alive, a gloo group (kept alive by a DDP wrapper even after `destroy_process_group`) aborted about one
process in five at exit with "terminate called without an active exception", and torchrun reported the job failed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SNIPPET = Path(__file__).resolve().parents[2] / "examples" / "snippets" / "distributed.py"
RUNS = int(os.environ.get("DANLING_EXIT_RUNS", "4"))


@pytest.mark.parametrize("attempt", range(RUNS))
def test_two_process_snippet_exits_zero_without_an_abort(distributed_runner, attempt):
    completed = distributed_runner(SNIPPET, timeout=120)
    assert "terminate called" not in completed.stderr
    assert "match the model: True" in completed.stdout
