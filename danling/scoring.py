"""Results as plain data: which split holds the score, which way is better, the best epoch, and the text forms.

These functions take and return plain Python values and import neither torch nor chanfig, so both the runner
(through [`danling.runner.results`][danling.runner.results]) and the `danling` command, which reads a run
directory without starting torch, build on them. A result is `{split: {metric: value}}`; results are
`{index: result}`, the index being the epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .defaults import IGNORED_SET_NAMES, LOWER_IS_BETTER_NAMES

__all__ = [
    "choose_best_fn",
    "find_best_index",
    "find_scores",
    "format_result",
    "format_results_table",
    "format_value",
    "infer_score_split",
    "table_columns",
]


def infer_score_split(splits: Sequence[str], score_split: str | None = None) -> str:
    """The split that holds the score: `score_split` if given, else `val`, `validate`, the second split, the first.

    Keys in [`IGNORED_SET_NAMES`][danling.defaults.IGNORED_SET_NAMES] (like `index`) are never chosen.

    Examples:
        >>> infer_score_split(["train", "val", "test"])
        'val'
        >>> infer_score_split(["train", "test"])
        'test'
        >>> infer_score_split(["index", "train"])
        'train'
    """
    if score_split is not None:
        return score_split
    candidates = [split for split in splits if split not in IGNORED_SET_NAMES]
    for preferred in ("val", "validate"):
        if preferred in candidates:
            return preferred
    if not candidates:
        raise ValueError(f"cannot choose a score split: the result has no split, only {list(splits)}")
    return candidates[1] if len(candidates) > 1 else candidates[0]


def choose_best_fn(score_name: str, score_mode: str | None = None) -> Callable:
    """`min` for scores that are errors or losses, `max` otherwise; `score_mode` (`"min"`/`"max"`) overrides.

    Examples:
        >>> choose_best_fn("loss"), choose_best_fn("val_rmse"), choose_best_fn("acc")
        (<built-in function min>, <built-in function min>, <built-in function max>)
        >>> choose_best_fn("acc", "min")
        <built-in function min>
    """
    if score_mode is not None:
        return {"min": min, "max": max}[score_mode]
    name = score_name.lower()
    lower_is_better = any(
        name == suffix or name.endswith(("_" + suffix, "." + suffix)) for suffix in LOWER_IS_BETTER_NAMES
    )
    return min if lower_is_better else max


def find_scores(results: Mapping, split: str | None, name: str) -> dict:
    """`{index: score}` for every result that holds `results[index][split][name]`, in the order of `results`.

    Raises:
        ValueError: If `results` is not empty and no result holds the score; the message lists the splits and
            metrics the latest result has.

    Examples:
        >>> find_scores({0: {"val": {"acc": 0.5}}, 1: {"train": {"acc": 0.9}}, 2: {"val": {"acc": 0.75}}}, "val", "acc")
        {0: 0.5, 2: 0.75}
    """
    scores = {}
    for index, result in results.items():
        if isinstance(result, Mapping) and isinstance(result.get(split), Mapping) and name in result[split]:
            scores[index] = result[split][name]
    if results and not scores:
        latest = results[next(reversed(results))]
        available = {k: list(v.keys()) if isinstance(v, Mapping) else v for k, v in latest.items()}
        raise ValueError(
            f"score {split!r}/{name!r} (score_split/score_name) is not in the results; "
            f"the latest result has {available}"
        )
    return scores


def find_best_index(scores: Mapping, best_fn: Callable) -> Any:
    """Index of the best of `scores` by `best_fn` (`min` or `max`): the latest one among ties, never a NaN.

    Returns `0` when there are no scores.

    Examples:
        >>> find_best_index({0: 0.5, 1: 0.25, 2: 0.25, 3: float("nan")}, min)
        2
        >>> find_best_index({}, max)
        0
    """
    if not scores:
        return 0
    return best_fn(reversed(list(scores.keys())), key=lambda index: _score_key(best_fn, scores[index]))


def _score_key(best_fn: Callable, score: Any) -> Any:
    # NaN (a diverged epoch) must never be chosen as the best.
    if score is None or (isinstance(score, float) and math.isnan(score)):
        return -math.inf if best_fn is max else math.inf
    return score


def table_columns(result: Mapping) -> list[str]:
    """`"split.metric"` names of every scalar in `result`, in order: the default columns of a results table.

    Examples:
        >>> table_columns({"train": {"loss": 0.5}, "val": {"loss": 0.25, "acc": 0.75, "per_class": [1, 0]}})
        ['train.loss', 'val.loss', 'val.acc']
    """
    return [
        f"{split}.{metric}"
        for split, metrics in result.items()
        if isinstance(metrics, Mapping)
        for metric, value in metrics.items()
        if not isinstance(value, (Mapping, list, tuple))
    ]


def format_result(result: Mapping, format_spec: str = ".4f") -> str:
    """Format a (possibly nested) result for a log line: one `name: value` per metric, one line per split.

    Examples:
        >>> format_result({"loss": 0.12345, "acc": 0.9})
        'loss: 0.1235\\tacc: 0.9000'
        >>> print(format_result({"train": {"loss": 0.5}, "val": {"loss": 0.25, "acc": 0.75}}))
        train: loss: 0.5000
        val: loss: 0.2500	acc: 0.7500
    """
    flat, nested = [], []
    for key, value in result.items():
        if isinstance(value, Mapping):
            nested.append(f"{key}: {format_result(value, format_spec).replace(chr(10), chr(10) + '  ')}")
        else:
            flat.append(f"{key}: {format_value(value, format_spec)}")
    lines = (["\t".join(flat)] if flat else []) + nested
    return "\n".join(lines)


def format_results_table(
    results: Mapping,
    columns: Sequence[str],
    best_index: Any = None,
    format_spec: str = ".4f",
    index_name: str = "epoch",
) -> str:
    """A text table of `results` (`{index: {split: {metric: value}}}`), one row per index.

    Args:
        results: Results by epoch (or any index).
        columns: `"split.metric"` names of the values to show, in order.
        best_index: Index of the row to mark as the best.
        format_spec: Format of the values.
        index_name: Heading of the index column: `"epoch"`, or `"step"` for a run trained by steps.

    Examples:
        >>> results = {0: {"val": {"loss": 0.5, "acc": 0.75}}, 1: {"val": {"loss": 0.25, "acc": 0.875}}}
        >>> print(format_results_table(results, ["val.loss", "val.acc"], best_index=1))
        epoch  val.loss  val.acc
            0    0.5000   0.7500
            1    0.2500   0.8750  <- best
    """
    widths = [max(len(column), len(format(0.0, format_spec))) for column in columns]
    index_width = max(5, len(index_name), *(len(str(index)) for index in results))
    header = f"{index_name:<{index_width}}  " + "  ".join(
        f"{column:>{width}}" for column, width in zip(columns, widths)
    )
    lines = [header]
    for index, result in results.items():
        cells = []
        for column, width in zip(columns, widths):
            split, _, metric = column.partition(".")
            value = result.get(split, {}).get(metric) if isinstance(result.get(split), Mapping) else None
            cells.append(f"{format_value(value, format_spec):>{width}}" if value is not None else " " * width)
        marker = "  <- best" if index == best_index else ""
        lines.append(f"{index!s:>{index_width}}  " + "  ".join(cells) + marker)
    return "\n".join(lines)


def format_value(value: Any, format_spec: str = ".4f") -> str:
    """`value` as `format_spec` formats it; integers and booleans as they are, and what has no such format as `str`.

    Examples:
        >>> format_value(0.12345), format_value(3), format_value([1, 2])
        ('0.1235', '3', '[1, 2]')
    """
    if isinstance(value, (bool, int)):
        return str(value)
    if hasattr(value, "__format__") and not isinstance(value, (str, list, tuple)):
        try:
            return format(value, format_spec)
        except (TypeError, ValueError):
            return str(value)
    return str(value)
