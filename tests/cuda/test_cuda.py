"""What only a GPU can show: mixed precision, the fp16 grad scaler, CUDA random state, device placement, NCCL.

Every test here is marked `cuda` and skipped, with the reason, on a machine without CUDA. Where one is, run them
with `python -m pytest -m cuda tests/cuda` (CONTRIBUTING.md). The engines' paths that need a process group (FSDP on
NCCL, DCP onto the GPU, DeepSpeed, Accelerate, a group made before the runner) run in a subprocess under `torchrun`
(`scripts/cuda_scenarios.py`), so each gets a fresh CUDA context and process group.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from toys import (
    ClassificationRunner,
    Interrupted,
    ResumableRunner,
    assert_bitwise_equal,
    final_state,
    make_config,
)

import danling as dl

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run with `pytest -m cuda` on one)"),
]

SCENARIOS = Path(__file__).parent / "scripts" / "cuda_scenarios.py"
SETTINGS = {"epoch_end": 3, "samples": 60, "val_samples": 25}


def cuda_config(root, **kwargs) -> dl.Config:
    return make_config(root, device="cuda:0", **kwargs)


def test_config_device_is_honoured_and_becomes_the_current_device(tmp_path):
    last = torch.cuda.device_count() - 1
    runner = ClassificationRunner(make_config(tmp_path, device=f"cuda:{last}", epoch_end=1))
    assert runner.device == torch.device("cuda", last)
    assert torch.cuda.current_device() == last
    runner.train()
    assert all(parameter.device == runner.device for parameter in runner.model.parameters())


def test_a_cuda_device_without_index_is_this_process_gpu(tmp_path):
    runner = ClassificationRunner(make_config(tmp_path, device="cuda", epoch_end=1))
    assert runner.device.index == torch.cuda.current_device()


def test_bf16_autocast_trains_on_the_gpu(tmp_path):
    seen = []

    class Recording(ClassificationRunner):
        def forward(self, model, input):
            pred = super().forward(model, input)
            seen.append(pred.dtype)
            return pred

    runner = Recording(cuda_config(tmp_path, precision="bf16", epoch_end=4))
    results = runner.train()
    assert set(seen) == {torch.bfloat16}
    assert results[3]["train"]["loss"] < results[0]["train"]["loss"]
    assert all(parameter.dtype == torch.float32 for parameter in runner.model.parameters())


def test_fp16_skips_a_step_with_an_inf_gradient_and_resumes_the_scaler_bitwise(tmp_path):
    runner = ClassificationRunner(cuda_config(tmp_path, precision="fp16", epoch_end=1))
    assert isinstance(runner.scaler, torch.amp.GradScaler)
    runner.train()
    before = {name: value.clone() for name, value in runner.model.state_dict().items()}
    scale, steps = runner.scaler.get_scale(), runner.config.steps
    bad = torch.full((8, 8), float("inf"))
    runner.train_step((bad, torch.zeros(8, dtype=torch.long)))
    # The step ran (the counter moved) but the scaler skipped the update and halved its scale.
    assert runner.config.steps == steps + 1
    assert_bitwise_equal(dict(runner.model.state_dict()), before)
    assert runner.scaler.get_scale() == scale / 2
    runner.save_checkpoint()
    resumed = ClassificationRunner.from_checkpoint(os.path.join(runner.checkpoint_dir, "latest.pth"))
    assert resumed.scaler is not None
    assert_bitwise_equal(resumed.scaler.state_dict(), runner.scaler.state_dict())


def test_a_resume_on_the_gpu_restores_its_random_state_bitwise(tmp_path):
    # Dropout draws from the GPU's generator: a resume that restored another device's state would differ.
    straight = ResumableRunner(cuda_config(tmp_path / "straight", **SETTINGS, checkpoint_interval=1))
    straight.train()
    interrupted = ResumableRunner(
        cuda_config(tmp_path / "interrupted", **SETTINGS, checkpoint_interval=1, fail_at_iter=12)
    )
    with pytest.raises(Interrupted):
        interrupted.train()
    latest = os.path.join(interrupted.checkpoint_dir, "latest.pth")
    saved = dl.load(latest)["rng"][0]["cuda"]
    assert isinstance(saved, torch.Tensor), "the state of this process's own GPU, not a list by device index"
    resumed = ResumableRunner.from_checkpoint(latest)
    resumed.config.fail_at_iter = None
    resumed.train()
    assert_bitwise_equal(final_state(resumed), final_state(straight))


def test_the_ema_lives_and_updates_on_the_gpu(tmp_path):
    runner = ResumableRunner(cuda_config(tmp_path, **SETTINGS))
    runner.train()
    ema = runner.ema.module
    assert all(parameter.device.type == "cuda" for parameter in ema.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(ema.parameters(), runner.model.parameters()))


def test_a_pinned_memory_loader_feeds_the_gpu(tmp_path):
    pinned = []

    class Recording(ClassificationRunner):
        def unpack_batch(self, batch):
            pinned.append(batch[0].is_pinned())
            return super().unpack_batch(batch)

    # Without prefetching, the loader's own batches reach the step (prefetched ones are already on the GPU).
    config = cuda_config(tmp_path, epoch_end=2, prefetch=False)
    config.dataloader.pin_memory = True
    results = Recording(config).train()
    assert pinned and all(pinned)
    assert results[1]["train"]["loss"] < results[0]["train"]["loss"]


def scenario(distributed_runner, tmp_path, name: str, nproc: int = 1) -> dict:
    distributed_runner(SCENARIOS, name, str(tmp_path), nproc=nproc)
    return json.loads((tmp_path / f"{name}.json").read_text())


def test_an_existing_nccl_group_still_gets_this_process_gpu(tmp_path, distributed_runner):
    report = scenario(distributed_runner, tmp_path, "existing-group", nproc=min(2, torch.cuda.device_count()))
    for rank, entry in enumerate(report["ranks"]):
        assert entry["device"] == f"cuda:{rank}"
        assert entry["current"] == rank


def test_the_runner_makes_its_nccl_group_with_the_timeout_and_checks_the_directory_over_it(
    tmp_path, distributed_runner
):
    report = scenario(distributed_runner, tmp_path, "nccl-group", nproc=min(2, torch.cuda.device_count()))
    assert report["backend"] == "nccl" and report["device"] == "cuda:0"
    assert report["timeout_s"] == 120
    if report["world_size"] > 1:
        assert all("do not name the same checkpoint directory" in message for message in report["differing"])


def test_fsdp_on_one_gpu_trains_saves_and_resumes_bitwise(tmp_path, distributed_runner):
    report = scenario(distributed_runner, tmp_path, "fsdp")
    assert report["device"] == "cuda:0" and report["backend"] == "nccl"
    assert report["resumed_equal"], report
    assert report["loss_fell"]


def test_a_dcp_checkpoint_saved_on_the_cpu_loads_onto_the_gpu(tmp_path, distributed_runner):
    report = scenario(distributed_runner, tmp_path, "dcp-onto-gpu")
    assert report["devices"] == ["cuda"]
    assert report["equal"]


def test_fsdp_with_config_device_cpu_stays_on_the_cpu(tmp_path, distributed_runner):
    report = scenario(distributed_runner, tmp_path, "fsdp-cpu")
    assert report["backend"] == "gloo"
    assert report["devices"] == ["cpu"]


def test_deepspeed_zero2_trains_in_bf16_on_one_gpu(tmp_path, distributed_runner):
    pytest.importorskip("deepspeed")
    report = scenario(distributed_runner, tmp_path, "deepspeed-bf16")
    assert report["loss_fell"], report


def test_accelerate_trains_in_bf16_on_one_gpu(tmp_path, distributed_runner):
    pytest.importorskip("accelerate")
    report = scenario(distributed_runner, tmp_path, "accelerate-bf16")
    assert report["device"].startswith("cuda")
    assert report["loss_fell"], report


def test_training_steps_never_wait_for_the_gpu_and_the_loss_is_averaged_on_it(tmp_path):
    # On the CPU the runner reads its loss at once (nothing to wait for); on a GPU it must stay a tensor until read.
    runner = ClassificationRunner(cuda_config(tmp_path, epoch_end=1))
    runner.mode = dl.runner.RunnerMode.train
    batches = [runner.unpack_batch(batch) for batch in runner.dataloaders.train][:5]
    torch.cuda.synchronize()
    losses = []
    torch.cuda.set_sync_debug_mode("error")  # any call that makes the host wait for the device raises
    try:
        for input, target in batches:
            losses.append(runner.train_step((input, target)).detach())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    meter = dict.get(runner.meters, "loss")
    assert isinstance(meter._sum, torch.Tensor) and meter._sum.device == runner.device
    expected = sum(loss.double().item() * len(target) for loss, (_, target) in zip(losses, batches))
    assert meter.sum == pytest.approx(expected, rel=1e-12)
