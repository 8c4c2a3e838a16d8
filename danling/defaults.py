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
