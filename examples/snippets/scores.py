"""Results, scores and the best epoch: which split and metric rank epochs, and which direction is better.

Run it with:

    python examples/snippets/scores.py
"""

from __future__ import annotations

import tempfile

import danling as dl
from danling.runner.results import choose_best_fn, infer_score_split


def main() -> None:
    # --8<-- [start:results]
    runner = dl.BaseRunner(dl.Config(log=False, project_root=tempfile.mkdtemp()))
    runner.append_result({"train": {"loss": 0.9}, "val": {"loss": 0.50, "acc": 0.70}}, index=0)
    runner.append_result({"train": {"loss": 0.6}, "val": {"loss": 0.40, "acc": 0.80}}, index=1)
    runner.append_result({"train": {"loss": 0.4}, "val": {"loss": 0.45, "acc": 0.85}}, index=2)
    # score_split is None, so it is inferred: "val" is preferred; score_name defaults to "loss".
    print(f"score_split: {runner.score_split}, score_name: {runner.config.score_name}")
    print(f"scores: {runner.scores.dict()}")
    # A loss is better when lower: the best epoch is 1, and the latest (2) is not the best.
    print(f"best_fn: {runner.best_fn.__name__}, best_index: {runner.best_index}, is_best: {runner.is_best}")
    # --8<-- [end:results]

    # --8<-- [start:score_name]
    runner.config.score_name = "acc"  # higher is better: max
    print(f"acc: best_fn {runner.best_fn.__name__}, best_index {runner.best_index}, best_score {runner.best_score}")
    runner.config.score_mode = "min"  # force the direction, whatever the name
    print(f"acc with score_mode='min': best_fn {runner.best_fn.__name__}, best_index {runner.best_index}")
    # --8<-- [end:score_name]

    # --8<-- [start:rules]
    # Names that are losses or errors (or end in one, like "val_rmse") are minimised; others are maximised.
    for name in ("loss", "rmse", "val_rmse", "perplexity", "acc", "auroc"):
        print(f"{name}: {choose_best_fn(name).__name__}")
    # The score split: score_split if set; else "val", then "validate", then the second split, then the first.
    print(
        infer_score_split(["train", "val", "test"]), infer_score_split(["train", "test"]), infer_score_split(["train"])
    )
    # --8<-- [end:rules]


if __name__ == "__main__":
    main()
