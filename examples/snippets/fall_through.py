"""Attribute access on a runner falls through to its config, and assignments follow one precedence.

Run it with:

    python examples/snippets/fall_through.py
"""

from __future__ import annotations

import tempfile

import danling as dl


def main() -> None:
    config = dl.Config(lr=0.1, epoch_end=3, log=False, project_root=tempfile.mkdtemp())
    runner = dl.BaseRunner(config)

    # --8<-- [start:reads]
    # Reads: the runner has no `lr` or `epoch_end`, so it reads them from its config.
    print(f"runner.lr: {runner.lr}, runner.epoch_end: {runner.epoch_end}")
    try:
        _ = runner.learning_rate
    except AttributeError as error:
        print(f"AttributeError: {error}")
    # --8<-- [end:reads]

    # --8<-- [start:writes]
    # 1. An attribute the runner has (on the instance or its class, properties included) is set on the runner.
    runner.model = "a model"  # `model` is declared on the runner class
    print(f"model on the runner: {'model' in runner.__dict__}, in the config: {'model' in runner.config}")
    runner.score_split = "val"  # a runner property whose setter writes config.score_split
    print(f"score_split in the config: {runner.config.score_split}")
    # 2. Else a key the config has is set in the config.
    runner.lr = 0.01
    print(f"config.lr: {runner.config.lr}, lr on the runner: {'lr' in runner.__dict__}")
    # 3. Else the runner gets a new attribute; the config is unchanged.
    runner.note = "not part of the config"
    print(f"note on the runner: {'note' in runner.__dict__}, in the config: {'note' in runner.config}")
    # To add a key to the config, assign it on the config.
    runner.config.note = "part of the config"
    print(f"runner.note: {runner.note}, config.note: {runner.config.note}")
    # --8<-- [end:writes]


if __name__ == "__main__":
    main()
