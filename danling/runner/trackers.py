"""Experiment trackers: TensorBoard, CSV, Weights & Biases and MLflow behind one small interface.

`config.trackers` names them (`["tensorboard"]` by default when `config.tensorboard` is set). Each tracker
receives the run's config as hyperparameters when it starts, and every scalar the runner writes, as
`{series}/{name}` at the step TensorBoard uses: the optimizer step for the step lines of a split (`train`), the
epoch for `{split}/epoch`, the step for `{split}/evaluation` when training by steps. Only the main process tracks.

A resume continues the same tracker runs: what each tracker needs to continue (the W&B run id and its step, the
MLflow run id), and the last step written in each series, are kept in `run.json` under `trackers`, written before
each point is sent. A resumed run skips the points at or before those steps: they were written before the crash.

`wandb` and `mlflow` are imported only when a run asks for them (`pip install 'danling[wandb]'`,
`'danling[mlflow]'`).
"""

from __future__ import annotations

import csv
import io
import netrc
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from importlib import import_module
from typing import Any
from urllib.parse import urlparse

__all__ = [
    "TRACKERS",
    "CSVTracker",
    "MLflowTracker",
    "TensorBoardTracker",
    "Tracker",
    "Trackers",
    "WandbTracker",
    "check_installed",
    "flatten_hyperparameters",
    "tracker_names",
]

Scalars = Sequence[tuple[str, float]]


class Tracker:
    """One experiment tracker: started once with the config, then sent each series' scalars at a step.

    Subclasses set `name` and override what they need; `state` is what a resume needs to continue the same run.
    """

    name: str = ""

    def start(self, hyperparameters: Mapping[str, Any], state: Mapping[str, Any] | None) -> None:
        """Open the tracker's run; `state` is what `state()` returned in the run being resumed, else `None`."""

    def log(self, series: str, scalars: Scalars, step: int) -> None:
        """Write `{series}/{name}` for each `(name, value)` of `scalars`, at `step`."""
        raise NotImplementedError

    def reserve(self) -> None:
        """Count the point about to be sent in `state()`, which the runner records before sending it."""

    def state(self) -> dict[str, Any]:
        """What a resumed run needs to continue this tracker's run (kept in `run.json`)."""
        return {}

    def flush(self) -> None:
        """Push what is buffered to storage."""

    def finish(self, outcome: str) -> None:
        """Close the tracker's run; `outcome` is the run's state (`finished`, `crashed`, ...)."""
        self.flush()


class TensorBoardTracker(Tracker):
    """Scalars through a `SummaryWriter` (the runner's `writer`), exactly as TensorBoard was written before."""

    name = "tensorboard"

    def __init__(self, writer: Callable[[], Any]) -> None:
        # The runner's `writer` attribute, read at each write: a script may replace or close it.
        self._writer = writer

    def log(self, series: str, scalars: Scalars, step: int) -> None:
        writer = self._writer()
        if writer is None:
            return
        for name, value in scalars:
            writer.add_scalar(f"{series}/{name}", value, step)

    def flush(self) -> None:
        writer = self._writer()
        if writer is not None:
            writer.flush()


class CSVTracker(Tracker):
    """One CSV file per series under `directory` (`train.csv`, `train-epoch.csv`, ...): a `step` column, then one
    column per scalar.

    Rows are appended, so a resumed run continues the same files. A line cut short by a crash is dropped, and
    rows at or before the last step a file holds are not written again.
    """

    name = "csv"

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._columns: dict[str, list[str]] = {}
        # Last step each file held when this process first opened it: rows an earlier launch wrote.
        self._written_before: dict[str, int] = {}

    def path(self, series: str) -> str:
        """The file of `series`: its name with `/` replaced by `-`."""
        return os.path.join(self.directory, series.replace("/", "-") + ".csv")

    def _open(self, series: str) -> None:
        path = self.path(series)
        self._columns[series] = []
        if not os.path.isfile(path):
            return
        with open(path, "rb+") as file:
            content = file.read()
            if content and not content.endswith(b"\n"):
                # The process died while writing this line: drop the piece so the next row starts on its own line.
                cut = content.rfind(b"\n") + 1
                file.truncate(cut)
                content = content[:cut]
        rows = list(csv.reader(io.StringIO(content.decode("utf-8"))))
        if rows:
            self._columns[series] = rows[0][1:]
            steps = [int(row[0]) for row in rows[1:] if row]
            if steps:
                self._written_before[series] = max(steps)

    def log(self, series: str, scalars: Scalars, step: int) -> None:
        if series not in self._columns:
            os.makedirs(self.directory, exist_ok=True)
            self._open(series)
        if series in self._written_before and step <= self._written_before[series]:
            return
        values = dict(scalars)
        columns = self._columns[series]
        new = [name for name in values if name not in columns]
        if new:
            self._add_columns(series, new)
            columns = self._columns[series]
        row = [str(step)] + [_format(values[name]) if name in values else "" for name in columns]
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(row)
        with open(self.path(series), "a", encoding="utf-8", newline="") as file:
            file.write(buffer.getvalue())

    def _add_columns(self, series: str, new: list[str]) -> None:
        # A scalar first seen now: the header grows and earlier rows get empty cells. Rare; rewritten atomically.
        from ..utils.io import atomic_write

        path = self.path(series)
        old_columns = self._columns[series]
        columns = old_columns + new
        rows: list[list[str]] = []
        if os.path.isfile(path):
            with open(path, encoding="utf-8", newline="") as file:
                rows = list(csv.reader(file))[1:]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["step", *columns])
        for row in rows:
            writer.writerow(row + [""] * (len(columns) + 1 - len(row)))
        with atomic_write(path, "wb") as file:
            file.write(buffer.getvalue().encode("utf-8"))
        self._columns[series] = columns


class WandbTracker(Tracker):
    """A Weights & Biases run, under `directory/wandb`; offline unless credentials or `WANDB_MODE` say otherwise.

    Each series gets its own x axis, `{series}/step`, declared with `define_metric`, so the charts show the steps
    TensorBoard shows. The run's own `_step` is a counter of the points sent, kept in `run.json` and continued by
    a resume: it never goes back, so the parts of a resumed offline run (one `offline-run-*-{id}` directory per
    launch, all with the same id) sync into one run with nothing dropped.
    """

    name = "wandb"

    def __init__(self, directory: str, project: str, name: str, announce: Callable[[str], None]) -> None:
        self.directory = directory
        self.project = project
        self.run_name = name
        self.announce = announce
        self.run: Any = None
        self.id: str | None = None
        self.step = 0
        self._defined: set[str] = set()

    def start(self, hyperparameters: Mapping[str, Any], state: Mapping[str, Any] | None) -> None:
        wandb = _require("wandb")
        state = state or {}
        self.id = state.get("id") or uuid.uuid4().hex[:16]
        self.step = int(state.get("step", 0))
        mode = os.environ.get("WANDB_MODE")
        if mode is None and not wandb_credentials():
            mode = "offline"
            self.announce(
                "wandb: no WANDB_API_KEY, WANDB_MODE or login found: logging offline to "
                f"{os.path.join(self.directory, 'wandb')}; upload with "
                f"`wandb sync {os.path.join(self.directory, 'wandb', 'offline-run-*-' + self.id)}`"
            )
        os.makedirs(self.directory, exist_ok=True)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", self.project),
            name=self.run_name,
            id=self.id,
            resume="allow",
            dir=self.directory,
            mode=mode,
            config=dict(hyperparameters),
            # The runner's log already holds the console; W&B capturing it too would fight the progress bar.
            settings=wandb.Settings(console="off", silent=True),
            reinit="create_new",
        )
        self._defined = set()

    def log(self, series: str, scalars: Scalars, step: int) -> None:
        axis = f"{series}/step"
        if axis not in self._defined:
            self.run.define_metric(axis, hidden=True)
            self._defined.add(axis)
        payload: dict[str, Any] = {axis: step}
        for name, value in scalars:
            key = f"{series}/{name}"
            if key not in self._defined:
                self.run.define_metric(key, step_metric=axis)
                self._defined.add(key)
            payload[key] = value
        # `reserve` counted this point already: `step` is the next one's.
        self.run.log(payload, step=self.step - 1)

    def reserve(self) -> None:
        self.step += 1

    def state(self) -> dict[str, Any]:
        return {"id": self.id, "step": self.step}

    def finish(self, outcome: str) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if outcome in ("finished", "stopped_early") else 1)
            self.run = None


class MLflowTracker(Tracker):
    """An MLflow run, on `MLFLOW_TRACKING_URI` if set, else in the SQLite store `directory/mlflow.db`.

    The experiment is `MLFLOW_EXPERIMENT_NAME` if set, else the runner's `experiment_name`; each scalar is a metric
    `{series}/{name}` at the TensorBoard step, each config key a parameter (dotted names). A resume logs to the
    same run; parameters are immutable in MLflow, so a value a resume changed stays as first logged (the change is
    in `config.diff.yaml`).
    """

    name = "mlflow"

    def __init__(self, directory: str, experiment: str, name: str) -> None:
        self.directory = directory
        self.experiment = experiment
        self.run_name = name
        self.client: Any = None
        self.run_id: str | None = None
        self.tracking_uri: str | None = None

    def start(self, hyperparameters: Mapping[str, Any], state: Mapping[str, Any] | None) -> None:
        tracking = _require("mlflow", "mlflow.tracking")
        entities = import_module("mlflow.entities")
        state = state or {}
        self.tracking_uri = (
            os.environ.get("MLFLOW_TRACKING_URI")
            or state.get("tracking_uri")
            or f"sqlite:///{os.path.abspath(os.path.join(self.directory, 'mlflow.db'))}"
        )
        os.makedirs(self.directory, exist_ok=True)
        self.client = tracking.MlflowClient(tracking_uri=self.tracking_uri)
        self.run_id = state.get("run_id")
        logged: Mapping[str, str] = {}
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            logged = self.client.get_run(self.run_id).data.params
        else:
            experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME", self.experiment)
            experiment = self.client.get_experiment_by_name(experiment_name)
            if experiment is not None:
                experiment_id = experiment.experiment_id
            else:
                artifacts = os.path.abspath(os.path.join(self.directory, "mlflow-artifacts"))
                experiment_id = self.client.create_experiment(experiment_name, artifact_location=artifacts)
            self.run_id = self.client.create_run(experiment_id, run_name=self.run_name).info.run_id
        params = [
            entities.Param(key, str(value)[:6000])
            for key, value in flatten_hyperparameters(hyperparameters).items()
            if key not in logged
        ]
        for begin in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[begin : begin + 100])

    def log(self, series: str, scalars: Scalars, step: int) -> None:
        entities = import_module("mlflow.entities")
        now = int(time.time() * 1000)
        metrics = [entities.Metric(f"{series}/{name}", value, now, step) for name, value in scalars]
        self.client.log_batch(self.run_id, metrics=metrics)

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": self.tracking_uri}

    def finish(self, outcome: str) -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, status=_MLFLOW_STATUS.get(outcome, "FAILED"))


# MLflow's status for each way a run ends.
_MLFLOW_STATUS = {"finished": "FINISHED", "stopped_early": "FINISHED", "interrupted": "KILLED"}

TRACKERS = ("tensorboard", "csv", "wandb", "mlflow")
"""The trackers `config.trackers` may name."""

# The package each optional tracker needs, and the extra that installs it.
_EXTRAS = {"wandb": "danling[wandb]", "mlflow": "danling[mlflow]"}


def tracker_names(trackers: Iterable[str] | str | None, tensorboard: bool = False) -> list[str]:
    """The trackers a config asks for: `trackers`, with `tensorboard` added when `tensorboard` is set.

    Raises:
        ValueError: If a name is not one of [`TRACKERS`][danling.runner.trackers.TRACKERS].

    Examples:
        >>> tracker_names(None, tensorboard=True)
        ['tensorboard']
        >>> tracker_names(["csv", "wandb"], tensorboard=True)
        ['csv', 'wandb', 'tensorboard']
        >>> tracker_names("csv")
        ['csv']
    """
    names = [trackers] if isinstance(trackers, str) else list(trackers or [])
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        raise ValueError(f"unknown tracker(s) {unknown} in config.trackers; expected any of: {', '.join(TRACKERS)}")
    if tensorboard and "tensorboard" not in names:
        names.append("tensorboard")
    return list(dict.fromkeys(names))


def flatten_hyperparameters(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings flattened to dotted keys, for trackers that take flat parameters.

    Examples:
        >>> flatten_hyperparameters({"lr": 0.1, "optim": {"name": "sgd", "betas": [0.9, 0.99]}})
        {'lr': 0.1, 'optim.name': 'sgd', 'optim.betas': [0.9, 0.99]}
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_hyperparameters(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def wandb_credentials() -> bool:
    """Whether W&B could log in: `WANDB_API_KEY` is set, or `~/.netrc` (or `NETRC`) holds its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):  # no netrc, or one we cannot read: no login
        return False


def check_installed(names: Iterable[str]) -> None:
    """Raise `ImportError` saying what to install if a tracker in `names` needs a package that is missing.

    Looks the packages up without importing them, so a runner can check at construction and import at start.
    """
    from importlib.util import find_spec

    missing = [name for name in names if name in _EXTRAS and find_spec(name) is None]
    if missing:
        extras = " ".join(f"'{_EXTRAS[name]}'" for name in missing)
        raise ImportError(f"config.trackers asks for {', '.join(missing)}, not installed: pip install {extras}")


def _require(package: str, module: str | None = None) -> Any:
    try:
        return import_module(module or package)
    except ImportError as error:
        raise ImportError(
            f"config.trackers asks for {package!r}, which is not installed: pip install '{_EXTRAS[package]}'"
        ) from error


class Trackers:
    """The trackers of a run, sent every point together; skips points a resumed run wrote before its crash.

    Each tracker is started on the first point (or by `start`), with the hyperparameters `hyperparameters()`
    returns then and, for a resumed run, its state from the run being resumed.

    Args:
        trackers: The trackers, not started.
        resumed: The `trackers` record of the run being resumed (from its `run.json`), else `None`.
        hyperparameters: Returns the run's config, as hyperparameters.
        save_state: Called before each point is sent, once every tracker's `state()` counts it, so that a crash
            never leaves a sent point unrecorded (the runner writes `state()` to `run.json`).
    """

    def __init__(
        self,
        trackers: Sequence[Tracker] = (),
        resumed: Mapping[str, Any] | None = None,
        hyperparameters: Callable[[], Mapping[str, Any]] | None = None,
        save_state: Callable[[], None] | None = None,
    ) -> None:
        self.trackers = list(trackers)
        self._resumed = {key: dict(value) for key, value in (resumed or {}).items() if isinstance(value, Mapping)}
        self.logged_before: dict[str, int] = {
            series: int(step) for series, step in self._resumed.pop("logged", {}).items()
        }
        self.logged = dict(self.logged_before)
        self.hyperparameters = hyperparameters or dict
        self.save_state = save_state
        self._started: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def __iter__(self) -> Iterator[Tracker]:
        return iter(self.trackers)

    def __getitem__(self, name: str) -> Tracker:
        for tracker in self.trackers:
            if tracker.name == name:
                return tracker
        raise KeyError(f"no tracker {name!r}; this run has: {[tracker.name for tracker in self.trackers]}")

    def start(self) -> None:
        """Start the trackers not started yet (each continues its resumed run, if there is one)."""
        pending = [tracker for tracker in self.trackers if tracker.name not in self._started]
        if not pending:
            return
        hyperparameters = self.hyperparameters()
        for tracker in pending:
            tracker.start(hyperparameters, self._resumed.get(tracker.name))
            self._started.add(tracker.name)

    def log(self, series: str, scalars: Iterable[tuple[str, Any]], step: int) -> bool:
        """Send `scalars` of `series` at `step` to every tracker; `False` if the resumed run had sent it already."""
        if not self.trackers:
            return False
        if series in self.logged_before and step <= self.logged_before[series]:
            return False
        values = [(name, _to_float(value)) for name, value in scalars]
        if not values:
            return False
        self.start()
        self.logged[series] = max(step, self.logged.get(series, step))
        for tracker in self.trackers:
            tracker.reserve()
        if self.save_state is not None:
            self.save_state()
        for tracker in self.trackers:
            tracker.log(series, values, step)
        return True

    def state(self) -> dict[str, Any]:
        """`{tracker: its state, "logged": {series: last step}}`: what `run.json` keeps for a resume."""
        record: dict[str, Any] = {}
        for tracker in self.trackers:
            started = tracker.name in self._started
            record[tracker.name] = tracker.state() if started else self._resumed.get(tracker.name, {})
        record["logged"] = dict(self.logged)
        return record

    def flush(self) -> None:
        """Flush every started tracker."""
        for tracker in self.trackers:
            if tracker.name in self._started:
                tracker.flush()

    def finish(self, outcome: str) -> None:
        """Close every started tracker's run with the run's `outcome`; a later point continues the same runs."""
        for tracker in self.trackers:
            if tracker.name in self._started:
                self._resumed[tracker.name] = tracker.state()
                tracker.finish(outcome)
        self._started.clear()


def _to_float(value: Any) -> float:
    return float(value.item() if hasattr(value, "item") else value)


def _format(value: float) -> str:
    return repr(float(value))
