"""`Config`: every knob a runner reads, declared once with its type, default and meaning."""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from difflib import get_close_matches
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import chanfig

from ..defaults import (
    DEFAULT_CHECKPOINT_DIR_NAME,
    DEFAULT_EXPERIMENT_ID,
    DEFAULT_EXPERIMENT_NAME,
    DEFAULT_LOG_LINES_PER_PASS,
    DEFAULT_LOG_LINES_PER_RUN,
    DEFAULT_PROJECT_ROOT,
    DEFAULT_RUN_NAME,
    DEFAULT_SCORE_NAME,
    IGNORED_NAMES_IN_HASH,
)
from ..utils.git import get_git_hash
from ..utils.io import to_builtin
from .trackers import tracker_names

__all__ = ["INTERVALS", "PLATFORMS", "PRECISIONS", "Config", "default_log_interval", "interval"]

PRECISIONS = ("fp32", "fp16", "bf16")
"""Values `Config.precision` accepts (besides `None`, which means fp32)."""

PLATFORMS = ("auto", "torch", "fsdp", "accelerate", "deepspeed")
"""Values `Config.platform` accepts."""

INTERVALS = ("log_interval", "save_interval", "checkpoint_interval", "eval_interval")
"""Interval knobs that are off when `None`, `0` or negative, as in the original DanLing (whose default is `-1`)."""


class Config(chanfig.Config):
    """The complete state of a run that is not a tensor: identity, progress, where files go and every knob.

    `Config` is a `chanfig.Config`: attribute and dotted access (`config.optim.lr`), nested
    sections created on first assignment, YAML/JSON round trips and command-line overrides through
    `parse` (`--epoch_end 5 --optim.lr 0.01`). The fields below are the ones the runner
    reads; add any others your runner needs.

    A section `deepspeed` (`config.deepspeed.zero_optimization.stage = 2`) is passed to DeepSpeed as it is, by the
    `deepspeed` platform, merged with what the fields below say (see `DeepSpeedRunner`).

    The run's identity derives from the content: [`run_uuid`][danling.runner.Config.run_uuid] (and so `run_id` and
    `hash(config)`) is a UUID of every field except progress counters, storage locations and how the run is carried
    out (processes, backend, device, logging; see [`IGNORED_NAMES_IN_HASH`][danling.defaults.IGNORED_NAMES_IN_HASH]),
    so it stays the same as training advances and on any number of processes.
    `run_id` is a key like the others (`config["run_id"]`, `config.dict()`, the saved `config.yaml`); see
    [`run_id`][danling.runner.Config.run_id] for when a stored value is kept.

    Examples:
        >>> config = Config(epoch_end=3, **{"optim.lr": 0.1})
        >>> config.epoch_end, config.optim.lr, config.score_name
        (3, 0.1, 'loss')
        >>> _ = config.parse(["--epoch_end", "5", "--optim.lr", "0.01"])
        >>> config.epoch_end, config.optim.lr
        (5, 0.01)
        >>> before = config.run_uuid
        >>> config.steps = 100
        >>> config.run_uuid == before
        True
    """

    # Identity
    experiment_name: str = DEFAULT_EXPERIMENT_NAME
    """Name of the experiment: runs that test one idea share it."""
    run_name: str = DEFAULT_RUN_NAME
    """Name of this run within the experiment."""
    experiment_id: str | None = None
    """Id of the experiment; defaults to the git commit checked out in the working directory, if any."""
    # `run_id` (a key too) is the property below: its value follows the content unless one is given.

    # Randomness
    seed: int | None = None
    """Random seed; `None` lets the main process draw one, which is then stored here. `0` is a valid seed."""
    seed_drawn: bool = False
    """Whether `seed` was drawn by the runner rather than given: a drawn seed is not part of the run's identity."""
    deterministic: bool = False
    """Make cuDNN and torch choose deterministic algorithms (slower, bit-for-bit repeatable)."""

    # Progress: counters of what is done, and the range the run covers
    iters: int = 0
    """Forward/backward passes (micro-batches) done."""
    steps: int = 0
    """Optimizer updates done (`iters // accum_steps` for whole accumulation windows)."""
    epochs: int = 0
    """Index of the current (or last finished) epoch, counted from 0."""
    iter_begin: int = 0
    """Iteration this process started (or resumed) from."""
    step_begin: int = 0
    """Optimizer step this process started (or resumed) from."""
    epoch_begin: int = 0
    """Epoch this process starts (or resumes) at."""
    iter_end: int | None = None
    """Stop after this many iterations in total, if set."""
    step_end: int | None = None
    """Stop after this many optimizer steps in total, if set. Without `epoch_end`, the run is counted in steps:
    `train` passes over the data as often as needed and stops exactly here (see `eval_interval`)."""
    epoch_end: int | None = None
    """Train epochs `epoch_begin` to `epoch_end - 1`. Leave it unset, with `step_end` or `iter_end` set, to train
    by steps."""
    eval_interval: int | None = None
    """When training by steps (`step_end` or `iter_end` without `epoch_end`): evaluate every this many optimizer
    steps, and at the end; results are then indexed by step. `None`, `0` or a negative value evaluates at the end
    only. Ignored when training by epochs, which evaluates after every epoch."""

    # Scores
    score_split: str | None = None
    """Split whose results rank epochs; `None` picks `val`, then `validate`, then the second split, else the first."""
    score_name: str = DEFAULT_SCORE_NAME
    """Metric within `score_split` that ranks epochs."""
    score_mode: str | None = None
    """`"min"` or `"max"` to force which scores are better; `None` infers it from `score_name`."""
    patience: int | None = None
    """Stop training after this many epochs (evaluations, when training by steps) without a new best score; `None`
    never stops early."""

    # Where things go
    project_root: str = DEFAULT_PROJECT_ROOT
    """Root directory under which every run gets `{name}-{id}/{timestamp}`."""
    checkpoint_dir_name: str = DEFAULT_CHECKPOINT_DIR_NAME
    """Name of the checkpoint directory inside the run directory."""
    log: bool = True
    """Log to stdout and to `run.log` in the run directory (`print` is routed to the log as well)."""
    tensorboard: bool = False
    """Write scalars for TensorBoard under the run directory (the same as naming `"tensorboard"` in `trackers`)."""
    trackers: list[str] | None = None
    """Experiment trackers that receive the config and every logged scalar: any of `"tensorboard"`, `"csv"` (one
    file per split under `csv/`), `"wandb"`, `"mlflow"` (`pip install 'danling[wandb]'`, `'danling[mlflow]'`).
    `None` means `["tensorboard"]` when `tensorboard` is set, else none. See the trackers guide."""
    progress: bool = True
    """Show progress bars on the main process when stdout is a terminal."""
    log_interval: int | None = None
    """Log a step line every this many batches of a pass (and at its last batch); `0` or a negative value never.
    `None` chooses one from the data (see `default_log_interval`): at most five lines per pass, fewer in a long run,
    so that `run.log` stays small."""
    save_checkpoints: bool = True
    """Write checkpoints at all; `False` keeps the run free of checkpoint files."""
    save_interval: int | None = None
    """Also keep `epoch-N.pth` every this many epochs; `None`, `0` or a negative value (the original's `-1`) keeps
    only `latest` and `best`."""
    max_epoch_checkpoints: int | None = None
    """Keep only the newest this many `epoch-N.pth` copies (older ones are deleted once the new one is written);
    `None` keeps them all. `latest` and `best` are never deleted."""
    checkpoint_interval: int | None = None
    """Also save `latest` every this many optimizer steps, inside epochs; `None`, `0` or a negative value saves at
    epoch ends only."""
    checkpoint_spare: bool = True
    """Keep the replaced `latest.pth` as a hidden spare and rewrite it in place at the next save: much faster
    frequent saves, for one more checkpoint's worth of disk."""
    async_checkpoint: bool = False
    """Write checkpoints in the background: a save copies the state (to reused host buffers, pinned for GPU
    tensors: one more copy of the state in host memory) and training goes on while a thread writes, fsyncs and
    publishes it; the next save waits for the previous one. Platforms `torch` and `fsdp` only."""
    checkpoint: str | None = None
    """Path of a checkpoint to resume from."""
    resume: bool = False
    """Resume from the newest valid `latest` checkpoint of this run, if there is one."""
    allow_config_change: bool = False
    """Let a resume change keys other than those that only steer the rest of the run (listed in
    [`RESUME_STEERING_KEYS`][danling.defaults.RESUME_STEERING_KEYS]); without it, such a change stops the resume
    before training. Allowed changes take effect (a new learning rate reaches the optimizer and the scheduler) and
    are recorded in `config.diff.yaml`."""
    pretrained: str | None = None
    """Path of a checkpoint whose model weights initialise the model (nothing else is loaded)."""

    # Data
    fetch_batches: bool = True
    """Fetch each batch of an in-memory dataset (a `TensorDataset`, a `StackDataset`, a mapping of tensors or arrays)
    with one indexing per tensor instead of one `__getitem__` per sample and a collate: the same batches, faster."""
    prefetch: bool = True
    """On a CUDA device, copy the next batch to the device (from pinned memory, `non_blocking`) on a side stream while
    the current step runs, instead of at the start of its step: the same batches, with the copy hidden. No effect
    elsewhere. Steps, `count_tokens` included, then receive batches already on the device."""

    # Optimisation
    accum_steps: int = 1
    """Micro-batches whose gradients are accumulated into one optimizer step."""
    precision: str | None = None
    """Autocast precision: `"fp16"`, `"bf16"`, or `None`/`"fp32"` for full precision."""
    compile: bool | str | Mapping | None = False
    """Compile the model with `torch.compile`: `true`, a mode (`max-autotune`), or a mapping of its options
    (`{mode: max-autotune, dynamic: true}`; `--compile.mode max-autotune`). The model's `forward` is compiled in
    place inside its DDP wrapper, or per innermost FSDP unit, never the EMA; checkpoints keep the uncompiled keys,
    so they load with or without compiling."""
    profile: bool | str | Mapping | None = None
    """Trace a window of optimizer steps with `torch.profiler`: `true` (steps 6 to 8), or `{wait, warmup, active}`
    in steps (plus `record_shapes`, `profile_memory`, `with_stack`, `with_flops`). Each process writes its trace
    under `{dir}/profile/`, for TensorBoard's profiler plugin or Perfetto; off by default."""
    throughput: bool = True
    """Add to each training log line (bar, console, trackers) the samples per second over every process
    (`tokens_per_s` too when the runner's `count_tokens` counts them), the share of time waiting for data and the
    peak memory; no device synchronisation is added."""
    flops_per_sample: float | None = None
    """FLOPs of one sample's forward and backward: with `peak_flops`, log lines show the model FLOP utilisation."""
    peak_flops: float | None = None
    """FLOP/s one process's device can do at most (its datasheet figure for the precision used), for `mfu`."""
    max_grad_norm: float | None = None
    """Clip the global gradient norm to this before each optimizer step."""
    max_grad_value: float | None = None
    """Clip every gradient element to `[-value, value]` before each optimizer step."""
    lr_scale_factor: float | None = None
    """Factor for `scale_lr`; `None` derives it from `batch_size_base`."""
    batch_size_base: int | None = None
    """Batch size the base learning rate was tuned for, used by `scale_lr`."""

    # Distributed
    platform: str = "auto"
    """Runner platform for `Runner`: `"auto"` (= `"torch"`), `"torch"` (DDP), `"fsdp"` (FSDP2), `"accelerate"`
    (Hugging Face Accelerate, data parallel) or `"deepspeed"` (DeepSpeed ZeRO); the last two need their extra. A
    subclass of a platform's runner (`TorchRunner`, `FSDPRunner`, ...) refuses another platform (`auto`/`torch`
    aside): subclass `Runner` to choose the platform by config."""
    fsdp_units: list[str] | None = None
    """FSDP: class names of the submodules to shard as units (`["TransformerBlock"]`), nested ones included; `None`
    picks the smallest subtrees holding at least `fsdp_min_unit_params` parameters."""
    fsdp_min_unit_params: int = 1_000_000
    """FSDP: the fewest parameters a unit holds when `fsdp_units` is `None` (the chosen units are logged at start)."""
    fsdp_output_precision: str | None = "fp32"
    """FSDP under `precision` `bf16`/`fp16`: the precision the model's outputs are cast to before the criterion
    (`"fp32"`, `"bf16"`, `"fp16"`); `None` leaves them in the compute precision."""
    reshard_after_forward: bool | None = None
    """FSDP: free gathered parameters after forward (less memory, one more all-gather in backward); `None` is FSDP's
    default."""
    backend: str | None = None
    """`torch.distributed` backend; `None` picks `nccl` on CUDA and `gloo` on CPU."""
    init_method: str | None = None
    """`torch.distributed` init method; `None` uses the environment `torchrun` sets."""
    timeout: float | None = 600
    """Seconds a collective (and the start of the process group) waits for the other processes before it raises:
    a process that stops answering then ends the run as crashed (resumable) instead of hanging it; `None` is
    torch's default (30 minutes on `gloo`, 10 on `nccl`). Raise it when processes legitimately wait longer (one
    process evaluating or saving a large checkpoint while the others wait at a barrier)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        for given in (*(arg for arg in args if isinstance(arg, Mapping)), kwargs):
            for name in _INTEGER_KNOBS.intersection(given):
                _check_integral(name, given[name])
        chosen = kwargs.pop("run_id", None)
        # Everything set while constructing arrives as data (a file, a checkpoint's config); a `run_id` among it is
        # weighed against the content once the content is complete (defaults and experiment id included).
        self.setattr(_ARRIVING, True)
        try:
            super().__init__(*args, **kwargs)
            if self.get("experiment_id") is None:
                self.experiment_id = get_git_hash() or DEFAULT_EXPERIMENT_ID
        finally:
            self.setattr(_ARRIVING, False)
        if not dict.__contains__(self, "run_id"):
            dict.__setitem__(self, "run_id", None)
        self._settle_run_id()
        if chosen is not None:
            self.set("run_id", chosen)  # a keyword is the caller's choice, kept like an assignment

    @classmethod
    def from_dict(cls, obj: Mapping | Sequence) -> Any:
        """Build a `Config` from a mapping; nested sections stay plain `chanfig.Config`s.

        chanfig would turn every nested section into this class too, which would inject the runner's defaults
        into each of them and break a YAML/JSON round trip.
        """
        if isinstance(obj, Mapping):
            return cls(obj)
        return super().from_dict(obj)

    def parse(  # type: ignore[override]
        self,
        args: Iterable[str] | None = None,
        default_config: str | None = None,
        no_default_config_action: str = "raise",
        boot: bool = True,
        strict: bool = False,
    ) -> Config:
        """Override keys from the command line (`sys.argv[1:]` when `args` is `None`), as `chanfig.Config.parse`.

        A key that looks like a misspelt key of this config (`--epoch_ned` for `epoch_end`, or `--lr` when the
        config has only `optim.lr`) stops the program before anything starts, with the suggestion: exit status 2,
        as `argparse` does. Other keys the config did not define are still added (that is how a script takes a key
        on purpose), and are listed in [`new_keys`][danling.runner.Config.new_keys], which the runner reports at
        start.

        Raises:
            SystemExit: If an option is a likely typo of a known key.
        """
        args = list(sys.argv[1:] if args is None else args)
        known = set(self.all_keys())
        new_keys = []
        for key in _option_keys(args):
            if key in known or any(existing.startswith(f"{key}.") for existing in known):
                continue
            suggestion = _likely_typo(key, known)
            if suggestion is not None:
                message = f"unknown option --{key}: did you mean --{suggestion}?"
                if int(os.environ.get("RANK", "0")) == 0:  # once per run under torchrun, not once per process
                    print(f"error: {message}", file=sys.stderr)
                raise SystemExit(2)
            new_keys.append(key)
        with warnings.catch_warnings():
            # chanfig's own "did you mean" warning: the likely typos were refused above, the rest are reported.
            warnings.filterwarnings("ignore", message="Unrecognized argument", category=RuntimeWarning)
            super().parse(args, default_config, no_default_config_action, boot=boot, strict=strict)
        self.__dict__["_new_keys"] = sorted(set(self.new_keys) | set(new_keys))
        return self

    @property
    def new_keys(self) -> list[str]:
        """Keys the command line added that the config did not define (set by `parse`; not part of the config)."""
        return list(self.__dict__.get("_new_keys", ()))

    def set(self, name: Any, value: Any, convert_mapping: bool | None = None) -> None:
        """Set `name` to `value`; a fractional value for a counter or interval is an error, not truncated."""
        if name == "run_id":
            self._set_run_id(value)
            return
        if name in _INTEGER_KNOBS:
            _check_integral(name, value)
        super().set(name, value, convert_mapping)

    def get(self, name: Any, default: Any = None, fallback: bool | None = None) -> Any:
        """The value of `name` (dotted names reach into sections); `run_id` is the run's id as the property gives it."""
        if name == "run_id":
            return self.run_id
        return super().get(name, default, fallback)

    def merge(self, *args: Any, overwrite: bool = True, **kwargs: Any) -> Any:
        """Merge mappings into the config; a `run_id` among them arrives as data, as when loading a file."""
        if self.getattr(_ARRIVING, False):
            return super().merge(*args, overwrite=overwrite, **kwargs)
        self.setattr(_ARRIVING, True)
        try:
            super().merge(*args, overwrite=overwrite, **kwargs)
        finally:
            self.setattr(_ARRIVING, False)
        self._settle_run_id()
        return self

    def dict(self, flatten: bool = False) -> Any:
        """The config as plain nested dicts, `run_id` included with the value the property gives."""
        plain = self._content(flatten)
        if isinstance(plain, dict) and "run_id" in plain:
            plain["run_id"] = self.run_id
        return plain

    def post(self) -> None:
        """Validate after parsing (chanfig calls this through `boot`)."""
        self.validate()

    def validate(self) -> None:
        """Check the knobs the runner reads; raise `ValueError` naming the bad value and the expected ones.

        chanfig calls this when a config is constructed; the runner calls it again when it starts, to catch
        values assigned in between. Declared types are checked by chanfig (`TypeError`).
        """
        super().validate()
        if not isinstance(self.accum_steps, int) or self.accum_steps < 1:
            raise ValueError(f"accum_steps must be a positive integer, got {self.accum_steps!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; expected one of: {', '.join(PRECISIONS)}")
        tracker_names(self.get("trackers"))
        if self.score_mode is not None and self.score_mode not in ("min", "max"):
            raise ValueError(f"score_mode must be 'min', 'max' or None, got {self.score_mode!r}")
        for name in ("epoch_end", "step_end", "iter_end"):
            value = self.get(name)
            if value is not None and (not _is_integer(value) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")
        keep = self.get("max_epoch_checkpoints")
        if keep is not None and (not _is_integer(keep) or keep < 1):
            raise ValueError(f"max_epoch_checkpoints must be a positive integer or None, got {keep!r}")
        for name in INTERVALS:
            value = self.get(name)
            if value is not None and not _is_integer(value):
                raise ValueError(f"{name} must be an integer (0 or negative turns it off) or None, got {value!r}")
        for name in ("max_grad_norm", "max_grad_value"):
            value = self.get(name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None, got {value!r}")

    def increment(self, name: str, amount: int = 1) -> int:
        """Add `amount` to the top-level counter `name` (`iters`, `steps`) and return the new value.

        The training loop bumps counters on every micro-batch; this skips chanfig's general-purpose `set` (type
        coercion, dotted names, frozen checks), which would cost more than the rest of the runner's step.
        """
        value = dict.__getitem__(self, name) + amount
        dict.__setitem__(self, name, value)
        object.__setattr__(self, name, value)  # chanfig mirrors top-level keys as attributes for fast reads
        return value

    @property
    def run_id(self) -> str:
        """Id of the run: the hex of [`run_uuid`][danling.runner.Config.run_uuid], unless one is given.

        A key of the config like any other: `config["run_id"]`, `"run_id" in config`, `config.dict()` and the saved
        `config.yaml` hold it. Its value depends on where it comes from:

        - none given: the content's id, which follows every change (a command-line override gives a new id);
        - assigned (`config.run_id = ...`, `config["run_id"] = ...`) or passed as `Config(run_id=...)`: that
          value, whatever the content;
        - arriving with a mapping (`Config(mapping)`, `Config.from_yaml`, `merge`, `parse`, a checkpoint's config):
          that value while the content stays as it arrived, so a config loaded back names the same run; once the
          content changes, the content's id, since the stored id named other content.

        A runner pins its id when it starts (a drawn seed or keys assigned in a subclass's `__init__` then leave it
        as it was given), and a resumed run takes the id of the run it continues. The id is left out of the
        content it is derived from.
        """
        stored = dict.get(self, "run_id")
        if stored is None:
            return self.run_uuid.hex
        basis = self.getattr(_RUN_ID_BASIS, None)
        if basis is None or self.getattr(_PENDING, False):
            return stored
        current = self.run_uuid.hex
        return stored if current == basis else current

    @run_id.setter
    def run_id(self, value: str | None) -> None:
        # chanfig routes attribute assignment through `set`; this serves `object.__setattr__` and type checkers.
        self._set_run_id(value)

    def _set_run_id(self, value: Any) -> None:
        """Store `value` (`None` returns to the content's id): chosen by the caller, or arriving with a mapping."""
        value = None if value is None else str(value)
        dict.__setitem__(self, "run_id", value)
        self.setattr(_RUN_ID_BASIS, None)
        # An id that arrives with a mapping is weighed against the content once the whole mapping is in.
        self.setattr(_PENDING, value is not None and self.getattr(_ARRIVING, False))

    def _settle_run_id(self) -> None:
        """Record the content an id that arrived with a mapping belongs to: it holds while the content does."""
        if self.getattr(_PENDING, False):
            self.setattr(_PENDING, False)
            self.setattr(_RUN_ID_BASIS, self.run_uuid.hex)

    def _content(self, flatten: bool = False) -> Any:
        return super().dict(flatten)

    @property
    def experiment_uuid(self) -> UUID:
        """UUID of the experiment, derived from `experiment_id`."""
        return uuid5(NAMESPACE_URL, str(self.experiment_id))

    @property
    def run_uuid(self) -> UUID:
        """UUID of the run: the config's content, less progress counters, storage locations, how the run is carried
        out (processes, backend, device, logging) and a drawn seed."""
        content: Mapping = self._content()
        identity = {key: value for key, value in content.items() if key not in IGNORED_NAMES_IN_HASH}
        if content.get("seed_drawn"):
            # The identity of the config as given, before the runner drew the seed.
            identity["seed"] = None
        return uuid5(self.experiment_uuid, json.dumps(to_builtin(identity), sort_keys=True, default=repr))

    def __hash__(self) -> int:  # type: ignore[override]
        return int(self.run_uuid.hex, 16)


# Instance attributes (not keys) that track where a stored `run_id` came from.
_ARRIVING = "_run_id_arriving"  # set while a mapping is merged in (construction, `merge`, `parse`)
_PENDING = "_run_id_pending"  # an id arrived and its content is not yet complete
_RUN_ID_BASIS = "_run_id_basis"  # the content's id an arrived id belongs to; `None` for an id that was chosen

_INTEGER_KNOBS = frozenset({"epoch_end", "step_end", "iter_end", "accum_steps", *INTERVALS})


def _option_keys(args: Sequence[str]) -> list[str]:
    """The keys of `--key value` and `--key=value` options, dashes in names read as underscores (as chanfig does)."""
    keys = []
    for arg in args:
        if arg == "--":
            break
        if arg.startswith("--") and len(arg) > 2:
            keys.append(arg[2:].split("=", 1)[0].replace("-", "_"))
    return keys


def _likely_typo(key: str, known: set[str]) -> str | None:
    """The known key `key` most likely misspells: a close spelling, or the one nested key it names the leaf of."""
    close = get_close_matches(key, known, n=1, cutoff=0.8)
    if close:
        return close[0]
    if "." not in key:
        leaves = [existing for existing in known if existing.rsplit(".", 1)[-1] == key]
        if len(leaves) == 1:
            return leaves[0]
    return None


def interval(value: int | None) -> int:
    """An interval knob as a positive period, or `0` when it is off (`None`, `0` or negative)."""
    return value if value is not None and value > 0 else 0


def default_log_interval(pass_length: int, run_length: int | None = None) -> int:
    """The `log_interval` a runner takes when the config leaves it unset.

    A pass logs its first batch, every `log_interval`-th and its last. The interval is the smallest that keeps a pass
    of `pass_length` batches to at most five lines, and at least a 500th of the `run_length` micro-batches the run
    trains, so that a run of many epochs logs about 500 lines between the first and last batches of its passes.

    Args:
        pass_length: Batches in the longest pass (the longest dataloader).
        run_length: Micro-batches the whole run trains, if known.

    Examples:
        >>> default_log_interval(45)  # batches 1, 12, 23, 34 and 45
        11
        >>> default_log_interval(45, run_length=200 * 45)  # 200 epochs: batches 1, 19, 37 and 45
        18
        >>> default_log_interval(3), default_log_interval(1)
        (1, 1)
    """
    interval = -(-(pass_length - 1) // (DEFAULT_LOG_LINES_PER_PASS - 1))
    if run_length:
        interval = max(interval, -(-run_length // DEFAULT_LOG_LINES_PER_RUN))
    return max(interval, 1)


def _check_integral(name: str, value: Any) -> None:
    # chanfig would truncate 1.5 to the declared int silently.
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{name} must be an integer, got {value!r}")


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
