"""`danling runs` and `danling show` on real run directories: trainings that finished, stopped early, crashed, and
one stopped by SIGTERM in another process.

The states come from `run.json`, which `TorchRunner.train()` writes through `write_config_file` and
`write_run_state` (when it starts, after each epoch, and when it ends: finished, stopped early, interrupted or
crashed). The tests that train here therefore check those call sites in `train()` as well as the command.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from toys import ClassificationRunner, Interrupted, ResumableRunner, make_config

import danling as dl
from danling.runs import CONFIG_FILE, RUN_STATES, STATE_FILE, read_run, resume_command

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = Path(__file__).parent / "scripts" / "train.py"
HEAVY = ("torch", "tensorboard", "chanfig")
# Runs `python -m danling ARGS...` in this interpreter, then prints the heavy packages it imported.
RUN_AS_MAIN = """
import runpy, sys
sys.argv = ["danling", *sys.argv[1:]]
try:
    runpy.run_module("danling", run_name="__main__", alter_sys=True)
except SystemExit as exit:
    assert not exit.code, exit.code
print("heavy modules:", sorted({name.split(".")[0] for name in sys.modules} & set(HEAVY)))
""".replace("HEAVY", repr(HEAVY))


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    return env


def danling(*args: str) -> str:
    """Output of `python -m danling ARGS`; fails the test if it exits with an error."""
    completed = subprocess.run(
        [sys.executable, "-m", "danling", *args], capture_output=True, text=True, env=environment(), check=False
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def start_training(root: Path, run_name: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(TRAIN_SCRIPT), "--project_root", str(root), "--run_name", run_name, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
        cwd=root.parent,
    )


def read_until(process: subprocess.Popen, prefix: str) -> str:
    for line in process.stdout:  # type: ignore[union-attr]
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"process ended before printing {prefix!r}: {process.stderr.read()}")  # type: ignore[union-attr]


def preempt(root: Path, run_name: str) -> str:
    """Start a training in another process, SIGTERM it in its second epoch; return its run directory."""
    process = start_training(root, run_name)
    run_dir = read_until(process, "dir ").split(" ", 1)[1]
    read_until(process, "iter 11")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    return run_dir if os.path.isabs(run_dir) else str(root.parent / run_dir)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Four runs under one root, launched in this order: finished, crashed, stopped early, preempted."""
    root = tmp_path_factory.mktemp("project") / "experiments"
    settings = {"epoch_end": 3, "samples": 60, "val_samples": 25, "score_name": "acc"}
    finished = ResumableRunner(make_config(root, run_name="finished", **settings))
    finished.train()
    crashed = ResumableRunner(make_config(root, run_name="crashed", fail_at_iter=20, **settings))
    with pytest.raises(Interrupted):
        crashed.train()
    # The loss goes down, so with score_mode="max" epoch 0 stays the best and patience 1 stops after epoch 1.
    early = ClassificationRunner(make_config(root, run_name="early", epoch_end=5, patience=1, score_mode="max"))
    early.train()
    preempted = preempt(root, "preempted")
    return {"root": root, "finished": finished, "crashed": crashed, "early": early, "preempted": preempted}


def rows(output: str) -> list[list[str]]:
    lines = output.strip().splitlines()
    return [line.split() for line in lines[1:]]


def test_runs_lists_every_run_oldest_first_with_its_state(project):
    output = danling("runs", str(project["root"]))
    header, *lines = output.strip().splitlines()
    assert header.split() == ["experiment", "run", "id", "timestamp", "state", "epochs", "done", "steps", "best", "dir"]
    assert [line.split()[1] for line in lines] == ["finished", "crashed", "early", "preempted"]
    finished, crashed, early, preempted = lines
    runner = project["finished"]
    assert finished.split()[:6] == ["DanLing", "finished", runner.id, runner.timestamp, "finished", "3/3"]
    assert f"  {runner.config.steps}  " in finished
    assert f"  val.acc {runner.best_score:.4f} @ {runner.best_index}  " in finished
    assert finished.endswith(runner.dir)
    assert "  crashed (resumable)  " in crashed and "  2/3  " in crashed
    assert "  stopped early  " in early and "  2/5  " in early
    assert "  interrupted (resumable)  " in preempted and "  1/3  " in preempted


def test_runs_json_has_the_numbers_for_scripts(project):
    runs = {run["run_name"]: run for run in json.loads(danling("runs", str(project["root"]), "--json"))}
    assert list(runs) == ["finished", "crashed", "early", "preempted"]
    finished = project["finished"]
    assert runs["finished"] | {"checkpoints": None} == {
        "dir": finished.dir,
        "name": finished.name,
        "experiment_name": "DanLing",
        "run_name": "finished",
        "id": finished.id,
        "timestamp": finished.timestamp,
        "state": "finished",
        "updated": runs["finished"]["updated"],
        "epochs": 3,
        "epoch_end": 3,
        "steps": finished.config.steps,
        "step_end": None,
        "by_steps": False,
        "score_split": "val",
        "score_name": "acc",
        "best_score": finished.best_score,
        "best_epoch": finished.best_index,
        "checkpoints": None,
        "resumable": True,
        "error": None,
    }
    assert runs["finished"]["checkpoints"] == ["latest.pth", "best.pth"]
    assert runs["crashed"]["state"] == "crashed" and "interrupted after micro-batch 20" in runs["crashed"]["error"]
    assert runs["early"]["state"] == "stopped_early" and runs["early"]["best_epoch"] == 0
    assert runs["preempted"]["state"] == "interrupted" and runs["preempted"]["resumable"]
    assert {run["state"] for run in runs.values()} <= set(RUN_STATES)


def test_runs_filters_by_substring_or_glob_on_the_name(project):
    root = str(project["root"])
    assert [row[1] for row in rows(danling("runs", root, "--name", "earl"))] == ["early"]
    assert [row[1] for row in rows(danling("runs", root, "--name", "DanLing-*ed"))] == [
        "finished",
        "crashed",
        "preempted",
    ]
    assert [run["run_name"] for run in json.loads(danling("runs", root, "-n", "*-cr?shed", "--json"))] == ["crashed"]
    assert json.loads(danling("runs", root, "--name", "nothing", "--json")) == []


def test_show_prints_the_config_the_results_table_the_checkpoints_and_how_to_resume(project):
    runner = project["finished"]
    output = danling("show", runner.dir)
    assert f"run:         {runner.name}" in output
    assert "state:       finished" in output
    assert runner.results_table() in output
    assert "<- best" in runner.results_table()
    config = yaml.safe_load(Path(runner.dir, CONFIG_FILE).read_text())
    assert config["run_name"] == "finished" and config["epoch_end"] == 3 and config["seed"] == 0
    assert "  run_name: finished" in output and "  epoch_end: 3" in output
    assert "  latest.pth  " in output and "  best.pth  " in output
    assert "--checkpoint" in output.split("resume:", 1)[1]
    report = json.loads(danling("show", runner.dir, "--json"))
    assert (report["state"], report["best_epoch"], report["config"]) == ("finished", runner.best_index, config)
    assert report["results"] == json.loads(Path(runner.dir, "results.json").read_text())["results"]
    assert report["resume_command"] == resume_command(runner.dir)


def test_runs_and_show_count_epochs_done_and_name_the_last_as_the_console_did(tmp_path):
    # The console names an epoch by its index (`epoch [2/2]` is the third of three); `runs` says 3/3. Read together,
    # the two must not look like a disagreement: the heading says "epochs done" and `show` names the last one.
    root = tmp_path / "experiments"
    config = make_config(root, run_name="counted", epoch_end=3)
    config.log = True
    runner = ClassificationRunner(config)
    runner.train()
    printed = re.findall(r"epoch \[(\d+)/(\d+)\]", Path(runner.log_path).read_text())
    assert printed[-1] == ("2", "2")
    header, row = danling("runs", str(root)).strip().splitlines()
    assert row[header.index("epochs done") :].startswith("3/3 ")
    output = danling("show", runner.dir)
    assert "epochs:      3 of 3 done (the last printed as epoch [2/2])" in output


def test_show_prints_the_best_and_the_last_epochs_and_every_epoch_with_all(tmp_path):
    # The loss goes down, so with score_mode="max" epoch 0 stays the best, far from the last five.
    runner = ClassificationRunner(make_config(tmp_path, epoch_end=9, score_mode="max"))
    runner.train()
    assert runner.best_index == 0
    header, *rows = runner.results_table().splitlines()
    assert len(rows) == 9
    table = danling("show", runner.dir).split("results:\n", 1)[1].split("\n\n", 1)[0]
    assert table.splitlines() == [
        header,
        rows[0],
        "  ...",
        *rows[4:],
        "(3 of 9 epochs not shown: --all shows every one)",
    ]
    assert rows[0].endswith("<- best")
    everything = danling("show", runner.dir, "--all")
    assert f"results:\n{runner.results_table()}\n\n" in everything
    assert "not shown" not in everything


@pytest.mark.usefixtures("own_process_group")
def test_show_gives_a_directory_checkpoint_the_size_of_the_directory_its_pointer_names(tmp_path):
    runner = ResumableRunner(make_config(tmp_path, platform="fsdp", epoch_end=1, samples=16, val_samples=8))
    runner.train()
    checkpoint_dir = Path(runner.checkpoint_dir)
    latest = checkpoint_dir / "latest.dcp"
    target = Path(dl.runner.pointers.resolve_checkpoint(str(latest)))
    size = sum(path.stat().st_size for path in target.rglob("*") if path.is_file())
    assert size > 10_000 and latest.stat().st_size < 100  # the pointer is a few bytes, the checkpoint is not
    lines = danling("show", runner.dir).split(f"checkpoints ({checkpoint_dir}):\n", 1)[1].splitlines()
    line = next(line for line in lines if line.lstrip().startswith("latest.dcp"))
    name, number, unit, arrow, named = line.split()
    assert (name, arrow, named) == ("latest.dcp", "->", os.path.relpath(target, checkpoint_dir))
    assert unit == "kB" and float(number) == round(size / 1000, 1)


def test_show_of_a_launches_directory_shows_the_newest(project):
    run_dir = Path(project["finished"].dir)
    output = danling("show", str(run_dir.parent))
    assert f"timestamp:   {run_dir.name}" in output


def test_the_resume_command_continues_the_preempted_run_to_its_end(tmp_path):
    run_dir = preempt(tmp_path / "experiments", "resumed")
    command = resume_command(run_dir)
    output = danling("show", run_dir)
    assert f"  {command}" in output
    cd, _, launch = command.partition(" && ")
    assert cd == f"cd {shlex.quote(str(tmp_path.resolve()))}"
    latest = os.path.relpath(Path(run_dir, "checkpoints", "latest.pth").resolve(), tmp_path.resolve())
    assert shlex.split(launch) == [
        sys.executable,
        str(TRAIN_SCRIPT),
        "--project_root",
        str(tmp_path / "experiments"),
        "--run_name",
        "resumed",
        "--checkpoint",
        latest,
    ]

    completed = subprocess.run(command, shell=True, capture_output=True, text=True, env=environment(), check=False)
    assert completed.returncode == 0, completed.stderr
    assert f"dir {run_dir}" in completed.stdout  # the same run directory, continued
    (run,) = json.loads(danling("runs", str(tmp_path / "experiments"), "--json"))
    assert (run["dir"], run["state"], run["epochs"], run["epoch_end"]) == (run_dir, "finished", 3, 3)


@pytest.mark.parametrize("command", ["runs", "show"])
def test_the_command_imports_neither_torch_nor_tensorboard(project, command):
    target = str(project["root"]) if command == "runs" else project["preempted"]
    completed = subprocess.run(
        [sys.executable, "-c", RUN_AS_MAIN, command, target],
        capture_output=True,
        text=True,
        env=environment(),
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "preempted" in completed.stdout
    assert completed.stdout.strip().endswith("heavy modules: []")


def test_the_console_script_is_the_same_command_and_stays_light(project):
    tomllib = pytest.importorskip("tomllib")
    entry = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]["danling"]
    module, _, function = entry.partition(":")
    code = (
        f"import sys\nfrom {module} import {function} as main\ncode = main(['runs', sys.argv[1]])\n"
        f"print('heavy modules:', sorted({{n.split('.')[0] for n in sys.modules}} & set({HEAVY!r})))\n"
        "sys.exit(code)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code, str(project["root"])],
        capture_output=True,
        text=True,
        env=environment(),
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    listing, _, heavy = completed.stdout.rpartition("heavy modules: ")
    assert heavy.strip() == "[]"
    assert listing == danling("runs", str(project["root"]))


def test_a_running_run_whose_process_is_gone_reads_as_crashed(tmp_path):
    runner = ClassificationRunner(make_config(tmp_path, epoch_end=1))
    runner.write_config_file()
    path = runner.write_run_state("running")
    assert read_run(runner.dir).state == "running"  # this process is alive
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = json.loads(Path(path).read_text())
    Path(path).write_text(json.dumps({**record, "pid": int(finished.stdout)}))
    assert read_run(runner.dir).state == "crashed"


def test_write_run_state_records_the_counters_and_rejects_unknown_states(tmp_path):
    runner = ClassificationRunner(make_config(tmp_path, epoch_end=1))
    with pytest.raises(ValueError, match="unknown run state 'done'; expected one of: running, finished, stopped_early"):
        runner.write_run_state("done")
    assert not Path(runner.dir, STATE_FILE).exists()
    runner.config.steps = 7
    record = json.loads(Path(runner.write_run_state("interrupted", signal="SIGTERM")).read_text())
    assert record["state"] == "interrupted" and record["signal"] == "SIGTERM" and record["steps"] == 7
    assert (record["name"], record["id"], record["timestamp"]) == (runner.name, runner.id, runner.timestamp)
    assert record["pid"] == os.getpid() and record["cwd"] == os.getcwd() and record["checkpoint_dir"] == "checkpoints"


def test_write_config_file_writes_plain_yaml_of_the_config(tmp_path):
    config = make_config(tmp_path, epoch_end=2, note=object())
    runner = ClassificationRunner(config)
    written = yaml.safe_load(Path(runner.write_config_file()).read_text())
    assert written["epoch_end"] == 2 and written["dataloader"] == {"batch_size": 8}
    assert written["note"].startswith("<object object at")


def test_resume_command_replaces_resume_arguments_and_relaunches_several_processes(tmp_path):
    run_dir = tmp_path / "experiments" / "DanLing-Run-0123456789abcdef" / "JHwxYnYn24"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "latest.pth").touch()
    python = "/env/bin/python"
    args = ["--lr", "0.1", "--checkpoint", "old.pth", "--resume=true", "--epoch_end", "9"]
    state = {"command": [python, "-u", "train.py", *args], "args": args, "cwd": str(tmp_path), "world_size": 1}
    latest = os.path.join("experiments", "DanLing-Run-0123456789abcdef", "JHwxYnYn24", "checkpoints", "latest.pth")
    assert resume_command(str(run_dir), state) == (
        f"cd {tmp_path} && {python} -u train.py --lr 0.1 --epoch_end 9 --checkpoint {latest}"
    )
    module_launch = {**state, "command": [python, "-u", "-m", "pkg.train", *args], "world_size": 4}
    module_launch["local_world_size"] = 2
    assert resume_command(str(run_dir), module_launch) == (
        f"cd {tmp_path} && {python} -m torch.distributed.run --nnodes=2 --nproc_per_node=2 -m pkg.train "
        f"--lr 0.1 --epoch_end 9 --checkpoint {latest}"
    )
    (run_dir / "checkpoints" / "latest.pth").unlink()
    assert resume_command(str(run_dir), state) is None


def test_runs_on_a_missing_root_says_so(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "danling", "runs", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        env=environment(),
        check=False,
    )
    assert completed.returncode == 1
    assert f"danling runs: no such directory: {str(tmp_path / 'nowhere')!r}" in completed.stderr
