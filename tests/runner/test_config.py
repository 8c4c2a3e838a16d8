"""Config: declared defaults, identity that ignores progress, CLI overrides and exact round trips."""

from __future__ import annotations

import subprocess

import pytest

import danling as dl
from danling.defaults import DEFAULT_EXPERIMENT_ID


def test_declared_defaults_match_the_documentation():
    config = dl.Config()
    assert config.score_name == "loss"
    assert config.project_root == "experiments"
    assert config.checkpoint_dir_name == "checkpoints"
    assert config.log is True
    assert config.tensorboard is False
    assert config.seed is None
    assert (config.iters, config.steps, config.epochs) == (0, 0, 0)
    assert config.accum_steps == 1


def test_user_values_override_defaults():
    config = dl.Config(score_name="acc", accum_steps=4, **{"optim.lr": 0.1})
    assert config.score_name == "acc"
    assert config.accum_steps == 4
    assert config.optim.lr == 0.1


def test_run_uuid_ignores_progress_counters_but_not_hyperparameters():
    config = dl.Config(lr=0.1, epoch_end=3)
    before = config.run_uuid
    config.iters, config.steps, config.epochs, config.epoch_begin = 100, 50, 2, 3
    assert config.run_uuid == before
    assert hash(config) == hash(int(before.hex, 16))
    config.lr = 0.2
    assert config.run_uuid != before


def test_experiment_uuid_derives_from_experiment_id():
    assert dl.Config(experiment_id="abc").experiment_uuid == dl.Config(experiment_id="abc").experiment_uuid
    assert dl.Config(experiment_id="abc").experiment_uuid != dl.Config(experiment_id="abd").experiment_uuid


def test_experiment_id_is_the_git_commit_of_the_working_directory(tmp_path, monkeypatch):
    git = subprocess.run(["git", "--version"], capture_output=True, check=False)
    if git.returncode != 0:
        pytest.skip("git is not installed")
    run = lambda *args: subprocess.run(  # noqa: E731
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True, capture_output=True
    )
    run("init", "-q")
    (tmp_path / "f").write_text("x")
    run("add", "f")
    run("commit", "-q", "-m", "c")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    monkeypatch.chdir(tmp_path)
    assert dl.Config().experiment_id == head


def test_experiment_id_falls_back_outside_a_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert dl.Config().experiment_id == DEFAULT_EXPERIMENT_ID


def test_cli_overrides_top_level_and_nested_keys():
    config = dl.Config(epoch_end=2)
    config.parse(["--epoch_end", "5", "--optim.lr", "0.01"])
    assert config.epoch_end == 5
    assert config.optim.lr == 0.01


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_nested_config_round_trips_exactly_without_injected_defaults(fmt):
    config = dl.Config(epoch_end=3, model={"encoder": {"layers": 2, "dims": [4, 8]}}, optim={"lr": 0.1})
    restored = getattr(dl.Config, f"from_{fmt}s")(getattr(config, f"{fmt}s")())
    assert restored.dict() == config.dict()
    assert "score_name" not in restored.model
    assert type(restored.model) is not dl.Config


@pytest.mark.parametrize(
    ("key", "value"),
    [("accum_steps", 0), ("precision", "fp8"), ("score_mode", "best"), ("epoch_end", -1), ("max_grad_norm", 0)],
)
def test_validate_names_the_bad_value(key, value):
    with pytest.raises(ValueError, match=repr(value).strip("'")):
        dl.Config(**{key: value})
    config = dl.Config()
    config[key] = value
    with pytest.raises(ValueError, match=key):
        config.validate()


def test_unknown_precision_lists_the_valid_ones():
    with pytest.raises(ValueError, match="fp16, bf16"):
        dl.Config(precision="fp8")


# The run id as a key


def test_run_id_is_a_key_of_a_fresh_config():
    config = dl.Config(lr=0.1)
    assert "run_id" in config
    assert config["run_id"] == config.get("run_id") == config.run_id == config.run_uuid.hex
    assert config.dict()["run_id"] == config.run_uuid.hex
    assert dl.Config.from_yamls(config.yamls()).dict()["run_id"] == config.run_uuid.hex


def test_run_id_key_follows_the_content_until_one_is_given():
    config = dl.Config(lr=0.1)
    before = config["run_id"]
    config.lr = 0.2
    assert config["run_id"] == config.dict()["run_id"] == config.run_uuid.hex != before
    config.optim.lr = 0.3  # a nested change too
    assert config["run_id"] == config.run_uuid.hex
    config.run_id = "chosen"
    config.lr = 0.4
    assert config["run_id"] == config.dict()["run_id"] == "chosen"
    config.run_id = None
    assert config["run_id"] == config.run_uuid.hex


def test_run_id_is_left_out_of_the_content_it_derives_from():
    plain = dl.Config(lr=0.1)
    assert dl.Config(lr=0.1, run_id="x").run_uuid == plain.run_uuid
    assert dl.Config(plain.dict()).run_uuid == plain.run_uuid
    assert dl.Config.from_yamls(plain.yamls()).run_id == plain.run_id


def stored_config() -> dl.Config:
    """A config as a runner leaves it: its id pinned when it started, then keys filled in after."""
    config = dl.Config(lr=0.1)
    config.run_id = config.run_id
    config.features = 4
    assert config.run_id != config.run_uuid.hex, "the stored id must differ from the content's for these tests"
    return config


@pytest.mark.parametrize(
    "load",
    [
        lambda config: dl.Config.from_yamls(config.yamls()),
        lambda config: dl.Config.from_jsons(config.jsons()),
        lambda config: dl.Config(config.dict()),
        lambda config: dl.Config().merge(config.dict()),
    ],
    ids=["yaml", "json", "mapping", "merge"],
)
def test_a_config_loaded_back_keeps_its_stored_run_id(load):
    stored = stored_config()
    loaded = load(stored)
    assert loaded.run_id == loaded["run_id"] == loaded.dict()["run_id"] == stored.run_id
    loaded.steps, loaded.epochs, loaded.checkpoint = 10, 2, "elsewhere.pth"  # progress and locations are not content
    assert loaded.run_id == stored.run_id


@pytest.mark.parametrize(
    "change",
    [
        lambda config: config.parse(["--lr", "0.5"]),
        lambda config: config.merge({"lr": 0.5}),
        lambda config: config.set("lr", 0.5),
        lambda config: setattr(config.optim, "lr", 0.5),
    ],
    ids=["cli", "merge", "set", "nested"],
)
def test_a_loaded_config_that_changes_gets_a_new_run_id(change):
    stored = stored_config()
    loaded = dl.Config.from_yamls(stored.yamls())
    change(loaded)
    assert loaded.run_id == loaded["run_id"] == loaded.dict()["run_id"] == loaded.run_uuid.hex
    assert loaded.run_id != stored.run_id


def test_a_loaded_config_changed_back_names_the_stored_run_again():
    stored = stored_config()
    loaded = dl.Config.from_yamls(stored.yamls())
    loaded.lr = 0.5
    loaded.lr = 0.1
    assert loaded.run_id == stored.run_id


@pytest.mark.parametrize(
    "choose",
    [
        lambda: dl.Config(lr=0.1, run_id="mine"),
        lambda: _assigned(dl.Config(lr=0.1), "mine"),
    ],
    ids=["keyword", "assigned"],
)
def test_a_chosen_run_id_is_kept_whatever_the_content(choose):
    config = choose()
    config.parse(["--lr", "0.5"])
    config.features = 4
    assert config.run_id == config["run_id"] == config.dict()["run_id"] == "mine"


def _assigned(config: dl.Config, run_id: str) -> dl.Config:
    config["run_id"] = run_id
    return config
