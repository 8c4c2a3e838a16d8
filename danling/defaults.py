"""Named defaults shared by the config and the runner."""

from __future__ import annotations

DEFAULT_EXPERIMENT_NAME = "DanLing"
DEFAULT_RUN_NAME = "Run"
# Used as the experiment id when the working directory is not inside a git repository.
DEFAULT_EXPERIMENT_ID = "xxxxxxxxxxxxxxxx"
DEFAULT_PROJECT_ROOT = "experiments"
DEFAULT_CHECKPOINT_DIR_NAME = "checkpoints"
DEFAULT_SCORE_NAME = "loss"

# Fields that change as a run progresses, or that only say where it is stored or resumed from: the run's
# identity (`run_uuid`, `run_id`, the config's hash) must not depend on them.
IGNORED_NAMES_IN_HASH = frozenset(
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
        "world_size",
        "rank",
        "device",
        "fsdp_units",
        "reshard_after_forward",
        "evaluate_splits",
        "allow_config_change",
        "dataloader.num_workers",
        "dataloader.pin_memory",
        "dataloader.persistent_workers",
        "dataloader.prefetch_factor",
    }
)

# Keys that name a run rather than describe it: never a change between a checkpoint and the run that resumes it.
RESUME_IDENTITY_KEYS = frozenset({"experiment_id", "run_id", "seed_drawn"})
