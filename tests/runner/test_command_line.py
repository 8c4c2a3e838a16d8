"""The command line does what it says: a misspelt key stops the program before anything starts, with a suggestion;
a key the config does not define is taken, and reported at start on the console and in `run.log`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from toys import RegressionRunner, make_config

import danling as dl

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_a_misspelt_key_exits_before_anything_with_the_suggestion(capsys):
    config = dl.Config(epoch_end=3)
    with pytest.raises(SystemExit) as exited:
        config.parse(["--epoch_ned", "5"])
    assert exited.value.code == 2
    assert "unknown option --epoch_ned: did you mean --epoch_end?" in capsys.readouterr().err
    assert config.epoch_end == 3 and "epoch_ned" not in config


def test_the_leaf_of_a_nested_key_suggests_the_nested_key(capsys):
    config = dl.Config()
    config.optim.lr = 0.1
    with pytest.raises(SystemExit):
        config.parse(["--lr=0.5"])
    assert "did you mean --optim.lr?" in capsys.readouterr().err
    assert config.optim.lr == 0.1


def test_a_new_key_is_taken_and_reported_at_start_on_the_console_and_in_the_log(tmp_path, capsys):
    config = make_config(tmp_path, epoch_end=1)
    config.log = True
    config.parse(["--note", "baseline", "--epoch-end", "2", "--optim.momentum", "0.9"])
    assert config.note == "baseline" and config.epoch_end == 2 and config.optim.momentum == 0.9
    assert config.new_keys == ["note", "optim.momentum"]
    runner = RegressionRunner(config)
    line = "not used by the defaults: note='baseline', optim.momentum=0.9"
    assert line in capsys.readouterr().out
    assert line in Path(runner.log_path).read_text()


def test_known_keys_are_not_reported(tmp_path, capsys):
    config = make_config(tmp_path, epoch_end=1)
    config.log = True
    config.parse(["--epoch_end", "2", "--dataloader.batch_size", "4"])
    assert config.new_keys == []
    RegressionRunner(config)
    assert "not used by the defaults" not in capsys.readouterr().out


def test_the_digits_example_refuses_a_typo_before_training(tmp_path):
    command = [sys.executable, str(REPO_ROOT / "examples" / "digits.py"), "--epoch_ned", "3"]
    command += ["--project_root", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
    assert done.returncode == 2, done.stderr
    assert "did you mean --epoch_end?" in done.stderr
    assert not any(tmp_path.rglob("run.log")), "nothing may start before the typo is reported"
