"""Runs on disk: find the run directories under a project root and read what each one holds.

A run directory (`{project_root}/{name}-{id}/{timestamp}/`) holds, besides the checkpoints, three small files
written by the runner's main process, each atomically:

- `config.yaml`: the config, written when training starts;
- `run.json`: the run's state (see [`RUN_STATES`][danling.runs.RUN_STATES]), its progress counters and the command
  that launched it, rewritten when training starts, after every epoch and when training ends;
- `results.json`: every epoch's result (with `latest.json` and `best.json` beside it).

Everything here reads those files only, and imports neither torch nor chanfig: the `danling` command that lists
runs (`danling runs`, `danling show`) answers at once.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import socket
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from .defaults import DEFAULT_CHECKPOINT_DIR_NAME, DEFAULT_SCORE_NAME
from .scoring import choose_best_fn, find_best_index, find_scores, infer_score_split

__all__ = [
    "CHECKPOINT_EXTENSIONS",
    "CONFIG_DIFF_FILE",
    "CONFIG_FILE",
    "POINTER_EXTENSIONS",
    "RESULTS_FILE",
    "RUN_STATES",
    "STATE_FILE",
    "RunSummary",
    "checkpoint_size",
    "find_latest",
    "find_run_dirs",
    "find_runs",
    "list_checkpoints",
    "match_name",
    "pointer_target",
    "read_config",
    "read_results",
    "read_run",
    "trains_by_steps",
    "read_state",
    "resume_command",
]

CONFIG_FILE = "config.yaml"
"""The config of the run, as YAML."""
STATE_FILE = "run.json"
"""The state of the run, its progress counters and the command that launched it."""
CONFIG_DIFF_FILE = "config.diff.yaml"
"""What each resume changed in the config: a list of `{checkpoint, epoch, step, iter, changes: {key: [old, new]},
allowed}`, one entry per resume that changed something."""
RESULTS_FILE = "results.json"
"""Every epoch's result: `{"name", "id", "timestamp", "results": {epoch: {split: {metric: value}}}}`."""

RUN_STATES = ("running", "finished", "stopped_early", "interrupted", "crashed")
"""States `run.json` records: training is `running`; it `finished` (reached `epoch_end`, `step_end` or `iter_end`);
it `stopped_early` (no better score for `patience` epochs); it was `interrupted` (by a preemption signal or
Ctrl-C, after saving `latest`); or it `crashed` (an exception left `train`)."""

# Any of these marks a directory as a run directory.
_RUN_FILES = (STATE_FILE, RESULTS_FILE, CONFIG_FILE)
# Arguments that choose a checkpoint; the resume command replaces them with its own `--checkpoint`.
_RESUME_OPTIONS = ("--checkpoint", "--resume")


@dataclass
class RunSummary:
    """One run directory at a glance: what [`read_run`][danling.runs.read_run] found in it.

    `state` is what `run.json` says, except that a run it calls `running` whose process is gone from this machine
    is `crashed`; `unknown` when there is no `run.json`. `epochs` counts the epochs with a result; for a run trained
    by steps (`by_steps`: `step_end` or `iter_end` without `epoch_end`) it is the passes over the data begun, and
    `best_epoch` is the step of the best evaluation.
    """

    dir: str
    name: str
    experiment_name: str | None = None
    run_name: str | None = None
    id: str | None = None
    timestamp: str | None = None
    state: str = "unknown"
    updated: str | None = None
    epochs: int = 0
    epoch_end: int | None = None
    steps: int | None = None
    step_end: int | None = None
    by_steps: bool = False
    score_split: str | None = None
    score_name: str | None = None
    best_score: Any = None
    best_epoch: Any = None
    checkpoints: list[str] = field(default_factory=list)
    resumable: bool = False
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain data, for JSON."""
        return asdict(self)


def is_run_dir(path: str) -> bool:
    """Whether `path` holds any of the files a run writes (`run.json`, `results.json`, `config.yaml`)."""
    return any(os.path.isfile(os.path.join(path, name)) for name in _RUN_FILES)


def find_run_dirs(root: str) -> list[str]:
    """Every run directory under `root` (or `root` itself), without looking inside a run directory.

    Raises:
        FileNotFoundError: If `root` is not a directory.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no such directory: {root!r}")
    found = []
    for directory, subdirectories, _ in os.walk(root):
        if is_run_dir(directory):
            found.append(directory)
            subdirectories.clear()  # checkpoints/, tensorboard/: nothing more to find inside a run
        else:
            subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
    return found


def match_name(name: str, pattern: str | None) -> bool:
    """Whether `name` matches `pattern`: a glob if it holds `*`, `?` or `[`, else a substring (both case-sensitive).

    Examples:
        >>> match_name("digits-baseline", "base"), match_name("digits-baseline", "digits-*"), match_name("a", "b*")
        (True, True, False)
    """
    if not pattern:
        return True
    if any(char in pattern for char in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name


def find_runs(root: str, pattern: str | None = None) -> list[RunSummary]:
    """Summaries of the runs under `root` whose name matches `pattern`, oldest launch first.

    Args:
        root: A project root (or any directory above run directories).
        pattern: Keep runs whose name matches (see [`match_name`][danling.runs.match_name]).
    """
    runs = [read_run(directory) for directory in find_run_dirs(root)]
    runs = [run for run in runs if match_name(run.name, pattern)]
    # Timestamps of equal length sort like the times they encode (base 62 in ASCII order).
    return sorted(runs, key=lambda run: (len(run.timestamp or ""), run.timestamp or "", run.dir))


def read_json(path: str) -> Any:
    """The content of a JSON file, or `None` if it is missing or not JSON."""
    try:
        with open(path, encoding="utf-8") as fp:
            return json.load(fp)
    except (OSError, ValueError):  # missing, unreadable or not JSON: the run just lacks this piece
        return None


def read_config(run_dir: str) -> dict | None:
    """The config in `config.yaml` (or `None`: runs started before DanLing wrote it have none)."""
    try:
        with open(os.path.join(run_dir, CONFIG_FILE), encoding="utf-8") as fp:
            config = yaml.safe_load(fp)
    except (OSError, yaml.YAMLError):  # missing or damaged: the run just lacks this piece
        return None
    return config if isinstance(config, dict) else None


def read_state(run_dir: str) -> dict | None:
    """The record in `run.json` (or `None`)."""
    state = read_json(os.path.join(run_dir, STATE_FILE))
    return state if isinstance(state, dict) else None


def read_results(run_dir: str) -> tuple[dict, dict]:
    """`(header, results)` from `results.json`: `{"name", "id", "timestamp"}` and `{epoch: result}`.

    Epochs come back as integers (JSON keeps them as strings), in the order the file holds them.
    """
    content = read_json(os.path.join(run_dir, RESULTS_FILE))
    if not isinstance(content, dict):
        return {}, {}
    results = content.get("results")
    results = {_index(key): value for key, value in results.items()} if isinstance(results, dict) else {}
    return {key: value for key, value in content.items() if key != "results"}, results


def _index(key: str) -> Any:
    return int(key) if re.fullmatch(r"-?\d+", key) else key


def checkpoint_dir(run_dir: str, state: Mapping | None = None, config: Mapping | None = None) -> str:
    """Where the run keeps its checkpoints: as `run.json` records it, else `checkpoints/` in the run directory."""
    recorded = (state or {}).get("checkpoint_dir")
    if recorded:
        return os.path.join(run_dir, recorded)  # relative to the run directory, unless absolute
    return os.path.join(run_dir, (config or {}).get("checkpoint_dir_name") or DEFAULT_CHECKPOINT_DIR_NAME)


CHECKPOINT_EXTENSIONS: dict[str, str] = {
    "torch": ".pth",
    "fsdp": ".dcp",
    "deepspeed": ".ds",
    "accelerate": ".accelerate",
}
"""The extension of each platform's checkpoints: a file (`latest.pth`), or a pointer to a directory (`latest.dcp`)."""
POINTER_EXTENSIONS = tuple(extension for extension in CHECKPOINT_EXTENSIONS.values() if extension != ".pth")
"""Extensions of the checkpoints that are pointers: a small JSON file `{"path": DIRECTORY}` naming the directory,
relative to the checkpoint directory, that holds the checkpoint (see `danling.runner.pointers`)."""


def trains_by_steps(config: Mapping) -> bool:
    """Whether a run with `config` is counted in optimizer steps: `step_end` or `iter_end` is set, `epoch_end` not."""
    return config.get("epoch_end") is None and bool(config.get("step_end") or config.get("iter_end"))


def find_latest(directory: str) -> str | None:
    """The path of the `latest` checkpoint in `directory`, whichever platform wrote it; `None` when there is none."""
    for extension in CHECKPOINT_EXTENSIONS.values():
        path = os.path.join(directory, f"latest{extension}")
        if os.path.isfile(path):
            return path
    return None


def list_checkpoints(directory: str) -> list[str]:
    """Names of the checkpoints in `directory`: `latest`, `best`, then the others (`epoch-N` by N)."""
    try:
        names = [name for name in os.listdir(directory) if not name.startswith(".")]
    except OSError:  # no checkpoint directory: no checkpoints
        return []
    names = [name for name in names if os.path.isfile(os.path.join(directory, name))]

    def order(name: str) -> tuple:
        stem = os.path.splitext(name)[0]
        number = re.fullmatch(r"epoch-(\d+)", stem)
        return ({"latest": 0, "best": 1}.get(stem, 2), int(number.group(1)) if number else -1, name)

    return sorted(names, key=order)


def pointer_target(path: str) -> str | None:
    """The directory the pointer checkpoint at `path` (`latest.dcp`, `best.ds`, ...) names; `None` for a checkpoint
    that is not a pointer, or a pointer that cannot be read."""
    if not path.endswith(POINTER_EXTENSIONS):
        return None
    content = read_json(path)
    target = content.get("path") if isinstance(content, dict) else None
    return os.path.join(os.path.dirname(path), target) if isinstance(target, str) else None


def checkpoint_size(path: str) -> int | None:
    """Bytes the checkpoint at `path` takes: the file's size, or for a pointer the size of every file in the
    directory it names (not the few bytes of the pointer); `None` when it, or what it names, is gone.

    Pointers naming the same directory (`latest` and `best` after a new best) each count all of it.
    """
    target = pointer_target(path)
    if target is None:
        try:
            return os.path.getsize(path)
        except OSError:  # removed while we were listing
            return None
    if not os.path.isdir(target):
        return None
    total = 0
    for directory, _, names in os.walk(target):
        for name in names:
            try:
                total += os.path.getsize(os.path.join(directory, name))
            except OSError:  # removed while we were walking (a save pruning an older checkpoint)
                continue
    return total


def read_run(run_dir: str) -> RunSummary:
    """Summarise one run directory from `run.json`, `config.yaml`, `results.json` and its checkpoint names."""
    state = read_state(run_dir) or {}
    config = read_config(run_dir) or {}
    header, results = read_results(run_dir)
    experiment_name, run_name = config.get("experiment_name"), config.get("run_name")
    default_name = f"{experiment_name}-{run_name}" if experiment_name and run_name else _name_from_path(run_dir)
    summary = RunSummary(
        dir=run_dir,
        name=state.get("name") or header.get("name") or config.get("name") or default_name,
        experiment_name=experiment_name,
        run_name=run_name,
        id=state.get("id") or header.get("id"),
        timestamp=state.get("timestamp") or header.get("timestamp"),
        state=_effective_state(state),
        updated=state.get("updated"),
        epochs=len(results),
        epoch_end=config.get("epoch_end"),
        by_steps=trains_by_steps(config),
        steps=state.get("steps"),
        step_end=config.get("step_end"),
        error=state.get("error"),
    )
    if summary.by_steps:
        summary.epochs = state.get("epochs", 0) + 1 if summary.steps else 0
    if results:
        try:
            split, name, best_fn = score_settings(config, results)
            scores = find_scores(results, split, name)
        except ValueError as error:  # a score that is not in the results: the run is listed without one
            summary.error = summary.error or str(error)
        else:
            summary.score_split, summary.score_name = split, name
            summary.best_epoch = find_best_index(scores, best_fn)
            summary.best_score = scores[summary.best_epoch]
    directory = checkpoint_dir(run_dir, state, config)
    summary.checkpoints = list_checkpoints(directory)
    summary.resumable = find_latest(directory) is not None
    return summary


def score_settings(config: Mapping, results: Mapping) -> tuple[str, str, Any]:
    """`(score_split, score_name, best_fn)` of a run, from its config and results as the runner chooses them."""
    name = config.get("score_name") or DEFAULT_SCORE_NAME
    latest = results[next(reversed(results))] if results else {}
    split = infer_score_split(list(latest.keys()), config.get("score_split"))
    return split, name, choose_best_fn(name, config.get("score_mode"))


def _name_from_path(run_dir: str) -> str:
    # `{name}-{id}/{timestamp}`: the parent's name without its id.
    parent = os.path.basename(os.path.dirname(os.path.abspath(run_dir)))
    return parent.rsplit("-", 1)[0] if "-" in parent else parent


def _effective_state(state: Mapping) -> str:
    recorded = state.get("state")
    if recorded is None:
        return "unknown"
    if recorded == "running" and _process_gone(state.get("host"), state.get("pid")):
        return "crashed"  # killed (SIGKILL, out of memory, power) before it could record anything else
    return str(recorded)


def _process_gone(host: Any, pid: Any) -> bool:
    # Only a process on this machine can be looked up; elsewhere, trust the file.
    if os.name != "posix" or host != socket.gethostname() or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False


def resume_command(run_dir: str, state: Mapping | None = None) -> str | None:
    """The shell command that continues the run from its `latest` checkpoint, or `None` when it cannot.

    It is the command that launched the run (from `run.json`), run from the same working directory, with any
    `--checkpoint`/`--resume` argument replaced by `--checkpoint <latest>`; a run launched on several processes
    is relaunched through `torch.distributed.run` (`torchrun`) with as many. The script must read its command line
    with `config.parse()`.
    """
    state = read_state(run_dir) if state is None else state
    if not state or not state.get("command"):
        return None
    latest = find_latest(checkpoint_dir(run_dir, state))
    if latest is None:
        return None
    command, args = list(state["command"]), list(state.get("args") or [])
    split = len(command) - len(args)
    if args and command[split:] != args:  # the script changed sys.argv: keep its launch command whole
        split, args = len(command), []
    launcher, args = command[:split], _without_resume_options(args)
    cwd = state.get("cwd") or os.getcwd()
    latest, real_cwd = os.path.realpath(latest), os.path.realpath(cwd)
    if os.path.commonpath([latest, real_cwd]) == real_cwd:
        latest = os.path.relpath(latest, real_cwd)
    world_size, local_world_size = int(state.get("world_size") or 1), int(state.get("local_world_size") or 1)
    if world_size > 1:
        target = launcher[-2:] if len(launcher) > 2 and launcher[-2] == "-m" else launcher[-1:]
        launcher = [
            launcher[0],
            "-m",
            "torch.distributed.run",
            f"--nnodes={max(world_size // local_world_size, 1)}",
            f"--nproc_per_node={local_world_size}",
            *target,
        ]
    return f"cd {shlex.quote(cwd)} && {shlex.join([*launcher, *args, '--checkpoint', latest])}"


def _without_resume_options(args: Sequence[str]) -> list[str]:
    """`args` without `--checkpoint X`, `--checkpoint=X`, `--resume X` and `--resume=X`.

    Examples:
        >>> _without_resume_options(["--lr", "0.1", "--checkpoint", "a.pth", "--resume=true", "--epoch_end", "3"])
        ['--lr', '0.1', '--epoch_end', '3']
    """
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in _RESUME_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in _RESUME_OPTIONS)):
            kept.append(arg)
    return kept
