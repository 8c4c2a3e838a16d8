"""DeepSpeed on two real gloo processes (DeepSpeed's CPU accelerator): DDP's numbers, exact resume (at an epoch
boundary and inside an epoch) for ZeRO stages 1 and 2, crash-safe checkpoints, and our config in DeepSpeed's terms.

Skipped, with the reason, when `deepspeed` is not installed (`pip install 'danling[deepspeed]'`) or when the
communication op DeepSpeed compiles on first use on the CPU cannot be built.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from toys import ResumableRunner, assert_bitwise_equal, make_config

import danling as dl
from danling.utils.io import CorruptFileError

SCRIPT = Path(__file__).parent / "dist_scripts" / "deepspeed_scenarios.py"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def deepspeed_runner():
    """The `deepspeed_runner` module, once DeepSpeed's CPU communication op is built (about a minute, once)."""
    pytest.importorskip("deepspeed", reason="deepspeed is not installed: pip install 'danling[deepspeed]'")
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    builder = ShareMemCommBuilder()
    if builder.is_compatible():
        try:
            builder.load(verbose=False)  # built here once, so the two processes of each test only load it
        except Exception as error:  # a missing or failing compiler fails in many ways; all mean skip
            pytest.skip(f"DeepSpeed's CPU communication op ({builder.NAME}) cannot be built: {error}")
    from danling.runner import deepspeed_runner

    return deepspeed_runner


def launch(distributed_runner, directory: Path, scenario: str, stage: int, nproc: int) -> list[dict]:
    directory.mkdir(parents=True, exist_ok=True)
    distributed_runner(SCRIPT, scenario, str(directory), str(directory / "experiments"), str(stage), nproc=nproc)
    return [torch.load(directory / f"{scenario}-rank{rank}.pt", weights_only=False) for rank in range(nproc)]


@pytest.fixture(scope="module", params=[1, 2], ids=["zero1", "zero2"])
def trained(request, deepspeed_runner, distributed_runner, tmp_path_factory):
    """One two-process launch per ZeRO stage: DDP, DeepSpeed, and a DeepSpeed run crashed and resumed."""
    return launch(distributed_runner, tmp_path_factory.mktemp("train"), "train", request.param, nproc=2)


@pytest.fixture(scope="module")
def single(deepspeed_runner, distributed_runner, tmp_path_factory):
    """One launch on one process: a killed save, resume past an incomplete checkpoint, pretrained weights."""
    return launch(distributed_runner, tmp_path_factory.mktemp("single"), "single", 1, nproc=1)[0]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[key] - b[key]).abs().max().item() for key in a)


def test_importing_danling_does_not_import_deepspeed():
    code = "import sys, danling, danling.runner.runner; print(sorted(m for m in sys.modules if 'deepspeed' in m))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert completed.stdout.strip() == "[]"


def test_zero_training_matches_ddp_on_the_same_data(trained):
    for report in trained:
        ddp, zero = report["torch"], report["deepspeed"]
        assert (
            report["engine"]["type"] == "DeepSpeedEngine" and report["engine"]["optimizer"] == "DeepSpeedZeroOptimizer"
        )
        assert report["engine"]["backend"] == "gloo" and report["engine"]["device"] == "cpu"
        assert report["engine"]["config"] == {
            "zero_optimization": {"stage": report["engine"]["zero_stage"]},
            "train_micro_batch_size_per_gpu": 8,
            "gradient_accumulation_steps": 2,
            "gradient_clipping": 0.5,
            "zero_allow_untested_optimizer": True,
        }
        # 80 samples, 5 micro-batches per process and epoch, windows of 2, 2 and 1: 3 optimizer steps an epoch,
        # counted alike by the runner and by the engine.
        assert zero["counters"] == ddp["counters"] == (15, 9, 2)
        assert report["engine"]["global_steps"] == 9
        # The same samples, dropout masks and mean gradients. ZeRO sums the squared norm of its flat partitions
        # where torch sums per-tensor norms, so the clip factor can differ in its last bit (1e-8 seen): 1e-6 leaves
        # room for 9 such steps, and a missed or doubled step or the module left in eval mode is far larger. A
        # gradient scaled wrong uniformly (the loss divided twice) is not: clipping to 0.5 rescales it away, which
        # is why `test_zero_with_accumulation_and_no_clipping_matches_ddp_to_1e_6` compares without clipping.
        assert max_difference(zero["model"], ddp["model"]) < 1e-6
        assert max_difference(zero["ema"], ddp["ema"]) < 1e-6
        assert zero["lr"] == pytest.approx(ddp["lr"])
        assert zero["val"]["loss"] == pytest.approx(ddp["val"]["loss"], abs=1e-6)
        assert zero["infer"].shape == (25, 3)
        assert torch.allclose(zero["infer"], ddp["infer"], atol=1e-5)
        assert zero["results"].keys() == ddp["results"].keys() == {0, 1, 2}
        for epoch, result in ddp["results"].items():
            assert zero["results"][epoch]["val"]["loss"] == pytest.approx(result["val"]["loss"], abs=1e-5)


def test_zero_with_accumulation_and_no_clipping_matches_ddp_to_1e_6(deepspeed_runner, distributed_runner, tmp_path):
    # Clipping at 0.5 rescales every step's gradient to the same norm, which hides a loss divided once too often
    # (by the window, then by DeepSpeed again: 2e-2 off here, and within 1e-6 with clipping). ZeRO-2, whose
    # partitioned reduction is the furthest from DDP's; the loss scale is the same code for stage 1.
    for report in launch(distributed_runner, tmp_path, "unclipped", 2, nproc=2):
        ddp, zero = report["torch"], report["deepspeed"]
        assert report["gradient_clipping"] == 0.0
        assert zero["counters"] == ddp["counters"] == (10, 6, 1)  # windows of 2, 2 and 1 micro-batches
        assert max_difference(zero["model"], ddp["model"]) < 1e-6
        assert max_difference(zero["ema"], ddp["ema"]) < 1e-6
        assert zero["results"][1]["train"]["loss"] == pytest.approx(ddp["results"][1]["train"]["loss"], abs=1e-6)


def test_zero_resumes_bitwise_at_an_epoch_boundary(trained):
    for report in trained:
        # The crash came in the third epoch; latest.ds named the checkpoint of the second epoch's end.
        assert report["resumed_from"].endswith("latest.ds")
        assert report["pointer"].startswith("deepspeed/latest-s6-")
        assert report["epoch_begin"] == 2
        # Weights, EMA, results, counters and learning rate of an uninterrupted run, bit for bit.
        straight = report["deepspeed"]
        assert_bitwise_equal(report["resumed"], {key: straight[key] for key in report["resumed"]})
    # The resumed run's save replaced the crashed run's checkpoint, and the replaced directory is gone.
    assert trained[0]["directories"] == ["latest-s9-1"]


def test_zero_resumes_bitwise_inside_an_epoch(trained):
    for report in trained:
        # Saved at step 7 (micro-batch 12), two batches into the third epoch; the crash came one micro-batch later.
        position = report["mid_epoch_position"]
        assert (position["split"], position["batches"], position["samples"]) == ("train", 2, 32)
        straight = report["deepspeed"]
        assert_bitwise_equal(report["resumed_mid_epoch"], {key: straight[key] for key in report["resumed_mid_epoch"]})


def test_every_process_starts_from_rank_zeros_ema_of_either_kind(deepspeed_runner, distributed_runner, tmp_path):
    # Shared with the other platforms (tests/runner/test_distributed.py): an AveragedModel and an EMA of the
    # `update(model)` kind, built from weights (and batch-norm buffers) that differ by process.
    script = SCRIPT.parent / "ema_broadcast.py"
    distributed_runner(script, str(tmp_path), str(tmp_path / "experiments"), "deepspeed")
    rank0, rank1 = (torch.load(tmp_path / f"ema-rank{rank}.pt") for rank in (0, 1))
    for kind in ("averaged", "update"):
        built, constructed = rank0["deepspeed", kind]["built"], rank0["deepspeed", kind]["constructed"]
        assert not torch.equal(built["1.running_mean"], rank1["deepspeed", kind]["built"]["1.running_mean"])
        assert_bitwise_equal(rank1["deepspeed", kind]["constructed"], constructed, kind)
        assert_bitwise_equal(constructed, built, kind)


def test_a_save_the_main_process_fails_to_finish_raises_on_every_process(trained):
    for rank, report in enumerate(trained):
        error = report["save_failure"]
        if rank == 0:  # its own error, naming the file
            assert error.startswith("OSError: no space left on device") and error.endswith("runner.pth"), error
        else:  # told by the main process, rather than left waiting in the next collective
            assert error.startswith("RuntimeError: checkpoint latest-s6-1 is incomplete: the main process failed")
            assert "OSError: no space left on device" in error
        assert report["pointer_after_failure"] == "deepspeed/latest-s3-1"


def test_a_killed_save_leaves_latest_on_the_previous_complete_checkpoint(single):
    assert single["crash"].startswith("OSError: no space left on device") and single["crash"].endswith("runner.pth")
    # The engine had written its files for epoch 1, but without the run state nothing points at them.
    assert single["partial"]["latest-s12-1"] == [
        "mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
    ]
    assert "runner.pth" in single["partial"]["latest-s6-1"]
    assert single["pointers"] == dict.fromkeys(("best.ds", "epoch-0.ds", "latest.ds"), "deepspeed/latest-s6-1")


def test_resume_skips_an_incomplete_checkpoint_naming_it_and_continues_exactly(single):
    assert (
        "skipping" in single["resume_stderr"] and "latest-s12-1 is incomplete: no runner.pth" in single["resume_stderr"]
    )
    assert single["resumed_from"].endswith("epoch-0.ds")
    assert_bitwise_equal(single["resumed"], single["straight"])
    # The new save took a fresh directory; the incomplete one, no longer named by any pointer, is deleted.
    assert single["tags_after"] == ["latest-s12-2", "latest-s6-1"]


def test_from_checkpoint_and_load_pretrained_take_deepspeed_checkpoints(single):
    final = single["straight"]["model"]
    assert single["from_checkpoint"]["deepspeed"] and single["from_checkpoint"]["same_dir"]
    assert single["from_checkpoint"]["epoch_begin"] == 2
    assert_bitwise_equal(single["from_checkpoint"]["model"], final)
    assert_bitwise_equal(single["pretrained"], final)  # from the .ds pointer, into a fresh DeepSpeed runner
    assert_bitwise_equal(single["plain"], final)  # its full weights as a plain file, into a DDP runner
    # An epoch trained from weights loaded after the engine exists matches DDP's: ZeRO's master copy followed.
    after = single["after_pretrained_epoch"]
    assert max_difference(after["deepspeed"], after["torch"]) < 1e-6
    assert max_difference(after["deepspeed"], final) > 1e-3


def test_bf16_trains_with_a_bf16_module_and_an_fp32_ema(single):
    half = single["bf16"]
    assert half["enabled"]
    assert {value.dtype for value in half["model"].values()} == {torch.bfloat16}
    assert {value.dtype for value in half["ema"].values() if value.is_floating_point()} == {torch.float32}
    # The EMA followed the bf16 weights (decay 0.9 over 12 steps), and training learned.
    assert max_difference(half["ema"], half["initial_ema"]) > 1e-2
    assert max_difference(half["ema"], {key: value.float() for key, value in half["model"].items()}) < 0.1
    assert half["results"][1]["train"]["loss"] < half["results"][0]["train"]["loss"]
    # full_weights gives ZeRO's fp32 master copy, of which the module holds the bf16 rounding.
    assert {value.dtype for value in half["full"].values()} == {torch.float32}
    assert all(torch.equal(half["full"][key].bfloat16(), value) for key, value in half["model"].items())


def test_bf16_runs_the_engine_in_its_own_precision_without_autocast(single):
    # DeepSpeed holds the module in bf16 and turns an outer CUDA autocast off in engine.forward; fp32 inputs then
    # met bf16 weights on GPUs. The engine gets no autocast and bf16 inputs, on the CPU as on CUDA.
    assert single["bf16"]["forward"] == {"autocast": False, "dtype": torch.bfloat16}


def test_bf16_ema_averages_the_fp32_master_weights_in_place(single):
    half = single["bf16"]
    # An independent EMA (decay 0.9, the first update a copy) of the fp32 master weights after each of the 12
    # optimizer steps, in float64; the bf16 module holds only their rounding, 1e-3 away.
    masters = half["masters"]
    assert len(masters) == 12
    expected = {name: value.double() for name, value in masters[0].items()}
    for weights in masters[1:]:
        expected = {name: 0.9 * expected[name] + 0.1 * value.double() for name, value in weights.items()}
    for name, value in expected.items():
        assert torch.allclose(half["ema"][name].double(), value, rtol=0, atol=1e-6), name


def test_bf16_ema_update_allocates_no_copy_of_the_model(single):
    # The update reads the master weights where ZeRO keeps them (views) and averages tensor by tensor in place:
    # 8 bytes here (the step count), where casting the module to fp32 took all of its 780 bytes (and 28 GB on a
    # 7B model).
    half = single["bf16"]
    assert half["update_peak"] < 0.1 * sum(half["parameter_bytes"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_zero2_bf16_trains_on_one_gpu_and_the_loss_decreases(distributed_runner, tmp_path, monkeypatch):
    pytest.importorskip("deepspeed", reason="deepspeed is not installed: pip install 'danling[deepspeed]'")
    # The engine's forward under the runner's CUDA autocast met bf16 weights with fp32 inputs at the first step.
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    report = launch(distributed_runner, tmp_path, "bf16", 2, nproc=1)[0]
    assert report["device"].startswith("cuda") and report["dtypes"] == ["torch.bfloat16"]
    assert {(forward["autocast"], forward["dtype"]) for forward in report["forwards"]} == {(False, torch.bfloat16)}
    losses = [report["results"][epoch]["train"]["loss"] for epoch in range(3)]
    assert losses[2] < losses[0], losses
    # The EMA (decay 0.9) follows ZeRO's fp32 master weights, as on the CPU.
    expected = {name: value.double() for name, value in report["masters"][0].items()}
    for weights in report["masters"][1:]:
        expected = {name: 0.9 * expected[name] + 0.1 * value.double() for name, value in weights.items()}
    for name, value in expected.items():
        assert torch.allclose(report["ema"][name].double().cpu(), value.cpu(), rtol=0, atol=1e-5), name


def test_pending_op_build_names_the_communication_op_until_it_is_compiled(deepspeed_runner, tmp_path):
    # In a fresh process: this one has the op loaded already (the fixture built it), which alone means no build.
    code = "from danling.runner.deepspeed_runner import pending_op_build; print(pending_op_build())"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    reported = {}
    for case, extensions in (("built", os.environ.get("TORCH_EXTENSIONS_DIR")), ("fresh", str(tmp_path))):
        case_env = {**env, "TORCH_EXTENSIONS_DIR": extensions} if extensions else env
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=case_env, check=False)
        assert done.returncode == 0, done.stderr
        reported[case] = done.stdout.strip().splitlines()[-1]
    assert reported == {"built": "None", "fresh": "deepspeed_shm_comm"}


@pytest.mark.usefixtures("own_process_group")
@pytest.mark.parametrize("pending", [True, False], ids=["op-to-build", "op-built"])
def test_a_start_that_compiles_the_op_says_so_in_one_line(deepspeed_runner, tmp_path, monkeypatch, capsys, pending):
    if pending:  # compiling for real takes a minute: this start is told it will, and must say so
        monkeypatch.setattr(deepspeed_runner, "pending_op_build", lambda: "deepspeed_shm_comm")
    ResumableRunner(make_config(tmp_path, platform="deepspeed", epoch_end=1, samples=16, val_samples=8))
    notes = [line for line in capsys.readouterr().out.splitlines() if "compiling" in line]
    expected = ["DeepSpeed: compiling its deepspeed_shm_comm op, once on this machine (a minute or more)..."]
    assert notes == (expected if pending else [])


def test_an_incomplete_or_missing_checkpoint_is_named(deepspeed_runner, tmp_path):
    directory = tmp_path / "checkpoints" / "deepspeed" / "latest-s3-1"
    directory.mkdir(parents=True)
    (directory / "mp_rank_00_model_states.pt").write_bytes(b"")
    pointer = tmp_path / "checkpoints" / "latest.ds"
    pointer.write_text('{"path": "deepspeed/latest-s3-1"}')
    with pytest.raises(CorruptFileError, match=r"latest-s3-1 is incomplete: no runner\.pth"):
        deepspeed_runner.DeepSpeedRunner.read_checkpoint_file(str(pointer))
    # Complete, but a file is shorter than when it was written (sizes are recorded in runner.pth).
    dl.save(
        {"runner": {}, "files": {"mp_rank_00_model_states.pt": 10, "zero_pp_rank_0.pt": 4}}, directory / "runner.pth"
    )
    with pytest.raises(CorruptFileError, match=r"mp_rank_00_model_states.pt has 0 bytes, not 10; zero_pp_rank_0.pt is"):
        deepspeed_runner.DeepSpeedRunner.read_checkpoint_file(str(pointer))
    with pytest.raises(FileNotFoundError, match="nowhere.ds"):
        deepspeed_runner.DeepSpeedRunner.read_checkpoint_file(str(tmp_path / "nowhere.ds"))


# The config mapping, on one process: a pure function of our config.


def build(deepspeed_runner, micro_batch_size=8, world_size=2, optimizer=None, scheduler=None, **config):
    return deepspeed_runner.deepspeed_config(
        dl.Config(log=False, **config), micro_batch_size, world_size, optimizer, scheduler
    )


def test_our_knobs_become_deepspeed_settings_and_its_own_sections_pass_through(deepspeed_runner):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    given = {
        "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
        "bf16": {"immediate_grad_update": True},
    }
    built = build(
        deepspeed_runner, accum_steps=4, precision="bf16", max_grad_norm=1.0, optimizer=optimizer, deepspeed=given
    )
    assert built == {
        "train_micro_batch_size_per_gpu": 8,
        "gradient_accumulation_steps": 4,
        "gradient_clipping": 1.0,
        "bf16": {"immediate_grad_update": True, "enabled": True},
        "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
        # SGD updates element by element, so ZeRO's flat partitions are safe for it.
        "zero_allow_untested_optimizer": True,
    }
    # fp32 turns a given fp16 section off rather than leaving DeepSpeed's default to decide; no clipping is 0.
    built = build(deepspeed_runner, deepspeed={"fp16": {"loss_scale_window": 100}})
    assert built["fp16"] == {"loss_scale_window": 100, "enabled": False} and built["gradient_clipping"] == 0.0
    assert "bf16" not in built and "zero_allow_untested_optimizer" not in built
    # "auto" (as in configs written for other trainers) and agreeing values take ours.
    agreeing = {"gradient_accumulation_steps": 2, "train_micro_batch_size_per_gpu": "auto", "train_batch_size": 32}
    built = build(deepspeed_runner, accum_steps=2, deepspeed=agreeing)
    assert built["gradient_accumulation_steps"] == 2 and built["train_micro_batch_size_per_gpu"] == 8
    assert "train_batch_size" not in built
    # Without training data, DeepSpeed's own micro-batch size is used.
    assert (
        build(deepspeed_runner, None, deepspeed={"train_micro_batch_size_per_gpu": 4})["train_micro_batch_size_per_gpu"]
        == 4
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"accum_steps": 2, "deepspeed": {"gradient_accumulation_steps": 4}},
            "config.accum_steps=2 and config.deepspeed.gradient_accumulation_steps=4 disagree",
        ),
        (
            {"deepspeed": {"train_micro_batch_size_per_gpu": 16}},
            "config.dataloader.batch_size=8 and config.deepspeed.train_micro_batch_size_per_gpu=16 disagree",
        ),
        (
            {"deepspeed": {"gradient_clipping": 1.0}},
            "config.max_grad_norm=None and config.deepspeed.gradient_clipping=1.0 disagree",
        ),
        (
            {"precision": "fp16", "deepspeed": {"fp16": {"enabled": False}}},
            "config.precision='fp16' and config.deepspeed.fp16.enabled=False disagree",
        ),
        (
            {"deepspeed": {"bf16": {"enabled": True}}},
            "config.precision=None and config.deepspeed.bf16.enabled=True disagree",
        ),
        (
            {"accum_steps": 2, "deepspeed": {"train_batch_size": 64}},
            r"train_batch_size=64 is not micro-batch 8 x accum_steps 2 x 2 process\(es\) = 32",
        ),
        ({"max_grad_value": 0.1}, r"config.max_grad_value=0.1 is not supported on DeepSpeed"),
        ({"deepspeed": {"zero_optimization": {"stage": 3}}}, "zero_optimization.stage=3 is not supported"),
    ],
    ids=["accum", "micro-batch", "clipping", "fp16", "bf16", "batch", "grad-value", "zero3"],
)
def test_a_conflict_with_deepspeed_settings_is_an_error_naming_both(deepspeed_runner, config, message):
    with pytest.raises(ValueError, match=message):
        build(deepspeed_runner, **config)


def test_optimizer_or_scheduler_from_both_sides_is_an_error(deepspeed_runner):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(ValueError, match=r"self.optimizer is a AdamW and config.deepspeed.optimizer .* 'Adam'"):
        build(deepspeed_runner, optimizer=optimizer, deepspeed={"optimizer": {"type": "Adam"}})
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    with pytest.raises(ValueError, match=r"self.scheduler is a StepLR and config.deepspeed.scheduler .* 'WarmupLR'"):
        build(deepspeed_runner, scheduler=scheduler, deepspeed={"scheduler": {"type": "WarmupLR"}})
    with pytest.raises(ValueError, match="needs a micro-batch size: set config.dataloader.batch_size"):
        build(deepspeed_runner, None)
