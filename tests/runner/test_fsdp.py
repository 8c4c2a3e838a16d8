"""FSDP2 on two real gloo processes: DDP's numbers, one-process oracles for clipping and accumulation, exact resume
(also after a SIGKILL in the middle of a save), and resume on another number of processes."""

from __future__ import annotations

import copy
import gc
import json
import os
import signal
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import distributed as dist
from torch import nn
from toys import ResumableRunner, classification_data, make_config

import danling as dl
from danling.runner.dcp import checkpoint_complete
from danling.runner.fsdp_runner import FSDPRunner, resolve_checkpoint
from danling.runner.fsdp_utils import sharding_units
from danling.runner.pointers import PointedCheckpoints
from danling.utils.io import CorruptFileError

SCRIPT = Path(__file__).parent / "dist_scripts" / "fsdp_scenarios.py"
KILL_SCRIPT = Path(__file__).parent / "dist_scripts" / "fsdp_kill.py"
REPO_ROOT = Path(__file__).resolve().parents[2]


def run(distributed_runner, tmp_path, scenario, *args, nproc=2):
    distributed_runner(SCRIPT, scenario, str(tmp_path), str(tmp_path / "experiments"), *args, nproc=nproc)
    return [torch.load(tmp_path / f"{scenario}-rank{rank}.pt", weights_only=False) for rank in range(nproc)]


def assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=atol), (key, (a[key] - b[key]).abs().max().item())


def test_fsdp_matches_ddp_with_clipping_accumulation_ema_and_evaluation(tmp_path, distributed_runner):
    for report in run(distributed_runner, tmp_path, "versus-ddp"):
        ddp, fsdp = report["torch"], report["fsdp"]
        # Same samples, same global norm for clipping, same mean gradient: only the reduction order differs.
        assert_close(fsdp["model"], ddp["model"], atol=1e-6)
        assert_close(fsdp["ema"], ddp["ema"], atol=1e-6)
        assert fsdp["counters"] == ddp["counters"]
        # Evaluation under FSDP (uneven shards: 13 and 12 samples) counts every sample once: DDP shares the sampler
        # (and would share its mistakes), so both are held to one pass of the EMA over all 25 samples here.
        oracle = evaluate_in_one_pass(fsdp["ema"])
        for platform in (ddp, fsdp):
            assert platform["evaluated"] == 25
            assert platform["val"]["loss"] == pytest.approx(oracle["loss"], abs=1e-6)
            assert platform["val"]["acc"] == pytest.approx(oracle["acc"], abs=1e-7)
            assert torch.allclose(platform["infer"], oracle["logits"], atol=1e-5)
        assert fsdp["val"]["loss"] == pytest.approx(ddp["val"]["loss"], abs=1e-6)
        assert fsdp["infer"].shape == (25, 3)
        assert torch.allclose(fsdp["infer"], ddp["infer"], atol=1e-5)
        assert any(not torch.equal(fsdp["model"][k], report["fsdp"]["ema"][k]) for k in fsdp["model"])


def evaluate_in_one_pass(weights: dict) -> dict:
    """Loss, accuracy and logits of `ResumableRunner`'s model with `weights` on its 25 validation samples at once."""
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    model.load_state_dict(weights)
    inputs, targets = classification_data(25, seed=1).tensors
    with torch.no_grad():
        logits = model.eval()(inputs)
    return {
        "loss": F.cross_entropy(logits, targets).item(),
        "acc": (logits.argmax(1) == targets).float().mean().item(),
        "logits": logits,
    }


def test_fsdp_resume_mid_epoch_is_bitwise_equal_to_an_uninterrupted_run(tmp_path, distributed_runner):
    for report in run(distributed_runner, tmp_path, "resume"):
        assert report["resumed_from"] and report["resumed_from"].endswith("latest.dcp")
        straight, resumed = report["straight"], report["resumed"]
        for part in ("model", "ema"):
            assert all(torch.equal(straight[part][k], resumed[part][k]) for k in straight[part]), part
        assert straight["results"] == resumed["results"]
        assert straight["counters"] == resumed["counters"] and straight["lr"] == resumed["lr"]


@pytest.mark.parametrize("platform", ["fsdp", "torch"])
@pytest.mark.parametrize(("first", "then"), [(2, 1), (1, 2)])
def test_resume_on_another_number_of_processes_continues_the_run(tmp_path, distributed_runner, first, then, platform):
    reference = run(distributed_runner, tmp_path / "reference", "train", "4", platform, nproc=first)[0]["final"]
    run(distributed_runner, tmp_path / "split", "train", "2", platform, nproc=first)
    resumed = run(distributed_runner, tmp_path / "split", "train", "4", platform, nproc=then)
    assert resumed[0]["resumed_from"].endswith("latest.dcp" if platform == "fsdp" else "latest.pth")
    final = resumed[0]["final"]
    # Steps and epochs agree; `iters` counts each process's micro-batches, which accumulation doubles on one.
    assert final["counters"][1:] == reference["counters"][1:]
    assert list(final["results"]) == [0, 1, 2, 3]
    # The same samples reach the same global steps; only the order of float additions differs (a gradient is
    # reduced over 2 processes in one case and accumulated over 2 micro-batches in the other), so the weights
    # agree to float32 rounding accumulated over 24 AdamW steps, not bit for bit.
    assert_close(final["model"], reference["model"], atol=1e-5)
    assert final["results"][3]["train"]["loss"] == pytest.approx(reference["results"][3]["train"]["loss"], abs=1e-5)
    if then == 1 and platform == "fsdp":
        consolidated = resumed[0]["consolidated"]
        assert_close(consolidated, final["model"], atol=0)


@pytest.mark.usefixtures("own_process_group")
def test_an_incomplete_dcp_checkpoint_is_named_and_skipped(tmp_path, capsys):
    settings = {"platform": "fsdp", "epoch_end": 1, "save_interval": 1, "samples": 16, "val_samples": 8}
    runner = ResumableRunner(make_config(tmp_path, **settings))
    runner.train()
    checkpoint_dir = Path(runner.checkpoint_dir)
    # A save killed before DCP wrote `.metadata`, and `latest` pointing at it (damage no save of ours makes).
    directory = checkpoint_dir / "dcp" / "latest-s9-1"
    directory.mkdir()
    pointer = checkpoint_dir / "latest.dcp"
    pointer.write_text('{"path": "dcp/latest-s9-1"}')
    assert os.path.samefile(resolve_checkpoint(str(pointer)), directory)
    with pytest.raises(CorruptFileError, match=r"latest-s9-1 is incomplete: \.metadata is missing"):
        FSDPRunner.read_checkpoint_file(str(pointer))
    with pytest.raises(FileNotFoundError, match="nowhere.dcp"):
        FSDPRunner.read_checkpoint_file(str(tmp_path / "nowhere.dcp"))
    capsys.readouterr()
    # resume=True names what it skips, and takes the newest checkpoint that is complete.
    resumed = ResumableRunner(make_config(tmp_path, resume=True, **settings))
    err = capsys.readouterr().err
    assert f"resume: skipping {pointer}: checkpoint {directory} is incomplete: .metadata is missing" in err, err
    assert resumed.config.checkpoint == str(checkpoint_dir / "epoch-0.dcp")
    assert resumed.config.epoch_begin == 1


def test_fsdp_on_one_process_resumes_as_fsdp_and_loads_pretrained_weights_either_way(tmp_path, distributed_runner):
    report = run(distributed_runner, tmp_path, "single", nproc=1)[0]
    # Runner(platform="fsdp") and from_checkpoint of its checkpoint are FSDP runners; platform "torch" is not.
    assert report["types"] == [True, True, True, False]
    assert report["epoch_begin"] == 1
    assert_close(report["resumed"]["model"], report["final"]["model"], atol=0)
    assert_close(report["resumed"]["ema"], report["final"]["ema"], atol=0)
    assert_close(report["pretrained"], report["final"]["model"], atol=0)
    assert_close(report["plain"], report["final"]["model"], atol=0)


# One-process oracles: plain torch, float64, on the full model and the whole global batch.


def mlp() -> nn.Module:
    """The architecture of the scenarios' `RecordingRunner`; `load_state_dict` (strict) checks it is the same."""
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))


def large_batch_gradient(params: dict, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradient of the mean cross-entropy over one batch, in float64 on one process without FSDP."""
    model = mlp().double()
    model.load_state_dict({name: value.double() for name, value in params.items()})
    loss = F.cross_entropy(model(inputs.double()), targets)
    names = [name for name, _ in model.named_parameters()]
    return dict(zip(names, torch.autograd.grad(loss, list(model.parameters()))))


def global_norm(tensors: dict) -> torch.Tensor:
    return torch.sqrt(sum((tensor.double() ** 2).sum() for tensor in tensors.values()))


def assert_near(recorded: dict, expected: dict, atol: float) -> None:
    assert recorded.keys() == expected.keys()
    for key in expected:
        error = (recorded[key].double() - expected[key].double()).abs().max().item()
        assert error <= atol, (key, error)


def global_batch(steps: list[dict], index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples every process trained on at step `index`."""
    return torch.cat([s[index]["inputs"] for s in steps]), torch.cat([s[index]["targets"] for s in steps])


@pytest.fixture(scope="module")
def oracle_runs(tmp_path_factory, distributed_runner):
    return run(distributed_runner, tmp_path_factory.mktemp("oracle"), "oracle")


def test_fsdp_clips_by_the_norm_of_the_whole_unsharded_gradient(oracle_runs):
    max_norm = 0.05
    steps = [report["clip"]["steps"] for report in oracle_runs]
    assert len(steps[0]) == len(steps[1]) == 6
    for index, (step, other) in enumerate(zip(*steps)):
        # Both processes clip by the same norm and hold the same full gradients.
        assert torch.equal(step["norm"], other["norm"]), index
        for part in ("params", "grads", "clipped", "after"):
            assert all(torch.equal(step[part][k], other[part][k]) for k in step[part]), (index, part)
        inputs, targets = global_batch(steps, index)
        assert len(inputs) == 16
        gradient = large_batch_gradient(step["params"], inputs, targets)
        norm = global_norm(gradient)
        assert norm > 10 * max_norm  # clipping is active
        assert step["norm"].item() == pytest.approx(norm.item(), rel=1e-6, abs=0), index
        assert_near(step["grads"], gradient, atol=1e-6)
        clipped = {k: g * (max_norm / (norm + 1e-6)) for k, g in gradient.items()}
        assert_near(step["clipped"], clipped, atol=1e-7)
        assert global_norm(step["clipped"]).item() == pytest.approx(max_norm, rel=1e-5)
        assert_near(step["after"], {k: step["params"][k] - step["lr"] * clipped[k] for k in clipped}, atol=1e-7)


def test_fsdp_accumulation_without_gradient_sync_equals_one_large_batch(oracle_runs):
    for report in oracle_runs:
        # After a micro-batch that leaves its window open no sharded gradient exists: no reduce-scatter ran. The
        # same run with the reduction left on shows one after each micro-batch, so the probe sees the difference.
        assert report["accumulate"]["sharded_grads_between"] == [False] * 6
        assert report["accumulate-synced"]["sharded_grads_between"] == [True] * 6
    accumulated = [report["accumulate"]["steps"] for report in oracle_runs]
    large = [report["large"]["steps"] for report in oracle_runs]
    assert len(accumulated[0]) == len(large[0]) == 6
    assert all(torch.equal(accumulated[0][0]["params"][k], large[0][0]["params"][k]) for k in large[0][0]["params"])
    for index in range(6):
        for rank in (0, 1):
            step, big = accumulated[rank][index], large[rank][index]
            # Two micro-batches of 4 hold the 8 samples the large run takes in one batch, in the same order.
            assert step["micro"] == [4, 4] and big["micro"] == [8]
            assert torch.equal(step["inputs"], big["inputs"]) and torch.equal(step["targets"], big["targets"])
        step = accumulated[0][index]
        inputs, targets = global_batch(accumulated, index)
        gradient = large_batch_gradient(step["params"], inputs, targets)
        assert_near(step["grads"], gradient, atol=1e-6)
        assert_near(step["after"], {k: step["params"][k] - step["lr"] * gradient[k] for k in gradient}, atol=1e-7)
        assert_near(step["after"], large[0][index]["after"], atol=1e-6)


# A SIGKILL while DCP writes the shards of a checkpoint.


def launch_killed(output: Path, root: Path, interval: int, kill_at: int, ranks: tuple[int, ...]) -> dict:
    """Launch `fsdp_kill.py` on 2 processes, the processes in `ranks` killing themselves during save `kill_at`.

    Returns what the launch recorded: `launch` (the checkpoint it resumed from, its checkpoint directory) and
    `killed` (per killed rank, the shard file it was writing and the bytes it had written).
    """
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(KILL_SCRIPT)]
    command += [str(output), str(root), str(interval), str(kill_at), ",".join(map(str, ranks))]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert completed.returncode != 0, completed.stderr
    killed = {int(p.stem[len("killed-rank") :]): json.loads(p.read_text()) for p in output.glob("killed-rank*.json")}
    assert set(killed) == set(ranks), completed.stderr
    return {"launch": json.loads((output / "launch-rank0.json").read_text()), "killed": killed}


def pointers(checkpoint_dir: Path) -> dict[str, str]:
    return {p.name: os.path.normpath(resolve_checkpoint(str(p))) for p in checkpoint_dir.glob("*.dcp")}


def assert_latest_survived(record: dict, steps: int) -> Path:
    """The save that was killed is incomplete, named so and named by no pointer; `latest` is the save before it."""
    checkpoint_dir = Path(record["launch"]["checkpoint_dir"])
    (partial,) = {os.path.normpath(os.path.dirname(kill["file"])) for kill in record["killed"].values()}
    assert not os.path.exists(os.path.join(partial, ".metadata"))
    assert any(".metadata is missing" in problem for problem in checkpoint_complete(partial))
    with pytest.raises(CorruptFileError, match=r"\.metadata is missing"):
        FSDPRunner.read_checkpoint_file(partial)
    named = pointers(checkpoint_dir)
    assert "latest.dcp" in named and partial not in named.values(), named
    latest = Path(named["latest.dcp"])
    assert checkpoint_complete(latest) == []
    assert FSDPRunner.read_checkpoint_file(str(checkpoint_dir / "latest.dcp"))["runner"]["steps"] == steps
    for rank, kill in record["killed"].items():
        # The killed process had written part of its shard file: fewer bytes than a finished one holds.
        written = os.path.getsize(kill["file"])
        assert written == kill["bytes"] > 0
        assert written < os.path.getsize(latest / f"__{rank}_0.distcp")
    return latest


@pytest.mark.parametrize(
    ("interval", "kills"),
    [
        # Saves every step (3 a epoch, then the epoch's): both processes die in save 6 (step 5), so the run resumes
        # inside epoch 1 from step 4.
        (1, [(6, (0, 1), 4)]),
        # Saves at step 3 (the end of epoch 0's batches) and at the epoch's end: process 1 dies in the second, so
        # `latest` is the first save of its launch. The next launch resumes from it, and process 0 dies in that
        # launch's first save, which must not touch the checkpoint `latest` still names.
        (3, [(2, (1,), 3), (1, (0,), 3)]),
    ],
    ids=["both-processes-mid-epoch", "one-process-then-the-other-right-after-resuming"],
)
def test_a_sigkill_during_a_dcp_save_leaves_latest_loadable_and_the_resumed_run_exact(
    tmp_path, distributed_runner, interval, kills
):
    root = tmp_path / "root"
    partials, latest = [], None
    for launch, (kill_at, ranks, steps) in enumerate(kills):
        record = launch_killed(tmp_path / f"launch{launch}", root, interval, kill_at, ranks)
        survivor = assert_latest_survived(record, steps)
        if latest is not None:
            # This launch resumed from the `latest` the previous kill left, and its own kill left that one alone.
            assert record["launch"]["resumed_from"].endswith("latest.dcp")
            assert survivor == latest
        latest = survivor
        partials.append(os.path.dirname(next(iter(record["killed"].values()))["file"]))
    distributed_runner(KILL_SCRIPT, str(tmp_path / "final"), str(root), str(interval))
    for rank in (0, 1):
        assert json.loads((tmp_path / "final" / f"launch-rank{rank}.json").read_text())["resumed_from"].endswith(
            "latest.dcp"
        )
        report = torch.load(tmp_path / "final" / f"final-rank{rank}.pt", weights_only=False)
        straight, resumed = report["straight"], report["resumed"]
        for part in ("model", "ema"):
            assert all(torch.equal(straight[part][k], resumed[part][k]) for k in straight[part]), part
        assert straight["results"] == resumed["results"]
        assert straight["counters"] == resumed["counters"] and straight["lr"] == resumed["lr"]
    # Every partial directory is gone; what is left is complete and named by a pointer.
    checkpoint_dir = Path(json.loads((tmp_path / "final" / "launch-rank0.json").read_text())["checkpoint_dir"])
    assert not any(os.path.exists(partial) for partial in partials)
    named = set(pointers(checkpoint_dir).values())
    left = {os.path.normpath(path) for path in (checkpoint_dir / "dcp").iterdir()}
    assert left == named and all(checkpoint_complete(path) == [] for path in left)


# A failure, or a moved pointer, on one process only.


def run_with_deadline(tmp_path: Path, scenario: str, deadline: float = 60) -> list[dict]:
    """Run a scenario on 2 processes in its own session, killed whole after `deadline` seconds: a hang fails."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT)]
    command += [scenario, str(tmp_path), str(tmp_path / "experiments")]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    ) as process:
        try:
            output, _ = process.communicate(timeout=deadline)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the launcher and both workers
            process.communicate()
            pytest.fail(f"{scenario} did not finish within {deadline} s: a process was left waiting")
    assert process.returncode == 0, output
    return [torch.load(tmp_path / f"{scenario}-rank{rank}.pt", weights_only=False) for rank in range(2)]


def test_a_save_the_main_process_fails_to_start_raises_on_every_process(tmp_path):
    first, second = run_with_deadline(tmp_path, "save-failure")
    # The main process's own error; the other process is told of it instead of waiting for the checkpoint's name.
    assert first["error"] == "OSError: no space left on device", first["error"]
    assert second["error"].startswith("RuntimeError: checkpoint latest was not started: the main process failed")
    assert second["error"].endswith("OSError: no space left on device"), second["error"]
    # The first epoch's checkpoint (6 steps) is still `latest`.
    assert first["latest"] == second["latest"] == "dcp/latest-s6-1"


def test_every_process_loads_the_checkpoint_the_main_process_read_even_if_the_pointer_moved(tmp_path):
    reports = run_with_deadline(tmp_path, "moved-pointer")
    latest, earlier = reports[0]["checkpoints"]["latest"], reports[0]["checkpoints"]["epoch-0"]
    assert any(not torch.equal(latest[key], earlier[key]) for key in latest)
    for report in reports:
        # Both processes resumed from the checkpoint `latest.dcp` named when the main process read it.
        assert report["steps"] == 12
        assert_close(report["model"], latest, atol=0)


# Sharding units, chosen without a process group.


class Attention(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(x)


class Block(nn.Module):
    """72 parameters in `attn`, 72 in `mlp`: 144 in all."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.attn = Attention(width)
        self.mlp = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(torch.tanh(self.attn(x)))


class Stack(nn.Module):
    """Blocks inside one container (a `Sequential`, or a `ModuleList` that has no forward), then a 27-parameter head."""

    def __init__(self, blocks: int = 4, container: type[nn.Module] = nn.Sequential) -> None:
        super().__init__()
        self.layers = (
            container(*[Block() for _ in range(blocks)])
            if container is nn.Sequential
            else container([Block() for _ in range(blocks)])
        )
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layers:
            x = block(x)
        return self.head(x)


def names(model: nn.Module, units: list[nn.Module]) -> list[str]:
    qualified = {id(module): name for name, module in model.named_modules()}
    return [qualified[id(unit)] for unit in units]


def test_nested_units_are_each_sharded_the_inner_one_first():
    model = Stack(blocks=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nesting is not sharing: nothing is dropped, nothing is warned about
        units = sharding_units(model, [Block, Attention])
    assert names(model, units) == ["layers.1.attn", "layers.1", "layers.0.attn", "layers.0"]


def test_units_that_share_a_parameter_are_dropped_with_a_warning_naming_them():
    model = Stack(blocks=2)
    model.layers[0].mlp.weight = model.layers[1].mlp.weight  # tied across two blocks neither inside the other
    with pytest.warns(RuntimeWarning, match=r"layers\.0, layers\.1"):
        units = sharding_units(model, [Block, Attention])
    # The blocks' own attention layers share nothing and stay units; the tied weight goes to the root.
    assert names(model, units) == ["layers.1.attn", "layers.0.attn"]


@pytest.mark.parametrize("container", [nn.Sequential, nn.ModuleList])
def test_default_units_are_the_smallest_subtrees_holding_min_params(container):
    model = Stack(blocks=4, container=container)
    # Each block holds 144 parameters; its attention (one Linear) 72, its mlp 72; the head 27; the container 576.
    assert names(model, sharding_units(model, min_params=100)) == [f"layers.{i}" for i in (3, 2, 1, 0)]
    assert names(model, sharding_units(model, min_params=50)) == [
        f"layers.{i}.{part}" for i in (3, 2, 1, 0) for part in ("mlp", "attn.proj")
    ]
    # A Sequential of blocks too small to be units is one; a ModuleList (no forward) never is: the root takes it.
    expected = ["layers"] if container is nn.Sequential else []
    assert names(model, sharding_units(model, min_params=500)) == expected
    assert sharding_units(model, min_params=10_000) == []


# FSDP on one process, in this process.


@pytest.fixture
def own_process_group():
    """Leave no process group (or torchrun variable) behind: FSDP makes one even on one process."""
    environ = dict(os.environ)
    yield
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(environ)


class DtypeRecorder(nn.CrossEntropyLoss):
    """Cross-entropy that records the dtype of every prediction it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.dtypes.add(input.dtype)
        return super().forward(input.float(), target)


class ModuleEma(nn.Module):
    """An EMA in the style of timm's `ModelEmaV2`: a copy of the model as `.module`, updated by `update(model)`."""

    def __init__(self, model: nn.Module, decay: float = 0.9) -> None:
        super().__init__()
        self.module = copy.deepcopy(model)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for average, current in zip(self.module.state_dict().values(), model.state_dict().values()):
            average.copy_(average * self.decay + (1 - self.decay) * current)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


class StackRunner(dl.Runner):
    """`Stack` on 8-feature, 3-class data; `config.ema` picks the EMA: `module` (`ModuleEma`), `plain` or none."""

    def __init__(self, config):
        super().__init__(config)
        self.model = Stack(blocks=2)
        self.criterion = DtypeRecorder()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.datasets.train = classification_data(32, seed=0)
        if self.config.get("ema") == "module":
            self.ema = ModuleEma(self.model)
        elif self.config.get("ema") == "plain":
            self.ema = types.SimpleNamespace(update=lambda model: None, state_dict=dict)


def fsdp_config(root: Path, **kwargs) -> dl.Config:
    return make_config(root, platform="fsdp", epoch_end=1, **kwargs)


def test_nested_fsdp_units_named_in_the_config_are_each_sharded_and_logged(tmp_path, own_process_group, capsys):
    from torch.distributed.fsdp import FSDPModule

    runner = StackRunner(fsdp_config(tmp_path, fsdp_units=["Block", "Attention"], save_checkpoints=False))
    model = runner.model
    for block in model.layers:
        assert isinstance(block, FSDPModule) and isinstance(block.attn, FSDPModule)
    assert not isinstance(model.layers, FSDPModule) and not isinstance(model.head, FSDPModule)
    output = capsys.readouterr().out
    # Each unit with the parameters it manages itself: a block's attention is not counted in the block.
    assert "layers.0.attn (Attention): 72 parameters" in output and "layers.0 (Block): 72 parameters" in output
    assert "(root) (Stack): 27 parameters" in output
    runner.train()


def test_fsdp_default_units_open_a_container_of_blocks(tmp_path, own_process_group):
    from torch.distributed.fsdp import FSDPModule

    runner = StackRunner(fsdp_config(tmp_path, fsdp_min_unit_params=100, save_checkpoints=False))
    assert all(isinstance(block, FSDPModule) for block in runner.model.layers)
    assert not isinstance(runner.model.layers, FSDPModule)


@pytest.mark.parametrize(("output_precision", "expected"), [("fp32", torch.float32), (None, torch.bfloat16)])
def test_fsdp_under_bf16_gives_the_criterion_fp32_predictions_by_default(
    tmp_path, own_process_group, output_precision, expected
):
    config = fsdp_config(tmp_path, precision="bf16", fsdp_output_precision=output_precision, save_checkpoints=False)
    config.fsdp_units = ["Block"]  # units, so only the root is to cast what leaves the model
    runner = StackRunner(config)
    runner.train()
    assert runner.criterion.dtypes == {expected}


def test_fsdp_shards_an_ema_module_like_the_model_and_saves_it(tmp_path, own_process_group):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.tensor import DTensor

    fsdp = StackRunner(fsdp_config(tmp_path / "fsdp", ema="module"))
    assert all(isinstance(p, DTensor) for p in fsdp.ema.module.parameters())
    fsdp.train()
    plain = StackRunner(make_config(tmp_path / "torch", epoch_end=1, ema="module"))
    plain.train()
    options = StateDictOptions(full_state_dict=True)
    averaged = get_model_state_dict(fsdp.ema.module, options=options)
    assert_close(averaged, plain.ema.module.state_dict(), atol=1e-6)
    assert any(not torch.equal(averaged[k], plain.model.state_dict()[k]) for k in averaged)  # it is an average
    resumed = StackRunner.from_checkpoint(os.path.join(fsdp.checkpoint_dir, "latest.dcp"))
    assert_close(get_model_state_dict(resumed.ema.module, options=options), averaged, atol=0)


def test_fsdp_refuses_an_ema_it_cannot_shard_naming_what_works(tmp_path, own_process_group):
    with pytest.raises(ValueError, match=r"EMA of type SimpleNamespace cannot be sharded.*AveragedModel.*\.module"):
        StackRunner(fsdp_config(tmp_path, ema="plain"))


def test_fsdp_mesh_is_on_the_runner_device(tmp_path, own_process_group):
    runner = StackRunner(fsdp_config(tmp_path, save_checkpoints=False))
    assert {p.device_mesh.device_type for p in runner.model.parameters()} == {runner.device.type}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fsdp_keeps_the_model_on_the_cpu_of_a_gpu_machine_when_asked(tmp_path, own_process_group):
    runner = StackRunner(fsdp_config(tmp_path, device="cpu"))
    assert runner.device == torch.device("cpu") and dist.get_backend() == "gloo"
    assert {p.device_mesh.device_type for p in runner.model.parameters()} == {"cpu"}
    assert {p.to_local().device.type for p in runner.model.parameters()} == {"cpu"}
    runner.train()
    assert runner.config.steps == 4


# Durability of published checkpoints.


class Publisher(PointedCheckpoints):
    """What `publish_checkpoint` reads of a runner, and nothing else."""

    checkpoint_extension = ".dcp"
    checkpoint_states_dir = "dcp"
    is_best = False
    is_main_process = True
    _position = None

    def __init__(self, checkpoint_dir: str) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.config = dl.Config()


def test_a_checkpoint_directory_reaches_the_disk_before_a_pointer_names_it(tmp_path, monkeypatch):
    checkpoint_dir = tmp_path / "checkpoints"
    (checkpoint_dir / "dcp" / "latest-s1-1").mkdir(parents=True)
    (checkpoint_dir / "dcp" / "latest-s1-1" / "shard").write_bytes(b"x")
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(source, destination) -> None:
        events.append(("replace", os.path.realpath(destination)))
        real_replace(source, destination)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    Publisher(str(checkpoint_dir)).publish_checkpoint("latest", "latest-s1-1", epochs=0, save_best=False)
    switch = events.index(("replace", os.path.realpath(checkpoint_dir / "latest.dcp")))
    synced = {path for kind, path in events[:switch] if kind == "fsync"}
    for directory in (checkpoint_dir / "dcp" / "latest-s1-1", checkpoint_dir / "dcp", checkpoint_dir):
        assert os.path.realpath(directory) in synced, (directory, events)
    assert os.path.samefile(resolve_checkpoint(str(checkpoint_dir / "latest.dcp")), checkpoint_dir / "dcp/latest-s1-1")
