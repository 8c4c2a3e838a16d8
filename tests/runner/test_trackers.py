"""Trackers: every tracker gets what TensorBoard gets, once, across a mid-epoch resume; each is read back with its
own reader (TensorBoard's event reader, the CSV files, W&B's offline run files, `MlflowClient` on the local store)."""

from __future__ import annotations

import csv
import glob
import json
import os
import struct
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
from toys import Interrupted, ResumableRunner, make_config

import danling as dl
from danling.runner.trackers import CSVTracker, tracker_names

REPO_ROOT = Path(__file__).resolve().parents[2]
# 60 samples in batches of 8: 8 steps an epoch. The run dies in step 13, having sent step 12; its newest checkpoint
# holds step 10, so the resume trains steps 11 and 12 again, which the first launch had sent to every tracker.
SETTINGS = {"epoch_end": 2, "samples": 60, "val_samples": 25, "log_interval": 1, "checkpoint_interval": 5}
OPTIONAL = [name for name in ("wandb", "mlflow") if find_spec(name) is not None]


def tensorboard_points(directory: str) -> dict[str, list[tuple[int, float]]]:
    """`{tag: [(step, value), ...]}` as TensorBoard reads the event files under `directory`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(directory)
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def csv_points(directory: str) -> dict[str, list[tuple[int, float]]]:
    """`{series/name: [(step, value), ...]}` from the CSV tracker's files."""
    points: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.csv"))):
        series = os.path.basename(path)[: -len(".csv")].replace("-", "/")
        with open(path, encoding="utf-8", newline="") as file:
            for row in csv.DictReader(file):
                for name, value in row.items():
                    if name != "step" and value != "":
                        points.setdefault(f"{series}/{name}", []).append((int(row["step"]), float(value)))
    return points


def wandb_records(path: str) -> list:
    """The records of a W&B run file (`run-{id}.wandb`): a 7-byte header, then 32 KiB blocks of chunks, each with a
    CRC, a length and a type (full, first, middle, last), that together hold serialized `Record` messages."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pending, position, block = [], b"", 7, 32 * 1024
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # too little room for a chunk header: the block is padded
            position += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0 and length == 0:
            position += left
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # full or last: a record is complete
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run with TensorBoard (the oracle), and a run with every tracker, crashed and resumed."""
    root = tmp_path_factory.mktemp("trackers")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
            patch.delenv(name, raising=False)
        patch.setenv("NETRC", str(root / "no-netrc"))  # no W&B login on this machine
        for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
            patch.setenv(name, str(root / name.lower()))
        straight = ResumableRunner(make_config(root / "straight", **SETTINGS, tensorboard=True))
        straight.train()
        straight.writer.close()
        trackers = ["tensorboard", "csv", *OPTIONAL]
        crashed = ResumableRunner(make_config(root / "crashed", **SETTINGS, trackers=trackers, fail_at_iter=13))
        with pytest.raises(Interrupted):
            crashed.train()
        first_record = dl.load(os.path.join(crashed.dir, "run.json"))
        latest = os.path.join(crashed.checkpoint_dir, "latest.pth")
        assert dl.load(latest)["runner"]["steps"] == 10
        resumed = ResumableRunner.from_checkpoint(latest)
        resumed.config.fail_at_iter = None
        resumed.train()
        resumed.writer.close()
    return {
        "oracle": tensorboard_points(os.path.join(straight.dir, "tensorboard")),
        "dir": resumed.dir,
        "first_record": first_record,
        "record": dl.load(os.path.join(resumed.dir, "run.json")),
    }


# Throughput scalars of the step lines (danling.runner.throughput), which depend on the clock.
TIMED = ("samples_per_s", "tokens_per_s", "data_wait", "peak_memory_gb", "mfu")


def assert_same_points(points, oracle):
    assert sorted(points) == sorted(oracle)
    for tag, expected in oracle.items():
        steps = [step for step, _ in points[tag]]
        assert steps == [step for step, _ in expected], f"{tag}: steps {steps}"
        if tag.rsplit("/", 1)[-1] in TIMED:
            continue  # measured time: the same steps, not the same values
        assert [value for _, value in points[tag]] == pytest.approx([v for _, v in expected], rel=1e-6), tag


def test_tensorboard_after_a_mid_epoch_resume_holds_each_step_once(runs):
    # Before trackers, the resumed launch wrote steps 11 and 12 a second time.
    assert_same_points(tensorboard_points(os.path.join(runs["dir"], "tensorboard")), runs["oracle"])


def test_csv_after_a_mid_epoch_resume_holds_what_tensorboard_holds_once(runs):
    points = csv_points(os.path.join(runs["dir"], "csv"))
    assert_same_points(points, runs["oracle"])
    assert sorted(os.listdir(os.path.join(runs["dir"], "csv"))) == ["train-epoch.csv", "train.csv", "val-epoch.csv"]


def test_run_json_keeps_the_tracker_runs_and_the_last_step_sent(runs):
    first, record = runs["first_record"]["trackers"], runs["record"]["trackers"]
    assert first["logged"]["train"] == 12  # the crash came inside step 13, before its line
    assert record["logged"] == {"train": 16, "train/epoch": 1, "val/epoch": 1}
    for name in OPTIONAL:
        key = {"wandb": "id", "mlflow": "run_id"}[name]
        assert record[name][key] == first[name][key], f"{name} started another run on resume"


@pytest.mark.skipif("wandb" not in OPTIONAL, reason="needs wandb: pip install 'danling[wandb]'")
def test_wandb_offline_parts_share_one_id_and_a_step_that_never_goes_back(runs):
    run_id = runs["record"]["trackers"]["wandb"]["id"]
    files = sorted(glob.glob(os.path.join(runs["dir"], "wandb", f"offline-run-*-{run_id}", f"run-{run_id}.wandb")))
    assert len(files) == 2, files  # one offline directory per launch, both the same run
    history, internal_steps = {}, []
    for path in files:
        records = wandb_records(path)
        (run,) = [record.run for record in records if record.WhichOneof("record_type") == "run"]
        assert run.run_id == run_id
        config = {item.key: json.loads(item.value_json) for item in run.config.update}
        assert config["epoch_end"] == 2 and config["log_interval"] == 1  # the whole config, as hyperparameters
        axes = {
            record.metric.name: record.metric.step_metric
            for record in records
            if record.WhichOneof("record_type") == "metric"
        }
        assert axes["train/loss"] == "train/step" and axes["val/epoch/loss"] == "val/epoch/step"
        for record in records:
            if record.WhichOneof("record_type") != "history":
                continue
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            internal_steps.append(row["_step"])
            for key, value in row.items():
                if not key.startswith("_") and not key.endswith("/step"):
                    axis = key.rsplit("/", 1)[0] + "/step"
                    history.setdefault(key, []).append((row[axis], value))
    # `_step` continues across the parts: syncing both into the one run drops no row.
    assert internal_steps == list(range(len(internal_steps)))
    assert_same_points(history, runs["oracle"])


@pytest.mark.skipif("mlflow" not in OPTIONAL, reason="needs mlflow: pip install 'danling[mlflow]'")
def test_mlflow_local_store_holds_one_run_with_each_step_once(runs):
    from mlflow.tracking import MlflowClient

    state = runs["record"]["trackers"]["mlflow"]
    assert state["tracking_uri"].startswith("sqlite:///" + runs["dir"])
    client = MlflowClient(tracking_uri=state["tracking_uri"])
    run = client.get_run(state["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["epoch_end"] == "2" and run.data.params["dataloader.batch_size"] == "8"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    points = {
        tag: [(metric.step, metric.value) for metric in client.get_metric_history(run.info.run_id, tag)]
        for tag in run.data.metrics
    }
    for tag in points:
        points[tag].sort(key=lambda point: point[0])  # MLflow returns the history unordered
    assert_same_points(points, runs["oracle"])


def test_csv_drops_a_line_cut_short_by_a_crash_and_writes_no_step_twice(tmp_path):
    (tmp_path / "train.csv").write_text("step,loss\n1,0.5\n2,0.4\n3,0.3", encoding="utf-8")  # "3,0.3" cut short
    tracker = CSVTracker(str(tmp_path))
    tracker.log("train", [("loss", 0.35)], 2)  # written before the crash
    tracker.log("train", [("loss", 0.3)], 3)
    tracker.log("train", [("loss", 0.2), ("acc", 0.9)], 4)  # a new column
    assert (tmp_path / "train.csv").read_text(encoding="utf-8") == "step,loss,acc\n1,0.5,\n2,0.4,\n3,0.3,\n4,0.2,0.9\n"


def test_an_unknown_tracker_is_refused_naming_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown tracker\(s\) \['neptune'\].*tensorboard, csv, wandb, mlflow"):
        make_config(tmp_path, trackers=["csv", "neptune"])
    assert tracker_names(None, tensorboard=True) == ["tensorboard"]
    assert tracker_names(None) == []


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_a_missing_tracker_package_says_what_to_install(tmp_path, monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # as if not installed: find_spec finds nothing
    with pytest.raises(ImportError, match=rf"pip install 'danling\[{name}\]'"):
        ResumableRunner(make_config(tmp_path, **SETTINGS, trackers=[name]))


def test_danling_and_a_runner_with_trackers_import_neither_wandb_nor_mlflow(tmp_path):
    script = (
        "import sys\n"
        "import danling as dl\n"
        "runner = dl.Runner(dl.Config(log=False, project_root=sys.argv[1], trackers=['tensorboard', 'csv']))\n"
        "print(sorted(name for name in ('wandb', 'mlflow') if name in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    completed = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().splitlines()[-1] == "[]"
