"""The `danling` command: every run at a glance, read from the run directories alone.

```
danling runs [ROOT] [--name PATTERN] [--json]   one row per run under ROOT (default: experiments), oldest first
danling show RUN_DIR [--all] [--json]           config, results table, checkpoints and the command that resumes
```

It is installed as the `danling` console script and runs as `python -m danling`. It reads only the files of the run
directories (see [`danling.runs`][danling.runs]) and imports neither torch nor TensorBoard, so it answers at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .defaults import DEFAULT_PROJECT_ROOT
from .runs import (
    CONFIG_FILE,
    RunSummary,
    checkpoint_dir,
    checkpoint_size,
    find_latest,
    find_run_dirs,
    find_runs,
    is_run_dir,
    pointer_target,
    read_config,
    read_results,
    read_run,
    read_state,
    resume_command,
    score_settings,
)
from .scoring import find_best_index, find_scores, format_results_table, table_columns

__all__ = ["format_runs_table", "main"]

# "epochs done" counts epochs, while the console names each epoch by its index from 0 (`epoch [19/19]` is the
# 20th of 20): the heading says which, so `20/20` here and `[19/19]` there cannot be read as disagreeing.
_RUNS_COLUMNS = ("experiment", "run", "id", "timestamp", "state", "epochs done", "steps", "best", "dir")
# Rows of the results table `show` prints without `--all`: the best epoch and this many last ones.
_SHOWN_LAST = 5
# States after which `latest` is worth pointing out: the run did not end on its own.
_UNFINISHED_STATES = ("interrupted", "crashed", "unknown")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `danling` command with `argv` (default: the process's arguments); return the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except FileNotFoundError as error:
        print(f"danling {args.command}: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`danling runs | head`): stop quietly, and keep Python from failing to flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="danling", description="List and inspect DanLing runs from their run directories."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    runs = commands.add_parser("runs", help="one row per run under ROOT, oldest first")
    runs.add_argument("root", nargs="?", default=DEFAULT_PROJECT_ROOT, help="project root (default: %(default)s)")
    runs.add_argument(
        "-n", "--name", metavar="PATTERN", help="keep runs whose name contains PATTERN, or matches it as a glob"
    )
    runs.add_argument("--json", action="store_true", help="print a JSON list, for scripts")
    runs.set_defaults(handler=_runs)
    show = commands.add_parser("show", help="config, results, checkpoints and resume command of one run")
    show.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (or a {name}-{id} directory: its newest)")
    every = f"every epoch in the results table (default: the best and the last {_SHOWN_LAST})"
    show.add_argument("--all", action="store_true", help=every)
    show.add_argument("--json", action="store_true", help="print a JSON object, for scripts (every epoch)")
    show.set_defaults(handler=_show)
    return parser


def _runs(args: argparse.Namespace) -> None:
    runs = find_runs(args.root, args.name)
    if args.json:
        print(json.dumps([run.to_dict() for run in runs], indent=2))
    elif runs:
        print(format_runs_table(runs))
    else:
        print(f"no runs under {args.root!r}" + (f" matching {args.name!r}" if args.name else ""), file=sys.stderr)


def format_runs_table(runs: Sequence[RunSummary]) -> str:
    """One line per run: names, id, timestamp, state, progress, best score and directory, in aligned columns."""
    rows = [list(_RUNS_COLUMNS)] + [_runs_row(run) for run in runs]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_RUNS_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _runs_row(run: RunSummary) -> list[str]:
    return [
        run.experiment_name or run.name,
        run.run_name or "-",
        run.id or "-",
        run.timestamp or "-",
        _state_text(run),
        _progress(run.epochs, run.epoch_end),
        _progress(run.steps, run.step_end),
        _best_text(run),
        run.dir,
    ]


def _state_text(run: RunSummary) -> str:
    text = run.state.replace("_", " ")
    return f"{text} (resumable)" if run.resumable and run.state in _UNFINISHED_STATES else text


def _progress(done: int | None, end: int | None) -> str:
    if done is None:
        return "-"
    return f"{done}/{end}" if end else str(done)


def _best_text(run: RunSummary, at: str = "@") -> str:
    if run.best_epoch is None:
        return "-"
    return f"{run.score_split}.{run.score_name} {_format_score(run.best_score)} {at} {run.best_epoch}"


def _format_score(score: Any) -> str:
    return f"{score:.4f}" if isinstance(score, float) else str(score)


def _show(args: argparse.Namespace) -> None:
    run_dir = _resolve_run_dir(args.run_dir)
    run = read_run(run_dir)
    state = read_state(run_dir)
    config = read_config(run_dir)
    _, results = read_results(run_dir)
    command = resume_command(run_dir, state)
    if args.json:
        report = {**run.to_dict(), "config": config, "results": results, "resume_command": command}
        print(json.dumps(report, indent=2))
        return
    print("\n".join(_show_lines(run, config, results, command, state, every_row=args.all)))


def _resolve_run_dir(path: str) -> str:
    # A `{name}-{id}` directory holds one run directory per launch: show the newest.
    if is_run_dir(path):
        return path
    launches = find_run_dirs(path)
    if not launches:
        raise FileNotFoundError(f"{path!r} is not a run directory and holds none")
    newest = find_runs(path)[-1]
    if len(launches) > 1:
        print(f"{path!r} holds {len(launches)} runs; showing the newest, {newest.dir!r}", file=sys.stderr)
    return newest.dir


def _show_lines(
    run: RunSummary,
    config: dict | None,
    results: dict,
    command: str | None,
    state: dict | None,
    every_row: bool = False,
) -> list[str]:
    updated = f", updated {run.updated}" if run.updated else ""
    lines = [
        f"run:         {run.name}",
        f"id:          {run.id or '-'}",
        f"timestamp:   {run.timestamp or '-'}",
        f"directory:   {run.dir}",
        f"state:       {_state_text(run)}{updated}",
        f"epochs:      {_epochs_text(run, results)}",
        f"steps:       {_progress(run.steps, run.step_end)}",
        f"best:        {_best_text(run, at='at step' if run.by_steps else 'at epoch')}",
    ]
    if run.error:
        lines.append(f"error:       {run.error}")
    lines += ["", f"config ({CONFIG_FILE}):"]
    if config is None:
        lines.append(f"  no {CONFIG_FILE} (the runner writes it when training starts)")
    else:
        with open(os.path.join(run.dir, CONFIG_FILE), encoding="utf-8") as fp:
            lines += [f"  {line}" for line in fp.read().splitlines()]
    table = _results_table(config or {}, results, run.by_steps, None if every_row else _SHOWN_LAST)
    lines += ["", "results:", table or "  no results yet"]
    directory = checkpoint_dir(run.dir, state, config)
    lines += ["", f"checkpoints ({directory}):"]
    lines += _checkpoint_lines(directory, run.checkpoints) or ["  none"]
    lines += ["", "resume:"]
    if command is not None:
        lines.append(f"  {command}")
    elif run.resumable:
        latest = find_latest(directory)
        lines.append(f"  launch the training script again with --checkpoint {latest} (no command in run.json)")
    else:
        lines.append("  nothing to resume from: no latest checkpoint")
    return lines


def _epochs_text(run: RunSummary, results: dict) -> str:
    """Epochs done, and how the console named the last one: `3 of 10 done (the last printed as epoch [2/9])`."""
    if run.by_steps:
        return f"{_progress(run.epochs, run.epoch_end)} (passes, training by steps)"
    text = f"{run.epochs} of {run.epoch_end} done" if run.epoch_end else f"{run.epochs} done"
    last = next(reversed(results), None)
    if run.epoch_end and isinstance(last, int):
        text += f" (the last printed as epoch [{last}/{run.epoch_end - 1}])"
    return text


def _results_table(config: dict, results: dict, by_steps: bool = False, last: int | None = None) -> str:
    """The table `runner.results_table()` prints, from the results and config on disk.

    With `last`, only the best row and the `last` last rows are shown: a `...` row stands for the rows left out
    between them, and a line after the table says how many there are.
    """
    if not results:
        return ""
    try:
        split, name, best_fn = score_settings(config, results)
        best_index = find_best_index(find_scores(results, split, name), best_fn)
    except ValueError:  # the score is not in the results: the table has no best row
        best_index = None
    columns = table_columns(results[next(reversed(results))])
    index_name = "step" if by_steps else "epoch"
    indices = list(results)
    kept: Sequence[int] = range(len(indices))
    if last is not None:
        kept = [n for n, index in enumerate(indices) if n >= len(indices) - last or index == best_index]
    table = format_results_table(
        {indices[n]: results[indices[n]] for n in kept}, columns, best_index, index_name=index_name
    )
    hidden = len(indices) - len(kept)
    if not hidden:
        return table
    header, *rows = table.splitlines()
    lines, previous = [header], -1
    for position, row in zip(kept, rows):
        if position != previous + 1:
            lines.append("  ...")
        lines.append(row)
        previous = position
    noun = "evaluations" if by_steps else "epochs"
    lines.append(f"({hidden} of {len(indices)} {noun} not shown: --all shows every one)")
    return "\n".join(lines)


def _checkpoint_lines(directory: str, names: Sequence[str]) -> list[str]:
    """One line per checkpoint: its name, its size and, for a pointer, the directory it names.

    A pointer (`latest.dcp`) is a few bytes; its size is that of the checkpoint directory it names.
    """
    width = max(map(len, names), default=0)
    lines = []
    for name in names:
        path = os.path.join(directory, name)
        target = pointer_target(path)
        line = f"  {name:<{width}}  {_size(checkpoint_size(path)):>8}"
        if target is not None:
            missing = "" if os.path.isdir(target) else " (missing)"
            line += f"  -> {os.path.relpath(target, directory)}{missing}"
        lines.append(line)
    return lines


def _size(size: float | None) -> str:
    """`size` bytes for people: `30 B`, `32.8 kB`, `1.2 GB`; `?` for `None` (a file that is gone).

    Examples:
        >>> _size(30), _size(32_768), _size(None)
        ('30 B', '32.8 kB', '?')
    """
    if size is None:
        return "?"
    size = float(size)
    units = ("B", "kB", "MB", "GB", "TB")
    unit = 0
    while size >= 1000 and unit < len(units) - 1:
        size, unit = size / 1000, unit + 1
    return f"{size:.0f} B" if unit == 0 else f"{size:.1f} {units[unit]}"
