"""`BaseRunner`: lifecycle, progress, rank defaults, the config fall-through and the results/IO parts."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable, Mapping
from typing import Any
from warnings import warn

from chanfig import FlatDict, NestedDict, Variable

from ..metrics.average_meter import AverageMeters
from ..utils.basex import get_time_str
from ..utils.io import CorruptFileError
from ..utils.seed import MAX_SEED, seed_everything, validate_seed
from .checkpoint import CheckpointIO, find_resumable_checkpoints
from .config import Config
from .meta import RunnerMeta, RunnerMode
from .results import Results
from .resumption import reapply_hyperparameters
from .run_length import RunLength
from .workspace import Workspace

__all__ = ["BaseRunner"]


class BaseRunner(Workspace, Results, CheckpointIO, RunLength, metaclass=RunnerMeta):  # pylint: disable=too-many-public-methods
    r"""Base class for all runners: running environment, progress, results, IO and checkpoints.

    `BaseRunner` sets up the basic running environment (`seed`, `deterministic`, `logging`), provides basic
    methods (`state_dict`, `save_checkpoint`, `load_checkpoint`, ...) and defines the attributes and properties
    every runner shares (`scores`, `progress`, ...). It holds no framework code: see
    [`TorchRunner`][danling.TorchRunner] for training with PyTorch.

    Lifecycle: `RunnerMeta` calls `__init__` (where the seed is set, before a subclass builds its model) and then
    `__post_init__` (determinism, logging, print routing, TensorBoard, restoring a checkpoint).

    Attribute look-ups fall through to the config: `runner.lr` reads `config.lr` when the runner has no `lr`.
    Assignments follow one precedence: an attribute the runner already has (instance or class, properties
    included) is set on the runner; else a key the config has is set in the config; else the runner gets a new
    attribute.

    Attributes: ID:
        timestamp (str): A time string representing the creation time of run.
        name (str): `f"{self.config.experiment_name}-{self.config.run_name}"`.
        id (str): `f"{self.config.experiment_id:.8}{self.config.run_id:.8}"`.
        uuid (UUID, property): `uuid5(self.config.run_uuid, self.id)`.

    Attributes: Core:
        mode (RunnerMode, property): Running mode.
        config (Config): Running config. See [`Config`][danling.Config] for details.

    Attributes: Model:
        model (Callable): The model.
        ema (Callable): An exponential moving average of the model, if any.
        criterion (Callable): The loss function.
        optimizer: The optimizer.
        scheduler: The learning-rate scheduler.

    Attributes: Data:
        datasets (FlatDict): All datasets, `{split: dataset}`. Initialised to `FlatDict` by default.
        datasamplers (FlatDict): All datasamplers, `{split: datasampler}`. Initialised to `FlatDict` by default.
        dataloaders (FlatDict): All dataloaders, `{split: dataloader}`. Initialised to `FlatDict` by default.
        split (str): Current running split.
        batch_size (int, property): Number of samples per batch in current running split.
        batch_size_equivalent (int, property): Total batch_size (`batch_size * world_size * accum_steps`).

    Attributes: Progress:
        progress (float, property): Running Progress, in `[0, 1]`.

    Attributes: Results:
        results (NestedDict): Results of the run, `{epoch: {split: {metric: score}}}`.
        latest_result (NestedDict, property): Most recent result, `{split: {metric: score}}`.
        best_result (NestedDict, property): Best result, `{split: {metric: score}}`.
        scores (FlatDict, property): `{epoch: score}`, taken from results by `score_split` and `score_name`.
        latest_score (float, property): Most recent score.
        best_score (float, property): Best score.
        score_split (Optional[str]): The split that holds the score; `None` infers it.
        score_name (str): The metric name of the score. Defaults to `"loss"`.
        is_best (bool, property): Whether the latest score is the best.

    A result has splits as keys, like `dataloaders`:

    ```python
    {"train": {"loss": 0.1, "accuracy": 0.9}, "val": {"loss": 0.2, "accuracy": 0.8}}
    ```

    With `score_split = "val"` and `score_name = "accuracy"`, the score of that result is `0.8`.

    Attributes: IO:
        dir (str, property): Directory of the run, `{project_root}/{name}-{id}/{timestamp}` by default.
        checkpoint_dir (str, property): Directory of checkpoints.
        log_path (str, property): Path of log file.
        checkpoint_dir_name (str): Name of the checkpoint directory under `dir`. Defaults to `"checkpoints"`.

    Attributes: Parallel Training:
        world_size (int, property): Number of processes.
        rank (int, property): Process index of all processes.
        local_rank (int, property): Process index of local processes.
        distributed (bool, property): If runner is running in distributed mode.
        is_main_process (bool, property): If current process is the main process of all processes.
        is_local_main_process (bool, property): If current process is the main process of local processes.

    Attributes: logging:
        meters (AverageMeters | MultiTaskAverageMeters): Average meters. Initialised to `AverageMeters`.
        metrics (Metrics | MultiTaskMetrics | MetricMeters | None): Metrics for evaluating.
        train_metrics (Metrics | None): Metrics used when training, instead of `metrics`.
        evaluate_metrics (Metrics | None): Metrics used when evaluating, instead of `metrics`.
        logger: The runner's logger.
        writer: The TensorBoard writer.

    Examples:
        >>> runner = BaseRunner(Config(log=False, seed=1, epoch_end=2, project_root=getfixture("tmp_path")))
        >>> runner.append_result({"train": {"loss": 0.5}, "val": {"loss": 0.3}}, index=0)
        >>> runner.append_result({"train": {"loss": 0.4}, "val": {"loss": 0.4}}, index=1)
        >>> runner.scores.dict(), runner.best_index, runner.is_best
        ({0: 0.3, 1: 0.4}, 0, False)
    """

    # No defaults for these in the class: they must live in each instance's __dict__.
    timestamp: str

    _mode: RunnerMode
    _config: Config
    inited: bool = False

    model: Callable | None = None
    ema: Callable | None = None
    criterion: Callable | None = None
    optimizer: Any | None = None
    scheduler: Any | None = None

    datasets: FlatDict
    datasamplers: FlatDict
    dataloaders: FlatDict
    split: str | None = None

    results: NestedDict
    meters: AverageMeters
    metrics: Any | None = None
    train_metrics: Any | None = None
    evaluate_metrics: Any | None = None

    _checkpoint_to_load: Mapping | None = None
    _resume_position: Mapping | None = None

    def __init__(self, config: Config | Mapping) -> None:
        self.timestamp = get_time_str()
        for container in ("datasets", "datasamplers", "dataloaders"):
            if container not in self.__dict__:
                setattr(self, container, FlatDict())
        if "results" not in self.__dict__:
            self.results = NestedDict()
        self.meters = AverageMeters()
        self._mode = RunnerMode.train
        # The config goes in last: until `inited`, assignments never fall through to it.
        if not isinstance(config, Config):
            config = Config(config)
        config.validate()
        self._config = config
        self.init_distributed()
        self.inited = True
        # The run's id comes from the config as given (before a seed is drawn), so relaunching the same config
        # finds the same run directory, which `resume=True` relies on.
        # Pinned as the config is now: a seed drawn below, or keys assigned in a subclass's __init__, then leave
        # the run's id (and its directory) as it was given.
        config.run_id = config.run_id
        pending = self.__dict__.pop("_pending_checkpoint", None)
        if pending is None and config.get("checkpoint") is not None:
            pending = self.read_checkpoint_file(config["checkpoint"])
        if pending is None and config.get("resume"):
            pending = self.find_resume_checkpoint()
        if pending is not None:
            self.load_config(pending)
            self._checkpoint_to_load = pending
        # Seeded here, before a subclass's __init__ builds its model, so the model is reproducible from the seed.
        self.set_seed()

    def find_resume_checkpoint(self) -> Mapping | None:
        """The newest checkpoint of this run that loads intact, for `config.resume=True`; `None` if there is none.

        Runs are found by their `{name}-{id}` directory under `project_root`. A truncated or corrupted checkpoint
        is reported and skipped in favour of the next newest. The main process chooses; every process loads the
        file it chose.
        """
        chosen, loaded = None, None
        if self.is_main_process:
            run_root = os.path.join(self.config.project_root, f"{self.name}-{self.id}")
            checkpoint_dir_name, extension = self.config.checkpoint_dir_name, self.checkpoint_extension
            for path in find_resumable_checkpoints(run_root, checkpoint_dir_name, extension):
                try:
                    loaded = self.read_checkpoint_file(path)
                except (CorruptFileError, ValueError) as error:
                    print(f"resume: skipping {path}: {error}", file=sys.stderr)
                    continue
                chosen = path
                break
            print(f"resume: continuing from {chosen}" if chosen else f"resume: no checkpoint under {run_root}")
        chosen = self.broadcast_object(chosen)
        if chosen is None:
            return None
        self.config.checkpoint = chosen
        return loaded if loaded is not None else self.read_checkpoint_file(chosen)

    def __post_init__(self) -> None:
        self.init_environment()
        self.restore_checkpoint()

    def init_environment(self) -> None:
        """Determinism, logging, print routing and the trackers (TensorBoard, ...), as the config asks."""
        if self.config.deterministic:
            self.set_deterministic()
        if self.config.log:
            self.init_logging()
        self.init_print()
        for note in self.start_notes():
            print(note)
        self.init_trackers()

    def start_notes(self) -> list[str]:
        """What the run must say once it can log: keys only the command line defined, and what a resume changed."""
        notes = list(self.__dict__.pop("_start_notes", []))
        new_keys = self.config.new_keys
        if new_keys:
            # Most likely meant, but nothing in the defaults reads them.
            given = ", ".join(f"{key}={self.config.get(key)!r}" for key in new_keys)
            notes.insert(0, f"not used by the defaults: {given}")
        return notes

    def restore_checkpoint(self) -> None:
        """Load the checkpoint given at construction (`config.checkpoint` or `from_checkpoint`), once.

        Without one, load `config.pretrained` model weights if set.

        Called at the end of `__post_init__`; `TorchRunner` calls it after moving the model to its device.
        """
        pending, self._checkpoint_to_load = self._checkpoint_to_load, None
        reapply = self.__dict__.pop("_reapply_hyperparameters", False)
        if pending is None:
            if self.config.get("pretrained") is not None and self.model is not None:
                self.load_pretrained(self.config["pretrained"])
            return
        if self.model is None:
            self.load_state_dict({key: value for key, value in pending.items() if key in ("results", "runner")})
        elif reapply and self.optimizer is not None:
            # Allowed changes take effect: the checkpoint restores the optimizer's old hyperparameters.
            optimizer, scheduler = self.optimizer, getattr(self.scheduler, "scheduler", self.scheduler)
            fresh = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
            base = list(getattr(scheduler, "base_lrs", None) or []) or None
            self.load_checkpoint(pending)
            reapply_hyperparameters(optimizer, scheduler, fresh, base)
        else:
            self.load_checkpoint(pending)

    def init_distributed(self) -> None:
        """Initialise the distributed environment; nothing to do for a single-process base runner."""

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """`obj` as held by process `src`, on every process (the identity on one process)."""
        return obj

    def set_seed(self, seed: int | None = None, bias: int | bool | None = None) -> int:
        """Seed the random generators.

        Args:
            seed: Seed to set; defaults to `config.seed`. If both are `None`, the main process draws one, every
                process receives it, and it is stored in `config.seed`. `0` is a valid seed.
            bias: Offset added to the seed, so processes draw different augmentations. Defaults to `self.rank`;
                `False` disables it.

        Returns:
            The seed set on this process (with the offset).
        """
        if seed is None:
            seed = self.config.get("seed")
        if seed is None:
            drawn = random.SystemRandom().randint(0, MAX_SEED) if self.is_main_process else None
            seed = self.broadcast_object(drawn)
            self.config.seed = seed
            self.config.seed_drawn = True
        seed = validate_seed(seed)
        if bias is None or bias is True:
            bias = self.rank
        if bias is not False and bias:
            seed = (seed + int(bias)) % (MAX_SEED + 1)
        self.seed_generators(seed)
        return seed

    def seed_generators(self, seed: int) -> None:
        """Seed Python's `random` and NumPy; `TorchRunner` seeds torch as well."""
        seed_everything(seed, torch=False)

    def set_deterministic(self) -> None:
        """Make computation deterministic; implemented by platform runners such as `TorchRunner`."""
        raise NotImplementedError(f"{type(self).__name__} does not implement set_deterministic")

    def scale_lr(self, lr: float, lr_scale_factor: float | None = None, batch_size_base: int | None = None) -> float:
        """Scale a learning rate by the [linear scaling rule](https://arxiv.org/abs/1706.02677).

        The factor is `lr_scale_factor` if given, else `config.lr_scale_factor` if set, else
        `batch_size_equivalent / batch_size_base` (`batch_size_base` from the argument or the config). The factor
        used is stored in `config.lr_scale_factor`.

        Raises:
            ValueError: If no factor is given and no base batch size is known.
        """
        if lr_scale_factor is None:
            lr_scale_factor = self.config.get("lr_scale_factor")
        if lr_scale_factor is None:
            if batch_size_base is None:
                batch_size_base = self.config.get("batch_size_base")
            if batch_size_base is None:
                raise ValueError(
                    "scale_lr needs a base batch size: pass batch_size_base, set config.batch_size_base, "
                    "or give lr_scale_factor"
                )
            lr_scale_factor = self.batch_size_equivalent / batch_size_base
        elif batch_size_base is not None:
            warn("batch_size_base is ignored when lr_scale_factor is given", category=RuntimeWarning, stacklevel=2)
        self.config.lr_scale_factor = lr_scale_factor
        return lr * lr_scale_factor

    def advance(self, loss: Any, *args: Any, **kwargs: Any) -> None:
        """Backward the loss and step the optimizer and scheduler; implemented by platform runners."""
        raise NotImplementedError(f"{type(self).__name__} does not implement advance")

    def dict(self, cls: Callable = dict) -> Mapping:
        """The config as a `cls` mapping, nested like `config.dict()`."""
        plain: Mapping = self.config.dict()  # type: ignore[assignment]
        return plain if cls is dict else cls(plain)

    @property
    def mode(self) -> RunnerMode:
        """Running mode: `train`, `eval` or `inf`."""
        return self._mode

    @mode.setter
    def mode(self, mode: str | RunnerMode) -> None:
        self._mode = RunnerMode(mode)

    @property
    def config(self) -> Config:  # type: ignore[override]
        """The run's config."""
        return self._config

    @property
    def world_size(self) -> int:
        """Number of processes."""
        return 1

    @property
    def rank(self) -> int:
        """Process index of all processes."""
        return 0

    @property
    def local_rank(self) -> int:
        """Process index of local processes."""
        return 0

    @property
    def distributed(self) -> bool:
        """If runner is running in distributed mode."""
        return self.world_size > 1

    @property
    def is_main_process(self) -> bool:
        """If current process is the main process of all processes."""
        return self.rank == 0

    @property
    def is_local_main_process(self) -> bool:
        """If current process is the main process of local processes."""
        return self.local_rank == 0

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if hasattr(type(self), name):
            # A property raised AttributeError: let its own message through instead of a generic one.
            return object.__getattribute__(self, name)
        if self.__dict__.get("inited"):
            config = self.__dict__["_config"]
            if name in config:
                return config[name]
            if hasattr(type(config), name):
                return getattr(config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}, nor has its config")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__:
            if isinstance(self.__dict__[name], Variable):
                self.__dict__[name].set(value)
            else:
                self.__dict__[name] = value
            return
        if hasattr(type(self), name):
            current = getattr(type(self), name)
            if isinstance(current, Variable):
                current.set(value)
            else:
                object.__setattr__(self, name, value)
            return
        if self.__dict__.get("inited"):
            config = self.__dict__["_config"]
            if name in config:
                if isinstance(config[name], Variable):
                    config[name].set(value)
                else:
                    config[name] = value
                return
            if hasattr(type(config), name):
                setattr(config, name, value)
                return
        object.__setattr__(self, name, value)

    def __contains__(self, name: str) -> bool:
        if name in self.__dict__ or hasattr(type(self), name):
            return True
        config = self.__dict__.get("_config")
        return config is not None and (name in config or hasattr(type(config), name))

    def __repr__(self) -> str:
        lines = [f"({key}): {_indent(repr(value))}" for key, value in self.__dict__.items()]
        body = "\n  " + "\n  ".join(lines) + "\n" if lines else ""
        return f"{type(self).__name__}({body})"


def _indent(text: str) -> str:
    first, *rest = text.split("\n")
    return "\n".join([first, *("  " + line for line in rest)])
