"""The code shown in the docs runs: every script under `examples/snippets` exits cleanly and prints what the pages say.

The guides include these scripts (pymdownx.snippets), so a change that breaks an example fails here, not in a
reader's terminal. Each script runs as its own process, with the repository on `PYTHONPATH`, in an empty working
directory and with `TMPDIR` pointing into the test's `tmp_path`, so nothing is written anywhere else.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SNIPPETS_DIR = REPO_ROOT / "examples" / "snippets"
DOCS_DIR = REPO_ROOT / "docs"
SNIPPETS = sorted(path.name for path in SNIPPETS_DIR.glob("*.py"))

# Lines (or parts of lines) each script must print. They are the numbers and facts the pages state.
EXPECTED_OUTPUT = {
    "batch_fetching.py": [
        "batch: ['input', 'target'], input (16, 4), target (16,)",
        "same weights fetching batches and samples: True",
    ],
    "first_runner.py": ["best val acc 1.0000 at epoch", "run directory: "],
    "fsdp.py": ["full weights: 8 tensors, first layer (32, 8)"],
    "accelerate_platform.py": [
        "accelerator: mixed_precision no, gradient_accumulation_steps 2, processes 1",
        "optimizer steps 12, scheduler steps 12",
        "checkpoint: model.pth optimizer.bin random_states_0.pkl runner.pth scheduler.bin",
        "resumed: epoch_begin 3, same weights True",
    ],
    "deepspeed_platform.py": [
        "deepspeed: micro-batch 16, accumulation 2, clipping 1.0",
        "optimizer steps 12, engine steps 12",
        "resumed: epoch_begin 3, same weights True",
    ],
    "by_steps.py": [
        "steps 30, passes begun 4, results at [10, 20, 30]",
        "step   train.loss  val.loss",
        "   30      0.3477    0.3073  <- best",
    ],
    "lifecycle.py": [
        "__init__: seed 7, id ",
        "dataloaders []",
        "__post_init__: dataloaders ['train'], device cpu",
        "batches per epoch: 4",
    ],
    "run_directory.py": [
        "name: regression-baseline",
        "dir: regression-baseline-",
        "file: run.log",
        "file: results.json",
        "file: latest.json",
        "file: best.json",
        "file: checkpoints/latest.pth",
        "file: checkpoints/best.pth",
        "file: checkpoints/epoch-0.pth",
        "file: checkpoints/epoch-1.pth",
        "same config, same id: True",
        "other config, same id: False",
    ],
    "fall_through.py": [
        "runner.lr: 0.1, runner.epoch_end: 3",
        "AttributeError: 'BaseRunner' object has no attribute 'learning_rate', nor has its config",
        "model on the runner: True, in the config: False",
        "score_split in the config: val",
        "config.lr: 0.01, lr on the runner: False",
        "note on the runner: True, in the config: False",
        "runner.note: not part of the config, config.note: part of the config",
    ],
    "scores.py": [
        "score_split: val, score_name: loss",
        "scores: {0: 0.5, 1: 0.4, 2: 0.45}",
        "best_fn: min, best_index: 1, is_best: False",
        "acc: best_fn max, best_index 2, best_score 0.85",
        "acc with score_mode='min': best_fn min, best_index 0",
        "val_rmse: min",
        "perplexity: min",
        "auroc: max",
        "val test train",
    ],
    "progress.py": [
        "planned: total_iters 20, total_steps 8, total_epochs 2",
        "optimizer step 3 after micro-batch 9 (epoch 0)",
        "optimizer step 4 after micro-batch 10 (epoch 0)",
        "optimizer step 5 after micro-batch 13 (epoch 1)",
        "optimizer step 8 after micro-batch 20 (epoch 1)",
        "done: iters 20, steps 8, epochs 1",
        "progress: 1.0",
    ],
    "resume.py": [
        "run stopped: crashed after micro-batch 20",
        "latest.pth holds epochs 1",
        "from_checkpoint: epoch_begin 2, same directory True",
        "config.checkpoint: epoch_begin 2, same directory True",
        "resume=True: found ",
        "resumed run equals uninterrupted run: True",
        "is corrupted: its checksum does not match its content",
        "resume=True fell back to epoch-3.pth",
        "epoch_begin 4",
    ],
    "mid_epoch_checkpoints.py": [
        "run stopped: crashed after micro-batch 14",
        "latest.pth: steps 12, position {'split': 'train', 'batches': 4, 'samples': 32, 'finished': {}}",
        "resumed run equals uninterrupted run: True",
    ],
    "preemption.py": [
        "stopped by SIGTERM after saving the run's state; resume from ",
        "exit status 143 (SIGTERM)",
        "saved at micro-batch 11",
        "finished: epochs 2, iters 24",
    ],
    "distributed.py": [
        "rank 0 of 1: 12 train batches, 25 val samples",
        "predictions: (25, 1), match the model: True",
    ],
    "accumulation_precision_ema.py": [
        "batch_size_equivalent: 32",
        "iters 8, steps 2",
        "same weights as batches of 32: True",
        "precision bf16: activations ['torch.bfloat16'], weights torch.float32",
        "EMA updates: 16 (optimizer steps: 16)",
        "evaluation uses the EMA: True",
    ],
    "custom_metrics.py": [
        "{'auroc': 0.625, 'auprc': 0.5556, 'acc': 0.25, 'f1': 0.2222, 'top2': 0.75}",
        "mae over every prediction: 0.5000",
        "mae averaged over batches: 0.5000",
        "train metrics: ['loss', 'top2']",
        "val metrics: ['acc', 'auprc', 'auroc', 'f1', 'loss', 'mcc', 'top2']",
        "best top2 (max): ",
    ],
    "compile.py": [
        "s spent compiling the model up to its first result",
        "checkpoint keys: ['0.weight', '0.bias', '2.weight', '2.bias']",
        "resume: changed compile: True → False",
        "loaded uncompiled: same weights True",
    ],
    "profiling.py": ["trace: rank0, steps ['ProfilerStep#3', 'ProfilerStep#4']"],
    "trackers.py": [
        "train.csv: steps [1, 5, 8, 9, 13, 16], columns "
        "['step', 'loss', 'samples_per_s', 'data_wait', 'peak_memory_gb']",
        "last step sent per split: {'train': 16, 'train/epoch': 1, 'val/epoch': 1}",
    ],
    "tensorboard_logging.py": [
        "step tags: ['train/data_wait', 'train/loss', 'train/peak_memory_gb', 'train/pearson', 'train/r2', "
        "'train/rmse', 'train/samples_per_s', 'train/spearman']",
        "'val/epoch/loss'",
        "val/epoch/loss at epochs [0, 1, 2]",
    ],
}

# `val loss 0.559707, over all 25 samples at once 0.559707`: the two numbers must agree.
VAL_LOSS = re.compile(r"val loss (\d+\.\d+), over all 25 samples at once (\d+\.\d+)")


def snippet_env(tmp_path: Path) -> dict[str, str]:
    temp = tmp_path / "tmp"
    temp.mkdir(exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["TMPDIR"] = str(temp)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_snippet(name: str, tmp_path: Path) -> subprocess.CompletedProcess:
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    completed = subprocess.run(
        [sys.executable, str(SNIPPETS_DIR / name)],
        cwd=workdir,
        env=snippet_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, f"{name} failed:\nSTDOUT:\n{completed.stdout}\nSTDERR:\n{completed.stderr}"
    assert not any(workdir.iterdir()), f"{name} wrote into its working directory: {sorted(os.listdir(workdir))}"
    return completed


def test_every_snippet_has_expected_output():
    assert SNIPPETS, f"no snippets under {SNIPPETS_DIR}"
    assert sorted(EXPECTED_OUTPUT) == SNIPPETS


# Snippets that need an optional package: skipped, with the reason, where it is not installed.
OPTIONAL_PACKAGES = {"accelerate_platform.py": "accelerate", "deepspeed_platform.py": "deepspeed"}


@pytest.mark.parametrize("name", SNIPPETS)
def test_snippet_runs_and_prints_what_the_docs_say(name, tmp_path):
    package = OPTIONAL_PACKAGES.get(name)
    if package is not None and find_spec(package) is None:
        pytest.skip(f"{name} needs {package}: pip install 'danling[{package}]'")
    completed = run_snippet(name, tmp_path)
    for expected in EXPECTED_OUTPUT.get(name, []):
        assert expected in completed.stdout, f"{name} did not print {expected!r}:\n{completed.stdout}"
    if name == "distributed.py":
        evaluated, direct = map(float, VAL_LOSS.search(completed.stdout).groups())
        assert evaluated == pytest.approx(direct, rel=1e-5)


# `rank 1: val loss 0.559707, over all 25 samples at once 0.559707`, from each process. Not anchored to lines: print
# writes the text and its newline separately, so the other process may write in between.
RANK_VAL_LOSS = re.compile(r"rank (\d+): val loss (\d+\.\d+), over all 25 samples at once (\d+\.\d+)")


def test_distributed_snippet_under_torchrun_counts_every_sample_once(tmp_path, monkeypatch, distributed_runner):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    completed = distributed_runner(SNIPPETS_DIR / "distributed.py", nproc=2)
    assert "rank 0 of 2: 6 train batches, 13 val samples" in completed.stdout
    assert "rank 1 of 2: 6 train batches, 12 val samples" in completed.stdout
    for rank in (0, 1):
        assert f"rank {rank}: predictions: (25, 1), match the model: True" in completed.stdout
    losses = {int(rank): (float(a), float(b)) for rank, a, b in RANK_VAL_LOSS.findall(completed.stdout)}
    assert sorted(losses) == [0, 1], completed.stdout
    for evaluated, direct in losses.values():
        assert evaluated == pytest.approx(direct, rel=1e-5)
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)  # one result, the same model on both processes


def test_every_snippet_is_shown_in_the_docs():
    pages = "\n".join(path.read_text(encoding="utf-8") for path in DOCS_DIR.rglob("*.md"))
    missing = [name for name in SNIPPETS if f"examples/snippets/{name}" not in pages]
    assert not missing, f"snippets no page includes: {missing}"


FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
    re.M | re.S,
)


def test_python_blocks_in_the_docs_are_included_from_examples():
    """A Python block in a page holds only `--8<--` includes of files under `examples/`, which the tests above run."""
    offending = []
    for page in sorted(DOCS_DIR.rglob("*.md")):
        for block in FENCE.finditer(page.read_text(encoding="utf-8")):
            if block["lang"].lower() not in ("python", "py", "pycon"):
                continue
            lines = [line.strip() for line in block["body"].splitlines() if line.strip()]
            if not lines or not all(re.fullmatch(r'--8<-- "examples/[\w/.-]+\.py(:[\w-]+)?"', line) for line in lines):
                offending.append(f"{page.relative_to(REPO_ROOT)}: {lines[:2]}")
    assert not offending, "Python blocks that are not includes of examples/:\n" + "\n".join(offending)
