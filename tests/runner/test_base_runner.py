"""BaseRunner: the spec's documented behaviour, and each place we deliberately differ from its code."""

from __future__ import annotations

import builtins
import json
import os
import random
import warnings

import numpy as np
import pytest

import danling as dl
from danling.runner.printing import RankPrint, restore_print


def make_runner(tmp_path, **kwargs) -> dl.BaseRunner:
    kwargs.setdefault("log", False)
    kwargs.setdefault("seed", 1)
    return dl.BaseRunner(dl.Config(project_root=str(tmp_path), **kwargs))


SPEC_RESULT = {
    "train": {"loss": 0.1, "accuracy": 0.9},
    "val": {"loss": 0.2, "accuracy": 0.8},
    "test": {"loss": 0.3, "accuracy": 0.7},
}


# Seeding


def test_seed_zero_is_a_valid_seed(tmp_path):
    make_runner(tmp_path, seed=0)
    first = (random.random(), np.random.rand())
    random.seed(0)
    np.random.seed(0)
    assert first == (random.random(), np.random.rand())


def test_set_seed_adds_bias_unless_bias_is_false(tmp_path):
    runner = make_runner(tmp_path)
    assert runner.set_seed(5, bias=3) == 8
    assert runner.set_seed(5, bias=False) == 5
    assert runner.set_seed(0, bias=False) == 0


def test_set_seed_draws_and_stores_a_seed_when_none_is_given_and_a_resumed_run_keeps_it(tmp_path):
    first = dl.BaseRunner(dl.Config(project_root=str(tmp_path / "first"), log=False))
    drawn = first.config.seed
    # The stored seed is the one the generators were seeded with.
    assert (random.random(), np.random.rand()) == (random.Random(drawn).random(), np.random.RandomState(drawn).rand())
    second = dl.BaseRunner(dl.Config(project_root=str(tmp_path / "second"), log=False))
    assert isinstance(drawn, int) and isinstance(second.config.seed, int)
    assert drawn != second.config.seed  # two draws from 2**32 seeds coincide once in four billion runs
    first.save_checkpoint()
    path = os.path.join(first.checkpoint_dir, "latest.pth")
    resumes = {
        "from_checkpoint": lambda: dl.BaseRunner.from_checkpoint(path),
        "config.checkpoint": lambda: dl.BaseRunner(
            dl.Config(project_root=str(tmp_path / "first"), log=False, checkpoint=path)
        ),
    }
    for how, resume in resumes.items():
        runner = resume()
        draws = (random.random(), np.random.rand())
        assert runner.config.seed == drawn, how
        assert draws == (random.Random(drawn).random(), np.random.RandomState(drawn).rand()), how


def test_invalid_seed_is_rejected_with_its_value(tmp_path):
    with pytest.raises(ValueError, match="-3"):
        make_runner(tmp_path, seed=-3)


# scale_lr


def test_scale_lr_reads_lr_scale_factor_from_config_when_set(tmp_path):
    runner = make_runner(tmp_path, lr_scale_factor=4)
    assert runner.scale_lr(0.1) == pytest.approx(0.4)


def test_scale_lr_derives_factor_from_batch_size_base(tmp_path):
    runner = make_runner(tmp_path, accum_steps=2, dataloader={"batch_size": 16})
    assert runner.scale_lr(0.1, batch_size_base=8) == pytest.approx(0.4)
    assert runner.config.lr_scale_factor == 4


def test_scale_lr_without_base_batch_size_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="batch_size_base"):
        make_runner(tmp_path).scale_lr(0.1)


# Results, scores and the best


def test_results_scores_and_best_on_the_spec_example(tmp_path):
    runner = make_runner(tmp_path, score_split="val", score_name="accuracy")
    runner.append_result(SPEC_RESULT, index=0)
    worse = {split: {"loss": 1.0, "accuracy": 0.5} for split in SPEC_RESULT}
    runner.append_result(worse, index=1)
    assert runner.scores.dict() == {0: 0.8, 1: 0.5}
    assert runner.latest_score == 0.5
    assert runner.best_score == 0.8
    assert runner.best_index == 0
    assert runner.is_best is False
    assert runner.latest_result["index"] == 1
    assert runner.best_result["index"] == 0
    assert runner.best_result["val"]["accuracy"] == 0.8


@pytest.mark.parametrize(
    ("splits", "expected"),
    [
        (["train", "val", "test"], "val"),
        (["train", "validate"], "validate"),
        (["train", "test"], "test"),
        (["train"], "train"),
    ],
)
def test_score_split_is_inferred_in_the_documented_order(tmp_path, splits, expected):
    runner = make_runner(tmp_path)
    runner.append_result({split: {"loss": 0.5} for split in splits}, index=0)
    assert runner.score_split == expected


@pytest.mark.parametrize(
    ("name", "best"),
    [("loss", min), ("mae", min), ("rmse", min), ("perplexity", min), ("val_error", min), ("acc", max), ("auroc", max)],
)
def test_best_fn_minimises_errors_and_maximises_the_rest(tmp_path, name, best):
    assert make_runner(tmp_path, score_name=name).best_fn is best


def test_score_mode_forces_the_direction(tmp_path):
    assert make_runner(tmp_path, score_name="acc", score_mode="min").best_fn is min


def test_rmse_scores_rank_lower_as_better(tmp_path):
    runner = make_runner(tmp_path, score_name="rmse")
    for index, rmse in enumerate([0.5, 0.2, 0.4]):
        runner.append_result({"val": {"rmse": rmse}}, index=index)
    assert runner.best_index == 1


def test_nan_score_is_never_the_best(tmp_path):
    runner = make_runner(tmp_path, score_name="acc")
    runner.append_result({"val": {"acc": 0.5}}, index=0)
    runner.append_result({"val": {"acc": float("nan")}}, index=1)
    assert runner.best_index == 0


def test_missing_score_name_lists_what_is_there(tmp_path):
    runner = make_runner(tmp_path, score_name="f1")
    runner.append_result(SPEC_RESULT, index=0)
    with pytest.raises(ValueError, match="accuracy"):
        _ = runner.scores


def test_missing_score_split_lists_what_is_there(tmp_path):
    runner = make_runner(tmp_path, score_split="dev")
    runner.append_result(SPEC_RESULT, index=0)
    with pytest.raises(ValueError, match="train"):
        _ = runner.best_score


def test_append_result_accepts_plain_dicts_and_merges_same_index(tmp_path):
    runner = make_runner(tmp_path)
    runner.append_result({"train": {"loss": 0.5}}, index=0)
    runner.append_result({"val": {"loss": 0.4}}, index=0)
    assert runner.results[0].dict() == {"train": {"loss": 0.5}, "val": {"loss": 0.4}}


def test_append_result_warning_state_lives_on_each_runner(tmp_path):
    first, second = make_runner(tmp_path / "a"), make_runner(tmp_path / "b")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first.append_result({"train": {"loss": 1.0}})
        second.append_result({"train": {"loss": 1.0}})  # a global counter would warn here
    with pytest.warns(RuntimeWarning, match="epochs"):
        first.append_result({"train": {"loss": 0.5}})


# IO


def test_dir_follows_the_documented_layout(tmp_path):
    runner = make_runner(tmp_path)
    assert runner.dir == os.path.join(str(tmp_path), f"{runner.name}-{runner.id}", runner.timestamp)
    assert runner.id == f"{runner.config.experiment_id:.8}{runner.config.run_id:.8}"
    assert runner.checkpoint_dir == os.path.join(runner.dir, "checkpoints")
    assert os.path.isdir(runner.checkpoint_dir)


def test_save_result_writes_results_latest_and_best(tmp_path):
    runner = make_runner(tmp_path, score_name="accuracy")
    runner.append_result(SPEC_RESULT, index=0)
    runner.save_result()
    runner.append_result({split: {"loss": 1.0, "accuracy": 0.1} for split in SPEC_RESULT}, index=1)
    runner.save_result()
    with open(os.path.join(runner.dir, "results.json")) as fp:
        saved = json.load(fp)
    assert saved["id"] == runner.id and set(saved["results"]) == {"0", "1"}
    with open(os.path.join(runner.dir, "latest.json")) as fp:
        assert json.load(fp)["index"] == 1
    with open(os.path.join(runner.dir, "best.json")) as fp:
        assert json.load(fp)["index"] == 0


def test_check_dir_rejects_an_unknown_action(tmp_path):
    with pytest.raises(ValueError, match="delete"):
        make_runner(tmp_path).check_dir("delete")


def test_check_dir_warns_or_raises_when_not_empty(tmp_path):
    runner = make_runner(tmp_path)
    assert runner.check_dir() is True
    open(os.path.join(runner.dir, "x"), "w").close()
    with pytest.warns(RuntimeWarning):
        assert runner.check_dir() is False
    with pytest.raises(RuntimeError, match="not empty"):
        runner.check_dir("raise")


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_runner_config_round_trips_through_strings_and_files(tmp_path, fmt):
    runner = make_runner(tmp_path, epoch_end=4, model={"encoder": {"layers": 2}})
    from_string = getattr(dl.BaseRunner, f"from_{fmt}s")(getattr(runner, f"{fmt}s")())
    assert from_string.config.dict() == runner.config.dict()
    path = tmp_path / f"config.{fmt}"
    getattr(runner, fmt)(path)
    from_file = getattr(dl.BaseRunner, f"from_{fmt}")(path)
    assert from_file.config.dict() == runner.config.dict()


def test_runner_dict_is_nested_like_config_dict(tmp_path):
    runner = make_runner(tmp_path, optim={"lr": 0.1})
    assert runner.dict() == runner.config.dict()
    assert runner.dict()["optim"] == {"lr": 0.1}


# Mode and progress


def test_unknown_mode_lists_the_valid_ones(tmp_path):
    runner = make_runner(tmp_path)
    runner.mode = "eval"
    assert runner.mode == dl.runner.RunnerMode.eval
    with pytest.raises(ValueError, match="train, eval, inf"):
        runner.mode = "test"


def test_total_epochs_without_epoch_end_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="epoch_end"):
        _ = make_runner(tmp_path).total_epochs


def test_progress_is_steps_over_total_steps(tmp_path):
    runner = make_runner(tmp_path, step_end=40)
    runner.config.steps = 10
    assert runner.progress == 0.25


# Config fall-through

FALL_THROUGH_TABLE = [
    # (attribute, where the runner has it, expected home after assignment)
    ("lr", "config", "config"),  # only the config has it: the write goes to the config
    ("model", "class", "runner"),  # a runner slot: stays on the runner
    ("brand_new", "nowhere", "runner"),  # nobody has it: a new runner attribute
    ("score_split", "property", "config"),  # a runner property with a setter that writes the config
]


@pytest.mark.parametrize(("name", "where", "home"), FALL_THROUGH_TABLE)
def test_attribute_writes_follow_the_documented_precedence(tmp_path, name, where, home):
    runner = make_runner(tmp_path, lr=0.1)
    setattr(runner, name, "value")
    assert getattr(runner, name) == "value"
    if home == "config":
        assert runner.config[name] == "value"
        assert name not in runner.__dict__
    else:
        assert runner.__dict__[name] == "value"
        assert runner.config.get(name) != "value"


def test_runner_reads_fall_through_to_config(tmp_path):
    runner = make_runner(tmp_path, lr=0.1, epoch_end=3)
    assert runner.lr == 0.1
    assert runner.epoch_end == 3
    assert runner.run_uuid == runner.config.run_uuid
    assert "lr" in runner and "nonexistent" not in runner
    with pytest.raises(AttributeError, match="nonexistent"):
        _ = runner.nonexistent


def test_repr_lists_instance_attributes(tmp_path):
    assert "(timestamp)" in repr(make_runner(tmp_path))


# Printing


def test_print_with_log_reaches_stdout_and_the_log_file(tmp_path, capsys):
    runner = make_runner(tmp_path, log=True)
    try:
        print("a", 1, sep="-")
        for handler in __import__("logging").getLogger("danling").handlers:
            handler.flush()
        assert "a-1" in capsys.readouterr().out
        with open(runner.log_path) as fp:
            assert "a-1" in fp.read()
    finally:
        restore_print()


def test_print_replacement_is_installed_once_and_undoable(tmp_path):
    restore_print()  # start from the interpreter's own print, whatever earlier tests left
    original = builtins.print
    try:
        make_runner(tmp_path / "a")
        installed = builtins.print
        make_runner(tmp_path / "b")
        assert isinstance(installed, RankPrint) and builtins.print is installed
        assert installed.original is original
    finally:
        restore_print()
    assert builtins.print is original


def test_print_to_an_explicit_file_is_not_swallowed(tmp_path, capsys):
    import sys

    try:
        make_runner(tmp_path, log=True)
        print("to stderr", file=sys.stderr)
        assert "to stderr" in capsys.readouterr().err
    finally:
        restore_print()


def test_print_follows_the_newest_runner_still_alive(tmp_path, capsys):
    import gc
    import logging

    try:
        older = make_runner(tmp_path / "older", log=True)
        newer = make_runner(tmp_path / "newer", log=False)
        del newer
        gc.collect()
        print("after the newer runner is gone")
        for handler in logging.getLogger("danling").handlers:
            handler.flush()
        with open(older.log_path) as fp:
            assert "after the newer runner is gone" in fp.read()
    finally:
        restore_print()


def test_results_table_shows_every_metric_and_marks_the_best(tmp_path):
    runner = make_runner(tmp_path, score_name="accuracy")
    runner.append_result(SPEC_RESULT, index=0)
    runner.append_result({split: {"loss": 1.0, "accuracy": 0.95} for split in SPEC_RESULT}, index=1)
    header, first, second = runner.results_table().splitlines()
    assert header.split() == ["epoch", *(f"{s}.{m}" for s in SPEC_RESULT for m in ("loss", "accuracy"))]
    assert first.split()[:3] == ["0", "0.1000", "0.9000"]
    assert second.endswith("<- best")
    assert not first.endswith("<- best")
