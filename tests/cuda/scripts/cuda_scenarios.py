"""GPU scenarios under torchrun (one or two processes, NCCL unless the scenario says otherwise); each writes what the
test checks to OUTPUT/{scenario}.json from the main process.

Usage: cuda_scenarios.py SCENARIO OUTPUT

- `existing-group`: the script makes the NCCL group itself (without choosing a GPU), then builds a runner: each
  process's runner must use, and make current, its own GPU.
- `nccl-group`: the runner makes the NCCL group itself (`danling.utils.distributed.init_process_group`, with
  `config.timeout`), and `train` checks the shared checkpoint directory over NCCL; with two GPUs, processes naming
  different directories are told so on every process.
- `fsdp`: FSDP on one GPU: a straight run, and one that crashes mid-epoch and resumes from `latest.dcp`.
- `dcp-onto-gpu`: FSDP on the CPU (`device: cpu`, gloo) saves a DCP checkpoint; a runner on the GPU loads it.
- `fsdp-cpu`: FSDP with `device: cpu` on a GPU machine stays on the CPU (gloo, CPU shards).
- `deepspeed-bf16`: DeepSpeed ZeRO 2 with `precision: bf16` trains.
- `accelerate-bf16`: Accelerate with `precision: bf16` trains.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import contextlib

import torch
from torch import distributed as dist
from toys import ClassificationRunner, Interrupted, ResumableRunner, classification_data, make_config

import danling as dl
from danling.utils import distributed as du

SETTINGS = {"epoch_end": 3, "samples": 60, "val_samples": 25}


def write(output: str, name: str, report: dict) -> None:
    if du.get_rank() == 0:
        with open(os.path.join(output, f"{name}.json"), "w") as file:
            json.dump(report, file)


def full_model_state(runner) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    model = runner.unwrap(runner.model)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {key: value.detach().clone() for key, value in get_model_state_dict(model, options=options).items()}


def loss_fell(results) -> bool:
    indices = sorted(results)
    return results[indices[-1]]["train"]["loss"] < results[indices[0]]["train"]["loss"]


def existing_group(output: str) -> None:
    dist.init_process_group("nccl")
    runner = ClassificationRunner(make_config(output, epoch_end=1))
    runner.train()
    entry = {"device": str(runner.device), "current": torch.cuda.current_device()}
    report = {"ranks": du.all_gather_object(entry)}
    runner.release_process_group()
    write(output, "existing-group", report)
    dist.barrier()
    dist.destroy_process_group()


def nccl_group(output: str) -> None:
    runner = ClassificationRunner(make_config(output, epoch_end=1, timeout=120))
    runner.train()  # the shared-directory check runs first: a broadcast and an all-gather over NCCL
    differing = None
    if du.get_world_size() > 1:
        try:
            du.check_shared_directory(os.path.join(output, f"own{du.get_rank()}"), "checkpoint directory")
        except RuntimeError as error:
            differing = str(error)
    report = {
        "backend": dist.get_backend(),
        "device": str(runner.device),
        "timeout_s": du._group_timeout.total_seconds() if du._group_timeout is not None else None,
        "differing": du.all_gather_object(differing),
        "world_size": du.get_world_size(),
    }
    write(output, "nccl-group", report)


def fsdp(output: str) -> None:
    straight = ResumableRunner(make_config(os.path.join(output, "straight"), **SETTINGS, platform="fsdp"))
    straight.train()
    expected = full_model_state(straight)
    interrupted = ResumableRunner(
        make_config(
            os.path.join(output, "interrupted"), **SETTINGS, platform="fsdp", checkpoint_interval=1, fail_at_iter=12
        )
    )
    with contextlib.suppress(Interrupted):
        interrupted.train()
    resumed = ResumableRunner(
        make_config(
            os.path.join(output, "interrupted"), **SETTINGS, platform="fsdp", checkpoint_interval=1, resume=True
        )
    )
    resumed.train()
    actual = full_model_state(resumed)
    write(
        output,
        "fsdp",
        {
            "device": str(straight.device),
            "backend": dist.get_backend(),
            "resumed_equal": all(torch.equal(expected[key], actual[key]) for key in expected),
            "loss_fell": loss_fell(straight.results),
        },
    )


def dcp_onto_gpu(output: str) -> None:
    cpu = ResumableRunner(make_config(os.path.join(output, "cpu"), **SETTINGS, platform="fsdp", device="cpu"))
    cpu.train()
    expected = full_model_state(cpu)
    latest = os.path.join(cpu.checkpoint_dir, "latest.dcp")
    gpu = ResumableRunner(make_config(os.path.join(output, "gpu"), **SETTINGS, device="cuda:0"))
    gpu.load_pretrained(latest)
    state = gpu.unwrap(gpu.model).state_dict()
    write(
        output,
        "dcp-onto-gpu",
        {
            "devices": sorted({value.device.type for value in state.values()}),
            "equal": all(torch.equal(expected[key], state[key].cpu()) for key in expected),
        },
    )


def fsdp_cpu(output: str) -> None:
    runner = ResumableRunner(make_config(output, **SETTINGS, platform="fsdp", device="cpu"))
    runner.train()
    devices = {
        (parameter.to_local() if hasattr(parameter, "to_local") else parameter).device.type
        for parameter in runner.model.parameters()
    }
    write(output, "fsdp-cpu", {"backend": dist.get_backend(), "devices": sorted(devices)})


def deepspeed_bf16(output: str) -> None:
    config = make_config(output, epoch_end=4, platform="deepspeed", precision="bf16")
    config.deepspeed = {"zero_optimization": {"stage": 2}}
    runner = _classification(config)
    runner.train()
    write(output, "deepspeed-bf16", {"loss_fell": loss_fell(runner.results)})


def accelerate_bf16(output: str) -> None:
    runner = _classification(make_config(output, epoch_end=4, platform="accelerate", precision="bf16"))
    runner.train()
    write(output, "accelerate-bf16", {"device": str(runner.device), "loss_fell": loss_fell(runner.results)})


def _classification(config: dl.Config) -> dl.Runner:
    class Classification(dl.Runner):
        def __init__(self, config):
            super().__init__(config)
            self.model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
            self.criterion = torch.nn.CrossEntropyLoss()
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
            self.datasets.train = classification_data(96, seed=0)
            self.datasets.val = classification_data(25, seed=1)

    return Classification(config)


SCENARIOS = {
    "existing-group": existing_group,
    "nccl-group": nccl_group,
    "fsdp": fsdp,
    "dcp-onto-gpu": dcp_onto_gpu,
    "fsdp-cpu": fsdp_cpu,
    "deepspeed-bf16": deepspeed_bf16,
    "accelerate-bf16": accelerate_bf16,
}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]](sys.argv[2])
