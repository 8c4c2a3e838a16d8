"""Named defaults shared by the config and the runner."""

from __future__ import annotations

DEFAULT_EXPERIMENT_NAME = "DanLing"
DEFAULT_RUN_NAME = "Run"
# Used as the experiment id when the working directory is not inside a git repository.
DEFAULT_EXPERIMENT_ID = "xxxxxxxxxxxxxxxx"
DEFAULT_PROJECT_ROOT = "experiments"
DEFAULT_CHECKPOINT_DIR_NAME = "checkpoints"
DEFAULT_SCORE_NAME = "loss"
# When `log_interval` is unset: step lines per pass over the longest split (its first and last batch included), and
# about how many a whole run logs between the first and last batches of its passes.
DEFAULT_LOG_LINES_PER_PASS = 5
DEFAULT_LOG_LINES_PER_RUN = 500

# Fields that change as a run progresses, or that only say where it is stored or what it resumes from. A resume
# never compares them with the checkpoint's.
PROGRESS_AND_STORAGE_NAMES = frozenset(
    {
        "iters",
        "steps",
        "epochs",
        "iter_begin",
        "step_begin",
        "epoch_begin",
        "run_id",
        "seed_drawn",
        "timestamp",
        "checkpoint",
        "resume",
        "pretrained",
        "dir",
        "log_path",
        "checkpoint_dir",
        "project_root",
        "allow_config_change",
        "config_changes",
    }
)

# Fields that say how a run is carried out (processes, process group, devices, how the model is sharded over them),
# how it reports (logging, progress, TensorBoard) and how it keeps its checkpoints, not what it computes. A runner
# writes some of them when it starts (`backend` once it joins a process group), and a relaunch may change any of
# them: the same run on one process and under `torchrun --nproc_per_node 2`, or with other logging, is the same
# run, and `resume=True` must find its checkpoint. Each is also in `RESUME_STEERING_KEYS`: a resume may change it.
EXECUTION_NAMES = frozenset(
    {
        "backend",
        "init_method",
        "timeout",
        "world_size",
        "rank",
        "local_rank",
        "device",
        "fsdp_units",
        "fsdp_min_unit_params",
        "reshard_after_forward",
        "log",
        "log_interval",
        "tensorboard",
        "trackers",
        "progress",
        "checkpoint_dir_name",
        "save_checkpoints",
        "save_interval",
        "max_epoch_checkpoints",
        "checkpoint_interval",
        "checkpoint_spare",
        "async_checkpoint",
        "compile",
        "profile",
        "throughput",
        "flops_per_sample",
        "peak_flops",
        "prefetch",
        "fetch_batches",
    }
)

# The run's identity (`run_uuid`, `run_id`, the config's hash) derives from every other field: those that change the
# experiment (model, optimizer, data, seed, precision, accumulation, platform, how long it trains, ...).
IGNORED_NAMES_IN_HASH = PROGRESS_AND_STORAGE_NAMES | EXECUTION_NAMES

# Keys of a result that are bookkeeping, not splits: never chosen as the score split.
IGNORED_SET_NAMES = ("index", "epoch", "epochs", "step", "steps", "iter", "iters", "time", "timestamp")

# Score names for which a lower value is better; any score whose name ends with one of them is minimised.
LOWER_IS_BETTER_NAMES = (
    "loss",
    "error",
    "err",
    "mae",
    "mse",
    "rmse",
    "msle",
    "rmsle",
    "mape",
    "perplexity",
    "ppl",
    "nll",
    "wer",
    "cer",
    "ter",
    "fid",
    "distance",
    "regret",
)

# Keys that only steer the rest of a run (how long, how often to log, evaluate and save, where files go, on how many
# processes and which devices): a resume may change them, and reports the change in one line at start. A change to
# any other key (model, optimizer, data, seed, precision, accumulation, ...) stops the resume before training unless
# `allow_config_change` is set. Nested keys are spelled with dots.
RESUME_STEERING_KEYS = frozenset(
    {
        "epoch_end",
        "step_end",
        "iter_end",
        "log_interval",
        "save_interval",
        "checkpoint_interval",
        "eval_interval",
        "max_epoch_checkpoints",
        "checkpoint_spare",
        "async_checkpoint",
        "save_checkpoints",
        "patience",
        "log",
        "tensorboard",
        "trackers",
        "progress",
        "experiment_name",
        "run_name",
        "name",
        "project_root",
        "checkpoint_dir_name",
        "dir",
        "log_path",
        "checkpoint_dir",
        "platform",
        "backend",
        "init_method",
        "timeout",
        "world_size",
        "rank",
        "device",
        "local_rank",
        "fsdp_units",
        "fsdp_min_unit_params",
        "reshard_after_forward",
        "evaluate_splits",
        "allow_config_change",
        "compile",
        "profile",
        "throughput",
        "flops_per_sample",
        "peak_flops",
        "prefetch",
        "fetch_batches",
        "dataloader.num_workers",
        "dataloader.pin_memory",
        "dataloader.persistent_workers",
        "dataloader.prefetch_factor",
    }
)

# Keys that name a run rather than describe it: never a change between a checkpoint and the run that resumes it.
RESUME_IDENTITY_KEYS = frozenset({"experiment_id", "run_id", "seed_drawn"})
