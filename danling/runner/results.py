"""Results, scores and the best epoch: the part of `BaseRunner` that keeps them, and the pure functions it uses.

The pure functions live in [`danling.scoring`][danling.scoring], which imports no torch, so that the `danling`
command can read a run directory with them; they are re-exported here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from warnings import warn

from chanfig import FlatDict, NestedDict

from ..scoring import (
    choose_best_fn,
    find_best_index,
    find_scores,
    format_result,
    format_results_table,
    infer_score_split,
    table_columns,
)
from ..utils.decorators import on_main_process
from ..utils.io import atomic_copy, to_builtin
from .config import Config
from .meta import RunnerMode
from .printing import PRINT_LOGGER
from .progress import FILE_ONLY, show_metrics

__all__ = [
    "Results",
    "choose_best_fn",
    "epoch_label",
    "format_result",
    "format_results_table",
    "infer_score_split",
]


class Results:
    """`results` and everything derived from it: scores, the latest and the best result and score."""

    config: Config
    results: NestedDict
    meters: Any
    metrics: Any
    train_metrics: Any
    evaluate_metrics: Any
    writer: Any
    trackers: Any
    _auto_indexed_results: int

    @property
    def best_fn(self) -> Callable:
        """`min` or `max`: how the best score is chosen.

        `min` for losses and errors (`loss`, `error`, `mae`, `mse`, `rmse`, `perplexity`, ... and names ending in
        them), `max` otherwise; `config.score_mode` forces it. Override in a subclass for anything else.
        """
        return choose_best_fn(self.config.score_name, self.config.get("score_mode"))

    @property
    def score_split(self) -> str | None:
        """The split that holds the score, as configured or inferred from the latest result."""
        if not self.results:
            return self.config.get("score_split")
        return infer_score_split(
            list(self.results[next(reversed(self.results))].keys()), self.config.get("score_split")
        )

    @score_split.setter
    def score_split(self, split: str | None) -> None:
        self.config.score_split = split

    @property
    def scores(self) -> FlatDict | None:
        """`{index: score}` for every result that holds `results[index][score_split][score_name]`.

        Raises:
            ValueError: If no result holds the score; the message lists the splits and metrics there are.
        """
        if not self.results:
            return None
        return FlatDict(find_scores(self.results, self.score_split, self.config.score_name))

    @property
    def best_index(self) -> int:
        """Index of the best score (the latest one among ties); `0` when there are no results."""
        return find_best_index(self.scores or {}, self.best_fn)

    @property
    def latest_result(self) -> NestedDict | None:
        """The most recent result `{split: {metric: value}}`, with its `index`."""
        if not self.results:
            return None
        index = next(reversed(self.results))
        result = NestedDict(self.results[index].dict() if hasattr(self.results[index], "dict") else self.results[index])
        result["index"] = index
        return result

    @property
    def best_result(self) -> NestedDict | None:
        """The result of the best epoch `{split: {metric: value}}`, with its `index`."""
        if not self.results:
            return None
        index = self.best_index
        result = NestedDict(self.results[index].dict() if hasattr(self.results[index], "dict") else self.results[index])
        result["index"] = index
        return result

    @property
    def latest_score(self) -> float | None:
        """Score of the most recent result that has one."""
        scores = self.scores
        if not scores:
            return None
        return scores[next(reversed(scores))]

    @property
    def best_score(self) -> float | None:
        """The best score so far."""
        scores = self.scores
        if not scores:
            return None
        return scores[self.best_index]

    @property
    def is_best(self) -> bool:
        """Whether the most recent score is the best one (`True` before there is any result)."""
        scores = self.scores
        if not scores:
            return True
        return next(reversed(scores)) == self.best_index

    def append_result(self, result: Mapping, index: int | None = None) -> None:
        """Add `result` (`{split: {metric: value}}`) to `results` at `index`, merging into an existing entry.

        `index` defaults to `config.epochs`. Plain dicts are accepted. Appending twice to index 0 without passing
        `index` warns: `config.epochs` was probably not advanced.
        """
        if index is None:
            index = self.config.epochs
            self._auto_indexed_results = getattr(self, "_auto_indexed_results", 0) + 1
            if index == 0 and self._auto_indexed_results > 1 and 0 in self.results:
                warn(
                    "append_result used config.epochs == 0 as index again; advance config.epochs before appending "
                    "each epoch's result, or pass index explicitly",
                    category=RuntimeWarning,
                    stacklevel=2,
                )
        result = result if isinstance(result, NestedDict) else NestedDict(result)
        if index in self.results:
            self.results[index].merge(result)
        else:
            self.results[index] = result

    def print_result(self) -> None:
        """Print the latest and the best result."""
        print(f"latest result: {self.latest_result}")
        print(f"best result: {self.best_result}")

    def results_table(self, columns: Sequence[str] | None = None, format_spec: str = ".4f") -> str:
        """`results` as a text table, one row per epoch (per evaluation when training by steps), the best one marked.

        Args:
            columns: `"split.metric"` names to show; by default every metric of every split in the latest result.
            format_spec: Format of the values.
        """
        if not self.results:
            return ""
        if columns is None:
            columns = table_columns(self.results[next(reversed(self.results))])
        index_name = "step" if self.trains_by_steps else "epoch"  # type: ignore[attr-defined]
        return format_results_table(self.results, columns, self.best_index, format_spec, index_name)

    def format_result(self, result: Mapping, format_spec: str = ".4f") -> str:
        """Format a result for a log line; see [`format_result`][danling.runner.results.format_result]."""
        return format_result(result, format_spec=format_spec)

    def format_step_result(
        self, result: Mapping, split: str | None, steps: int, length: int, format_spec: str = ".4f"
    ) -> str:
        """`"training on {split} [{steps}/{length}]\\t{result}"` (or evaluating/running, by mode).

        [`step_log`][danling.BaseRunner.step_log] passes the batches done and the batches of the pass.
        """
        prefix = ""
        if split is not None:
            mode = str(self.mode)  # type: ignore[attr-defined]
            prefix = {"train": f"training on {split} ", "eval": f"evaluating on {split} "}.get(
                mode, f"running in {mode} mode on {split} "
            )
        return f"{prefix}[{steps}/{length}]\t" + format_result(result, format_spec=format_spec)

    def format_epoch_result(
        self, result: Mapping, epochs: int | None = None, epoch_end: int | None = None, format_spec: str = ".4f"
    ) -> str:
        """[`epoch_label`][danling.runner.results.epoch_label] followed by the formatted result, one split per line."""
        epochs = self.config.epochs if epochs is None else epochs
        epoch_end = self.config.epoch_end if epoch_end is None else epoch_end
        header = epoch_label(epochs, epoch_end) if epoch_end else ""
        return with_header(header, format_result(result, format_spec=format_spec))

    @property
    def current_metrics(self) -> Any:
        """The metrics in use: `train_metrics` when training, `evaluate_metrics` otherwise, else `metrics`."""
        training = self._mode is RunnerMode.train  # type: ignore[attr-defined]
        specific = self.train_metrics if training else self.evaluate_metrics
        return specific if specific is not None else self.metrics

    def get_step_result(self) -> NestedDict:
        """Meters' last values merged with the metrics on the last batch."""
        metrics = self.current_metrics
        result = NestedDict(self.meters.value())
        return merge_metric_result(result, metrics.value()) if metrics is not None else result

    def get_epoch_result(self) -> NestedDict:
        """Meters' averages merged with the metrics over the whole epoch."""
        metrics = self.current_metrics
        result = NestedDict(self.meters.average())
        return merge_metric_result(result, metrics.average()) if metrics is not None else result

    def step_log(self, split: str, iteration: int, length: int | None = None) -> NestedDict:
        """Log the step result as a line counting batches done of the total; when training, write it to TensorBoard.

        The line reads `training on train [20/45]` after the batch of index 19 of 45: the count the progress bar
        shows. While a bar is on the screen, the result goes to the bar's postfix and the line to `run.log` only;
        otherwise the line is printed (and so logged).

        Args:
            split: The split the batch is from.
            iteration: Index of the batch just done, from 0.
            length: Index of the last batch of the pass; by default that of the split's dataloader.
        """
        if length is None:
            length = len(self.dataloaders[split]) - 1  # type: ignore[attr-defined]
        result = self.get_step_result()
        line = self.format_step_result(result, split, iteration + 1, length + 1)
        if not show_metrics(result):
            print(line)
        elif self.logger is not None:  # type: ignore[attr-defined]
            logging.getLogger(PRINT_LOGGER).info(line, extra=FILE_ONLY)
        if str(self.mode) == "train":  # type: ignore[attr-defined]
            self.write_result(result, split)
        return result

    def write_result(self, result: Mapping, split: str, steps: int | None = None) -> None:
        """Send every scalar of `result` to the trackers as `{split}/{metric}` at `steps` (default `config.steps`).

        A resumed run skips the steps of `split` that the run it resumes had sent already.
        """
        if not self.trackers:
            return
        steps = self.config.steps if steps is None else steps
        self.trackers.log(split, _flatten(result), steps)

    def write_score(self, name: str, score: float, split: str, steps: int) -> None:
        """Send one scalar to the trackers as `{split}/{name}` at `steps`."""
        if self.trackers:
            self.trackers.log(split, [(name, score)], steps)

    @on_main_process
    def save_result(self) -> None:
        """Write `results.json` (every result), `latest.json` and, when best, `best.json` to the run directory.

        Each file is written atomically; a failure raises with the path in the message. Only the main process
        writes; on the others this does nothing, so it may be called from any of them.
        """
        directory = self.dir  # type: ignore[attr-defined]
        header = {"name": self.name, "id": self.id, "timestamp": self.timestamp}  # type: ignore[attr-defined]
        results = {
            index: result.dict() if hasattr(result, "dict") else result for index, result in self.results.items()
        }
        record: dict[str, Any] = {**header, "results": results}
        changes = self.config.get("config_changes")  # type: ignore[attr-defined]
        if changes:
            # The results from each entry's epoch (step) on ran under its new values.
            record["config_changes"] = to_builtin(list(changes))
        self.save(record, os.path.join(directory, "results.json"))  # type: ignore[attr-defined]
        latest = self.latest_result
        latest_path = os.path.join(directory, "latest.json")
        latest_plain: Mapping = latest.dict() if latest is not None else {}  # type: ignore[assignment]
        self.save({**header, **latest_plain}, latest_path)  # type: ignore[attr-defined]
        if self.is_best:
            atomic_copy(latest_path, os.path.join(directory, "best.json"))


def with_header(header: str, body: str) -> str:
    """`body` after `header`: on the same line (a tab between) if it is one line, below it if it is several.

    Examples:
        >>> with_header("epoch [0/2]", "train: loss: 0.5")
        'epoch [0/2]\\ttrain: loss: 0.5'
    """
    if not header:
        return body
    return f"{header}\n{body}" if "\n" in body else f"{header}\t{body}"


def epoch_label(epochs: int, epoch_end: int) -> str:
    """The name of an epoch in the epoch lines and on the progress bars: its index and the last index.

    Epochs are named by their index in `results`, from 0, as the results table names them.

    Examples:
        >>> epoch_label(3, 20)
        'epoch [3/19]'
    """
    return f"epoch [{epochs}/{epoch_end - 1}]"


def merge_metric_result(result: NestedDict, metric_result: Mapping) -> NestedDict:
    """Merge metric values into `result`; a single-metric group `{task: {metric: v}}` collapses to `{task: v}`."""
    for key, value in metric_result.items():
        if isinstance(value, Mapping) and len(value) == 1:
            value = next(iter(value.values()))
        result[key] = value
    return result


def _flatten(result: Mapping, prefix: str = "") -> list[tuple[str, float]]:
    items: list[tuple[str, float]] = []
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            items.extend(_flatten(value, f"{name}/"))
        elif isinstance(value, (list, tuple)):
            items.extend((f"{name}/{i}", v) for i, v in enumerate(value))
        elif isinstance(value, (int, float)) or hasattr(value, "item"):
            items.append((name, value))
        elif hasattr(value, "avg"):  # a meter
            items.append((name, value.avg))
    return items
