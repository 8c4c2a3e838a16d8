"""`config.compile`: the model trains compiled, recompiles nothing once warm, resumes bit for bit, and its
checkpoints load with or without compiling (never an `_orig_mod.` key)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from toys import Interrupted, ResumableRunner, assert_bitwise_equal, final_state, make_config

import danling as dl

# 60 training samples in batches of 8 end with a short batch of 4; 25 evaluation samples end with a batch of 1.
SETTINGS = {"epoch_end": 3, "samples": 60, "val_samples": 25, "dropout": 0.2}


COUNTER = CompileCounterWithBackend("aot_eager")
torch._dynamo.register_backend(name="counting")(COUNTER)


@pytest.fixture
def counting_backend():
    """The `torch.compile` backend `counting`: graphs run through AOT autograd, compilations counted from zero."""
    torch._dynamo.reset()
    COUNTER.clear()
    yield COUNTER
    torch._dynamo.reset()


class EpochCounts(ResumableRunner):
    """Records how many frames were compiled by the end of each epoch."""

    def evaluate_epoch(self, split):
        result = super().evaluate_epoch(split)
        self.__dict__.setdefault("compiled_by_epoch", []).append(self.counter.frame_count)
        return result


def test_a_compiled_run_recompiles_nothing_after_its_first_epoch(tmp_path, counting_backend, capsys):
    runner = EpochCounts(make_config(tmp_path, compile={"backend": "counting"}, **SETTINGS))
    runner.counter = counting_backend
    runner.train()
    first, second, third = runner.compiled_by_epoch
    # Training and evaluation (dropout on and off), the short last batches: all compiled in the first epoch.
    assert first > 0, "nothing was compiled"
    assert second == first and third == first, runner.compiled_by_epoch
    out = capsys.readouterr().out
    assert out.count("torch.compile: ") == 1 and "s spent compiling the model" in out


def test_a_compiled_run_trains_as_the_uncompiled_one(tmp_path, counting_backend):
    compiled = ResumableRunner(make_config(tmp_path / "compiled", compile={"backend": "counting"}, **SETTINGS))
    compiled.train()
    plain = ResumableRunner(make_config(tmp_path / "plain", **SETTINGS))
    plain.train()
    assert counting_backend.frame_count > 0
    # AOT autograd may order float operations differently, so not bit for bit.
    for key, value in plain.unwrap(plain.model).state_dict().items():
        torch.testing.assert_close(compiled.unwrap(compiled.model).state_dict()[key], value, atol=1e-5, rtol=1e-5)


def test_checkpoints_of_compiled_runs_have_no_compile_prefix_and_load_either_way(tmp_path, counting_backend):
    compiled = ResumableRunner(make_config(tmp_path / "compiled", compile={"backend": "counting"}, epoch_end=1))
    compiled.train()
    path = os.path.join(compiled.checkpoint_dir, "latest.pth")
    saved = dl.load(path)
    for part in ("model", "ema"):
        assert not any("_orig_mod" in key for key in saved[part]), part
    # Into an uncompiled runner, and an uncompiled run's checkpoint into a compiled runner.
    uncompiled = ResumableRunner(make_config(tmp_path / "compiled", epoch_end=1, checkpoint=path))
    assert_bitwise_equal(uncompiled.model.state_dict(), compiled.unwrap(compiled.model).state_dict())
    plain = ResumableRunner(make_config(tmp_path / "plain", epoch_end=1))
    plain.train()
    again = ResumableRunner(
        make_config(tmp_path / "again", epoch_end=1, compile={"backend": "counting"}),
    )
    again.load_pretrained(os.path.join(plain.checkpoint_dir, "latest.pth"))
    assert_bitwise_equal(again.unwrap(again.model).state_dict(), plain.model.state_dict())


def test_weights_saved_from_a_torch_compile_wrapper_load_without_its_prefix(tmp_path):
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    wrapped = torch.compile(model)  # another tool saved the wrapper's state dict: every key starts with _orig_mod.
    path = tmp_path / "weights.pth"
    torch.save(wrapped.state_dict(), path)
    assert all(key.startswith("_orig_mod.") for key in torch.load(path, weights_only=True))
    runner = ResumableRunner(make_config(tmp_path / "run", epoch_end=1))
    runner.load_pretrained(str(path))
    assert_bitwise_equal(runner.model.state_dict(), model.state_dict())


def test_resume_of_a_compiled_run_is_bitwise_equal_to_the_uninterrupted_compiled_run(tmp_path, counting_backend):
    settings = {**SETTINGS, "compile": {"backend": "counting"}, "checkpoint_interval": 1}
    straight = ResumableRunner(make_config(tmp_path / "straight", **settings))
    straight.train()
    broken = ResumableRunner(make_config(tmp_path / "crashed", fail_at_iter=11, **settings))
    with contextlib.suppress(Interrupted):
        broken.train()
    resumed = ResumableRunner.from_checkpoint(os.path.join(broken.checkpoint_dir, "latest.pth"))
    resumed.config.fail_at_iter = None
    resumed.train()
    assert_bitwise_equal(final_state(resumed), final_state(straight))


def test_a_bad_compile_setting_is_named(tmp_path):
    with pytest.raises(ValueError, match="config.compile is 'inductor'; expected true, false, a mode of torch.compile"):
        ResumableRunner(make_config(tmp_path, epoch_end=1, compile="inductor"))


@pytest.mark.usefixtures("own_process_group")
def test_fsdp_compiles_each_innermost_unit_and_its_checkpoint_loads_uncompiled(tmp_path, counting_backend):
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.linear(x).relu()

    class Blocks(ResumableRunner):
        def __init__(self, config):
            super().__init__(config)
            self.model = nn.Sequential(Block(), Block(), nn.Linear(8, 3))
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
            self.ema = None
            self.scheduler = None

    settings = {"platform": "fsdp", "epoch_end": 1, "samples": 32, "val_samples": 8, "fsdp_units": ["Block"]}
    runner = Blocks(make_config(tmp_path / "fsdp", compile={"backend": "counting"}, **settings))
    blocks = [module for module in runner.model.modules() if isinstance(module, Block)]
    assert all("forward" in vars(block) for block in blocks) and "forward" not in vars(runner.model)
    runner.train()
    assert counting_backend.frame_count > 0
    latest = os.path.join(runner.checkpoint_dir, "latest.dcp")
    uncompiled = Blocks(make_config(tmp_path / "fsdp", checkpoint=latest, **settings))
    assert not any("forward" in vars(module) for module in uncompiled.model.modules())
    assert uncompiled.config.epoch_begin == 1


def test_inductor_compiles_the_model_on_the_cpu_and_its_checkpoint_loads_uncompiled(tmp_path):
    torch._dynamo.reset()
    settings = {"epoch_end": 1, "samples": 32, "val_samples": 8, "dropout": 0.0}
    compiled = ResumableRunner(make_config(tmp_path / "inductor", compile=True, **settings))
    compiled.train()
    plain = ResumableRunner(
        make_config(tmp_path / "inductor", checkpoint=os.path.join(compiled.checkpoint_dir, "latest.pth"))
    )
    assert_bitwise_equal(plain.model.state_dict(), compiled.unwrap(compiled.model).state_dict())
    inputs = torch.randn(5, 8)
    compiled.model.eval()
    plain.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled.model(inputs), plain.model(inputs), atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()


def test_ddp_compiled_on_two_processes_resumes_bitwise(tmp_path, distributed_runner):
    script = Path(__file__).parent / "dist_scripts" / "resume_two_processes.py"
    settings = {"epoch_end": 2, "compile": {"backend": "aot_eager"}}
    completed = distributed_runner(script, str(tmp_path), json.dumps(settings))
    # Straight, interrupted (after its first epoch) and resumed: each run says once how long it compiled.
    assert completed.stdout.count("torch.compile: ") == 3, completed.stdout
    for rank in (0, 1):
        straight = torch.load(tmp_path / f"rank{rank}-straight.pt", weights_only=True)
        resumed = torch.load(tmp_path / f"rank{rank}-resumed.pt", weights_only=True)
        assert_bitwise_equal(resumed, straight, f"rank{rank}")
