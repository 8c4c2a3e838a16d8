"""The run's identity, where its files go, logging, and config IO: the part of `BaseRunner` that touches disk."""

from __future__ import annotations

import logging
import os
import socket
import sys
from datetime import datetime
from functools import cached_property
from typing import Any
from uuid import UUID, uuid5
from warnings import warn

from ..runs import CONFIG_DIFF_FILE, CONFIG_FILE, RUN_STATES, STATE_FILE
from ..utils.decorators import on_main_process
from ..utils.git import git_state
from ..utils.io import PathStr, load, save, to_builtin
from .config import Config
from .printing import install_print
from .progress import ConsoleFormatter, ConsoleHandler
from .trackers import (
    CSVTracker,
    MLflowTracker,
    TensorBoardTracker,
    Tracker,
    Trackers,
    WandbTracker,
    check_installed,
    tracker_names,
)

__all__ = ["Workspace"]

# Of run.log; the console has `progress.CONSOLE_FORMAT`, the time and the message.
LOG_FORMAT = "%(asctime)s [%(levelname)s] %(name)s: %(message)s"
# Handlers this module attaches carry this attribute, so a later runner replaces them instead of stacking more.
_HANDLER_MARK = "_danling_handler"


class Workspace:
    """Identity (`name`, `id`, `uuid`, `timestamp`), directories, logging and config IO of a runner."""

    config: Config
    timestamp: str
    logger: logging.Logger | None = None
    writer: Any | None = None
    trackers: Trackers = Trackers()  # none until `init_trackers`; each runner gets its own there

    @cached_property
    def name(self) -> str:
        """`config.name` if set, else `f"{experiment_name}-{run_name}"`."""
        if self.config.get("name") is not None:
            return self.config["name"]
        return f"{self.config.experiment_name}-{self.config.run_name}"

    @cached_property
    def id(self) -> str:
        """`f"{experiment_id:.8}{run_id:.8}"`: the first 8 characters of each."""
        return f"{self.config.experiment_id:.8}{self.config.run_id:.8}"

    @cached_property
    def uuid(self) -> UUID:
        """`uuid5(config.run_uuid, self.id)`."""
        return uuid5(self.config.run_uuid, self.id)

    @property
    def dir(self) -> str:
        """Directory of the run: `config.dir` if set; for a resume, the run directory holding its checkpoint;
        else `{project_root}/{name}-{id}/{timestamp}`.

        The main process creates it on first use; other processes never write files.
        """
        if self.config.get("dir") is not None:
            return self._ensure_dir(self.config["dir"])
        resumed = self.__dict__.get("_run_dir")
        if resumed is not None:  # a resume continues in the directory that holds its checkpoint
            return self._ensure_dir(resumed)
        return self._ensure_dir(os.path.join(self.config.project_root, f"{self.name}-{self.id}", self.timestamp))

    @cached_property
    def log_path(self) -> str:
        """Path of the log file: `config.log_path` if set, else `run.log` in the run directory."""
        if self.config.get("log_path") is not None:
            return self.config["log_path"]
        return os.path.join(self.dir, "run.log")

    @property
    def checkpoint_dir(self) -> str:
        """Directory of checkpoints: `config.checkpoint_dir` if set, else `dir/checkpoint_dir_name`."""
        if self.config.get("checkpoint_dir") is not None:
            return self._ensure_dir(self.config["checkpoint_dir"])
        return self._ensure_dir(os.path.join(self.dir, self.config.checkpoint_dir_name))

    def _ensure_dir(self, path: str) -> str:
        if self.is_main_process:  # type: ignore[attr-defined]
            os.makedirs(path, exist_ok=True)
        return path

    def check_dir(self, action: str = "warn") -> bool:
        """Whether the run directory is empty; if not, warn, raise or ignore as `action` says.

        Args:
            action: One of `"warn"`, `"raise"`, `"ignore"`.

        Raises:
            ValueError: If `action` is not one of those.
            RuntimeError: If `action` is `"raise"` and the directory is not empty.
        """
        if action not in ("warn", "raise", "ignore"):
            raise ValueError(f"check_dir action must be one of: warn, raise, ignore; got {action!r}")
        if not os.listdir(self.dir):
            return True
        if action == "warn":
            warn(f"directory {self.dir!r} is not empty", category=RuntimeWarning, stacklevel=2)
        elif action == "raise":
            raise RuntimeError(f"directory {self.dir!r} is not empty")
        return False

    @on_main_process
    def write_config_file(self) -> str:
        """Write the config to `config.yaml` in the run directory, atomically, on the main process.

        The `danling` command reads it there (a checkpoint holds the config too, but reading one needs torch).
        Values YAML cannot hold as they are (an object a script put in the config) are written as their `str`.

        Returns:
            The path written (`None` on other processes).
        """
        path = os.path.join(self.dir, CONFIG_FILE)
        self.save(_plain(self.config.dict()), path)
        changes = self.config.get("config_changes")
        if changes:
            # Every resume that changed a key, in order: which steps ran under which values.
            self.save(_plain(list(changes)), os.path.join(self.dir, CONFIG_DIFF_FILE))
        return path

    def _code_state(self) -> dict[str, Any] | None:
        # Read once per process: the code this launch runs does not change while it runs.
        if "_git_state" not in self.__dict__:
            self.__dict__["_git_state"] = git_state()
        return self.__dict__["_git_state"]

    def write_run_state(self, state: str, **info: Any) -> str | None:
        """Record the run's state in `run.json` in the run directory, atomically, on the main process.

        The record holds `state`, the run's `name`, `id` and `timestamp`, the progress counters (`epochs`, `steps`,
        `iters`), when it was written (`updated`), the process (`host`, `pid`), and what `danling show` needs to
        print the command that resumes the run: the working directory, the command line and the number of
        processes; and `restarts`, how many times the launcher restarted this launch's workers
        (`TORCHELASTIC_RESTART_COUNT`, 0 without `torchrun --max-restarts`).

        Args:
            state: One of [`RUN_STATES`][danling.runs.RUN_STATES]: `running`, `finished`, `stopped_early`,
                `interrupted`, `crashed`.
            **info: More fields to record, such as `error="..."` for a crash or `signal="SIGTERM"`.

        Returns:
            The path written (`None` on other processes).

        Raises:
            ValueError: If `state` is not one of `RUN_STATES`.
        """
        if state not in RUN_STATES:
            raise ValueError(f"unknown run state {state!r}; expected one of: {', '.join(RUN_STATES)}")
        if not self.is_main_process:  # type: ignore[attr-defined]
            return None
        world_size = getattr(self, "world_size", 1)
        # Relative to the run directory, unless config.checkpoint_dir puts it elsewhere.
        checkpoint_dir = self.config.get("checkpoint_dir")
        checkpoint_dir = os.path.abspath(checkpoint_dir) if checkpoint_dir else self.config.checkpoint_dir_name
        record = {
            "state": state,
            "name": self.name,
            "id": self.id,
            "timestamp": self.timestamp,
            "epochs": self.config.epochs,
            "steps": self.config.steps,
            "iters": self.config.iters,
            "updated": datetime.now().astimezone().isoformat(timespec="seconds"),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "cwd": os.getcwd(),
            # The interpreter and everything after it (its options, the script or -m module, the arguments).
            "command": [sys.executable, *sys.orig_argv[1:]],
            "args": sys.argv[1:],
            "world_size": world_size,
            "local_world_size": int(os.environ.get("LOCAL_WORLD_SIZE", world_size)),
            "checkpoint_dir": checkpoint_dir,
            # How many times the launcher (`torchrun --max-restarts`) restarted the workers of this launch so far.
            "restarts": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
            "git": self._code_state(),
            **info,
        }
        if self.trackers:
            # What a resume needs to continue the same tracker runs, and the last step each series was sent.
            record["trackers"] = self.trackers.state()
        self.__dict__["_run_state"] = state
        path = os.path.join(self.dir, STATE_FILE)
        self.save(_plain(record), path)
        return path

    @on_main_process
    def init_logging(self) -> None:
        """Log to stdout and to `log_path` through the `danling` logger (and capture warnings).

        The file has `LOG_FORMAT` (time, level, logger); the console has the time and the message only, and writes
        above the progress bar when one is on the screen (see [`progress`][danling.runner.progress]). Handlers
        from an earlier runner in the same process are replaced, not stacked.
        """
        root = logging.getLogger("danling")
        stdout = ConsoleHandler(sys.stdout)
        stdout.setLevel(logging.INFO)
        stdout.setFormatter(ConsoleFormatter())
        os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
        logfile = logging.FileHandler(self.log_path, mode="a", encoding="utf-8")
        logfile.setLevel(logging.DEBUG)
        logfile.setFormatter(logging.Formatter(LOG_FORMAT))
        warnings_logger = logging.getLogger("py.warnings")
        for target in (root, warnings_logger):
            for handler in [h for h in target.handlers if getattr(h, _HANDLER_MARK, False)]:
                target.removeHandler(handler)
                handler.close()
        for handler in (stdout, logfile):
            setattr(handler, _HANDLER_MARK, True)
            root.addHandler(handler)
            warnings_logger.addHandler(handler)
        root.setLevel(logging.DEBUG)
        root.propagate = False
        logging.captureWarnings(True)
        self.logger = logging.getLogger("danling.runner")

    def init_print(self, process: int = 0) -> None:
        """Make `print` rank-aware: it prints on `process` only (or with `force=True`), through the log if `log`.

        The replacement is installed into `builtins` once per process and re-bound to the newest runner;
        `danling.runner.printing.restore_print()` undoes it.

        Args:
            process: The rank that prints.
        """
        install_print(self, process)

    def init_trackers(self) -> None:
        """Set up the trackers `config.trackers` names (and TensorBoard when `config.tensorboard` is set).

        Every process checks that their packages are installed (so all fail together, saying what to install);
        the main process alone tracks. A tracker starts on the first point it is sent, or when `train` begins; a
        resumed run (one given a checkpoint, in the run directory it came from) continues the tracker runs its
        `run.json` records.

        Raises:
            ValueError: If `config.trackers` names an unknown tracker.
            ImportError: If a named tracker's package is not installed; the message says what to install.
        """
        names = tracker_names(self.config.get("trackers"), bool(self.config.get("tensorboard")))
        check_installed(names)
        if "tensorboard" in names:
            self.init_tensorboard()
        if not self.is_main_process:  # type: ignore[attr-defined]
            self.trackers = Trackers()
            return
        builders = {
            "tensorboard": lambda: TensorBoardTracker(lambda: self.writer),
            "csv": lambda: CSVTracker(os.path.join(self.dir, "csv")),
            "wandb": lambda: WandbTracker(self.dir, self.config.experiment_name, self.name, print),
            "mlflow": lambda: MLflowTracker(self.dir, self.config.experiment_name, self.name),
        }
        trackers: list[Tracker] = [builders[name]() for name in names]
        self.trackers = Trackers(
            trackers,
            resumed=self._resumed_trackers(),
            hyperparameters=lambda: _plain(self.config.dict()),
            save_state=self._save_tracker_state,
        )

    def _resumed_trackers(self) -> dict[str, Any] | None:
        """The `trackers` record of the run this one resumes, if it continues in that run's directory."""
        if self.__dict__.get("_checkpoint_to_load") is None:
            return None
        path = os.path.join(self.dir, STATE_FILE)
        if not os.path.isfile(path):
            return None  # a resume into a new directory starts new tracker runs
        record = load(path)
        return record.get("trackers") if isinstance(record, dict) else None

    def _save_tracker_state(self) -> None:
        # Before each point is sent, while `train` runs: `run.json` then always counts what trackers were sent.
        state = self.__dict__.get("_run_state")
        if state is not None:
            self.write_run_state(state)

    def init_tensorboard(self, *args: Any, **kwargs: Any) -> None:
        """Set up a TensorBoard writer; implemented by platform runners such as `TorchRunner`."""
        raise NotImplementedError(f"{type(self).__name__} does not implement init_tensorboard")

    def save(self, obj: Any, file: PathStr, main_process_only: bool = True, *args: Any, **kwargs: Any) -> PathStr:
        """Save `obj` with [`danling.save`][danling.utils.io.save] (atomic), on the main process only by default.

        Unlike the reference implementation, a failed write raises (with the path in the message).
        """
        if main_process_only and not self.is_main_process:  # type: ignore[attr-defined]
            return file
        return save(obj, file, *args, **kwargs)

    @staticmethod
    def load(file: PathStr, *args: Any, **kwargs: Any) -> Any:
        """Load a file by its extension; identical to [`danling.load`][danling.utils.io.load]."""
        return load(file, *args, **kwargs)

    def json(self, file: PathStr, main_process_only: bool = True, *args: Any, **kwargs: Any) -> None:
        """Dump the config to a JSON file, atomically, on the main process only by default."""
        self.save(self.config.dict(), _with_extension(file, "json"), main_process_only, *args, **kwargs)

    def jsons(self, *args: Any, **kwargs: Any) -> str:
        """The config as a JSON string."""
        return self.config.jsons(*args, **kwargs)

    @classmethod
    def from_json(cls, file: PathStr, *args: Any, **kwargs: Any) -> Any:
        """Build a runner from a JSON config file (through [`from_jsons`][danling.BaseRunner.from_jsons])."""
        with open(file, encoding="utf-8") as fp:
            return cls.from_jsons(fp.read(), *args, **kwargs)

    @classmethod
    def from_jsons(cls, string: str, *args: Any, **kwargs: Any) -> Any:
        """Build a runner from a JSON config string."""
        return cls(Config.from_jsons(string, *args, **kwargs))  # type: ignore[call-arg]

    def yaml(self, file: PathStr, main_process_only: bool = True, *args: Any, **kwargs: Any) -> None:
        """Dump the config to a YAML file, atomically, on the main process only by default."""
        self.save(self.config.dict(), _with_extension(file, "yaml"), main_process_only, *args, **kwargs)

    def yamls(self, *args: Any, **kwargs: Any) -> str:
        """The config as a YAML string."""
        return self.config.yamls(*args, **kwargs)

    @classmethod
    def from_yaml(cls, file: PathStr, *args: Any, **kwargs: Any) -> Any:
        """Build a runner from a YAML config file (through [`from_yamls`][danling.BaseRunner.from_yamls])."""
        with open(file, encoding="utf-8") as fp:
            return cls.from_yamls(fp.read(), *args, **kwargs)

    @classmethod
    def from_yamls(cls, string: str, *args: Any, **kwargs: Any) -> Any:
        """Build a runner from a YAML config string."""
        return cls(Config.from_yamls(string, *args, **kwargs))  # type: ignore[call-arg]


def _with_extension(file: PathStr, kind: str) -> PathStr:
    # The writer is chosen by extension; a JSON dump named "config.txt" must still be JSON.
    extension = os.path.splitext(os.fspath(file))[1].lstrip(".").lower()
    if (kind == "json" and extension != "json") or (kind == "yaml" and extension not in ("yaml", "yml")):
        raise ValueError(f"{kind} file must end in .{kind}, got {os.fspath(file)!r}")
    return file


def _plain(obj: Any) -> Any:
    # Plain data for YAML and JSON: what `to_builtin` cannot convert is written as its `str`.
    obj = to_builtin(obj)
    if isinstance(obj, dict):
        return {key if isinstance(key, (str, int, float, bool)) else str(key): _plain(v) for key, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(value) for value in obj]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)
