"""A learning-rate scheduler with built-in warmup, a decay strategy chosen by name, and cooldown.

This is the scheduler of the documented DanLing, with its arguments, defaults and step counting.

Counting. The k-th lr of a run is the one in force for the k-th optimizer step: `k = 1` right after construction,
and one more after every `scheduler.step()`. Its progress is `p = min(k / total_steps, 1)`.

Decay. A strategy maps `p` to a factor `f(p)` that falls from 1 to 0 (see
[`STRATEGIES`][danling.optim.lr_scheduler.STRATEGIES]); the scheduled lr goes from each param group's initial lr
`lr` towards its final lr `final` by the ratio `r = 1 - f(p)`, in one of two ways (`method`):

- `"percentile"`: geometrically, `lr * (final / lr) ** r`, an equal factor per unit of progress;
- `"numerical"`: linearly, `(1 - r) * (lr - final) + final`.

Warmup and cooldown. While `k < warmup_steps` the lr rises linearly from `min_lr` to the scheduled lr, by the ratio
`k / warmup_steps`; once `k > total_steps - cooldown_steps` it falls linearly from the scheduled lr to `min_lr`, by
the ratio `1 - (k - (total_steps - cooldown_steps)) / cooldown_steps`. By default the first 5% of the run warms up
and the last 20% cools down.

Every lr is at least `min_lr`; past `total_steps` the lr stays where the schedule ended.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer, lr_scheduler

__all__ = [
    "DEFAULT_COOLDOWN_DIVISOR",
    "DEFAULT_FINAL_LR_RATIO",
    "DEFAULT_WARMUP_DIVISOR",
    "METHODS",
    "STRATEGIES",
    "LRScheduler",
    "constant",
    "cosine",
    "exponential",
    "linear",
    "log",
    "polynomial",
    "sqrt",
]

DEFAULT_FINAL_LR_RATIO = 1e-3
"""`final_lr / initial lr` when neither `final_lr_ratio` nor `final_lr` is given."""

DEFAULT_WARMUP_DIVISOR = 20
"""`warmup_steps` defaults to `total_steps // DEFAULT_WARMUP_DIVISOR` (the first 5% of the run)."""

DEFAULT_COOLDOWN_DIVISOR = 5
"""`cooldown_steps` defaults to `total_steps // DEFAULT_COOLDOWN_DIVISOR` (the last 20% of the run)."""


def _percentile(lr: float, final_lr: float, ratio: float) -> float:
    # A group at lr 0 (frozen) has no scale to interpolate on; it stays at 0.
    return lr * (final_lr / lr) ** ratio if lr > 0 else 0.0


def _numerical(lr: float, final_lr: float, ratio: float) -> float:
    return (1.0 - ratio) * (lr - final_lr) + final_lr


METHODS: dict[str, Callable[[float, float, float], float]] = {"percentile": _percentile, "numerical": _numerical}
"""How the scheduled lr moves from the initial lr to the final lr, by name: each maps `(lr, final_lr, ratio)`,
with `ratio` in `[0, 1]`, to the lr; `"percentile"` is geometric and `"numerical"` linear."""


def constant(progress: float) -> float:
    """Hold the initial lr: the factor is 1 everywhere.

    Combine with `cooldown_steps` for a warmup-stable-decay schedule.

    Args:
        progress: Fraction of the run done, in `[0, 1]`.

    Returns:
        Always `1.0`.

    Examples:
        >>> [constant(p) for p in (0.0, 0.5, 1.0)]
        [1.0, 1.0, 1.0]
    """
    return 1.0


def linear(progress: float) -> float:
    """Decay linearly: `f(p) = 1 - p`.

    Args:
        progress: Fraction of the run done, in `[0, 1]`.

    Returns:
        The factor in `[0, 1]`.

    Examples:
        >>> [linear(p) for p in (0.0, 0.25, 0.5, 1.0)]
        [1.0, 0.75, 0.5, 0.0]
    """
    return 1.0 - progress


def cosine(progress: float) -> float:
    """Decay along half a cosine wave: `f(p) = (1 + cos(pi * p)) / 2`.

    Args:
        progress: Fraction of the run done, in `[0, 1]`.

    Returns:
        The factor in `[0, 1]`.

    Examples:
        >>> [round(cosine(p), 4) for p in (0.0, 0.25, 0.5, 0.75, 1.0)]
        [1.0, 0.8536, 0.5, 0.1464, 0.0]
    """
    return (1.0 + math.cos(math.pi * progress)) / 2.0


def polynomial(progress: float, power: float = 2.0) -> float:
    """Decay as a power of the remaining fraction: `f(p) = (1 - p) ** power`.

    `power=1` is linear; the registered `"polynomial"` strategy uses the default `power=2`.
    Register `functools.partial(polynomial, power=...)` in `STRATEGIES` for another power.

    Args:
        progress: Fraction of the run done, in `[0, 1]`.
        power: Exponent; larger powers drop faster early on.

    Returns:
        The factor in `[0, 1]`.

    Examples:
        >>> [polynomial(p) for p in (0.0, 0.5, 1.0)]
        [1.0, 0.25, 0.0]
        >>> polynomial(0.5, power=3)
        0.125
    """
    return (1.0 - progress) ** power


def sqrt(progress: float) -> float:
    """Decay as one minus a square root: `f(p) = 1 - sqrt(p)`.

    Drops steeply right after the start, then flattens.

    Args:
        progress: Fraction of the run done, in `[0, 1]`.

    Returns:
        The factor in `[0, 1]`.

    Examples:
        >>> [sqrt(p) for p in (0.0, 0.25, 1.0)]
        [1.0, 0.5, 0.0]
    """
    return 1.0 - math.sqrt(progress)


def log(progress: float) -> float:
    """Decay as one minus a logarithm: `f(p) = 1 - ln(1 + (e - 1) * p)`.

    The argument of the logarithm runs from 1 to `e`, so the factor runs from 1 to 0; the drop is fastest at the start.

    Args:
        progress: Fraction of the run done, in `[0, 1]`.

    Returns:
        The factor in `[0, 1]`.

    Examples:
        >>> [round(log(p), 4) for p in (0.0, 0.5, 1.0)]
        [1.0, 0.3799, 0.0]
    """
    return 1.0 - math.log(1.0 + (math.e - 1.0) * progress)


def exponential(progress: float, rate: float = math.log(1000.0)) -> float:
    """Decay exponentially, rescaled to end at exactly 0: `f(p) = (exp(-rate * p) - exp(-rate)) / (1 - exp(-rate))`.

    A plain `exp(-rate * p)` never reaches 0, so it is shifted and stretched to hit the final lr at `p = 1`.
    With `method="numerical"`, the default `rate = ln(1000)` makes the lr fall close to geometrically by three orders
    of magnitude, matching the default `final_lr_ratio` of `1e-3`.

    Args:
        progress: Fraction of the run done, in `[0, 1]`.
        rate: Steepness; must be positive.

    Returns:
        The factor in `[0, 1]`.

    Examples:
        >>> [round(exponential(p), 4) for p in (0.0, 0.5, 1.0)]
        [1.0, 0.0307, 0.0]
        >>> round(exponential(0.5, rate=1.0), 4)
        0.3775
    """
    floor = math.exp(-rate)
    return (math.exp(-rate * progress) - floor) / (1.0 - floor)


STRATEGIES: dict[str, Callable[[float], float]] = {
    "constant": constant,
    "linear": linear,
    "cosine": cosine,
    "polynomial": polynomial,
    "sqrt": sqrt,
    "log": log,
    "exponential": exponential,
}
"""Decay strategies by name: each maps progress in `[0, 1]` to a factor, 1 at the start.

[`LRScheduler`][danling.optim.LRScheduler] moves from the initial lr towards the final lr by the ratio
`1 - factor`: 0 at the start and, for the decaying strategies, 1 at the end.

Keys are lowercase; [`LRScheduler`][danling.optim.LRScheduler] lowercases the name it is given before looking it up.
"""


class LRScheduler(lr_scheduler.LRScheduler):
    """Warmup, then a decay strategy from each param group's initial lr to its final lr, then cooldown.

    Call `step()` once after every `optimizer.step()`. The lr in force for the k-th optimizer step of the run is
    the k-th lr of the formulas in [`danling.optim.lr_scheduler`][danling.optim.lr_scheduler]: the lr right after
    construction is the first, and each `step()` moves to the next. The lr is a closed-form function of the number of
    steps taken (see [`compute_lr`][danling.optim.LRScheduler.compute_lr]), so restoring `state_dict` into a
    scheduler built the same way resumes the schedule exactly.

    Args:
        optimizer: The optimizer whose param groups are scheduled.
            Each group's initial lr is its `initial_lr` if set (by an earlier scheduler), else its `lr`.
        total_steps: Length of the schedule in optimizer steps; at least 1.
            A whole-valued float (`1e4`, as YAML reads it) is accepted.
        final_lr_ratio: Final lr of each group as a fraction of its initial lr, in `[0, 1]`.
            Defaults to [`DEFAULT_FINAL_LR_RATIO`][danling.optim.lr_scheduler.DEFAULT_FINAL_LR_RATIO] when
            `final_lr` is not given either.
        final_lr: Final lr shared by all groups, at least 0 and at most the smallest initial lr.
            Mutually exclusive with `final_lr_ratio`.
        min_lr: Floor on every lr, where warmup starts and where cooldown ends. When `final_lr` is given and lower,
            `min_lr` is lowered to it, so that the schedule can reach it. A group whose initial lr is below
            `min_lr` (say, a frozen group at lr 0) is floored at its initial lr instead.
        strategy: Name of the decay strategy, a key of
            [`STRATEGIES`][danling.optim.lr_scheduler.STRATEGIES] (case-insensitive).
        warmup_steps: Length of the linear warmup: `None` for `total_steps // 20`, `0` for none, a float in
            `(0, 1)` for a fraction of `total_steps` (rounded to the nearest step), or a whole number of steps
            (an int, or a whole-valued float such as `1.0`).
        cooldown_steps: Length of the linear cooldown at the end, read as `warmup_steps` is; `None` for
            `total_steps // 5`.
        last_epoch: Number of steps already taken minus one, `-1` for a fresh schedule (torch's convention).
        method: How the lr moves from the initial to the final lr, a key of
            [`METHODS`][danling.optim.lr_scheduler.METHODS]: `"percentile"` (geometric) or `"numerical"`
            (linear). Defaults to `"percentile"` when the final lr is a ratio (given or by default) and to
            `"numerical"` when `final_lr` is given.

    Raises:
        ValueError: If an argument is out of range; the message names the argument, its value and the valid range.
        TypeError: If a step count is not a number.

    Examples:
        The defaults warm up over the first 5% of the run and cool down over the last 20%; a constant strategy
        gives warmup-stable-decay:

        >>> import torch
        >>> optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
        >>> scheduler = LRScheduler(optimizer, total_steps=100, strategy="constant", min_lr=0.0)
        >>> scheduler.warmup_steps, scheduler.cooldown_steps, scheduler.method
        (5, 20, 'percentile')
        >>> [round(scheduler.get_lr_at(step)[0], 4) for step in (0, 1, 2, 3, 4, 79, 80, 81, 98, 99)]
        [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.95, 0.9, 0.05, 0.0]

        `"percentile"` falls by an equal factor per step, here to `1e-4` of the initial lr in 4 steps:

        >>> optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
        >>> scheduler = LRScheduler(optimizer, total_steps=4, final_lr_ratio=1e-4, strategy="linear")
        >>> lrs = []
        >>> for _ in range(4):
        ...     lrs.append(scheduler.get_last_lr()[0])
        ...     optimizer.step()
        ...     scheduler.step()
        >>> [round(lr, 8) for lr in lrs]
        [0.1, 0.01, 0.001, 0.0001]

        `"numerical"`, the default with an absolute `final_lr`, falls by an equal amount per step:

        >>> optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
        >>> scheduler = LRScheduler(optimizer, total_steps=4, final_lr=0.0, strategy="linear")
        >>> scheduler.method, [scheduler.get_lr_at(step)[0] for step in range(4)]
        ('numerical', [0.75, 0.5, 0.25, 0.0])
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        final_lr_ratio: float | None = None,
        final_lr: float | None = None,
        min_lr: float = 1e-9,
        strategy: str = "cosine",
        warmup_steps: int | float | None = None,
        cooldown_steps: int | float | None = None,
        last_epoch: int = -1,
        method: str | None = None,
    ) -> None:
        total_steps = _whole_steps("total_steps", total_steps)
        if total_steps < 1:
            raise ValueError(f"total_steps must be a positive integer (>= 1), got {total_steps}")
        if warmup_steps is None:
            warmup = total_steps // DEFAULT_WARMUP_DIVISOR
        else:
            warmup = _resolve_steps("warmup_steps", warmup_steps, total_steps)
        if cooldown_steps is None:
            cooldown = total_steps // DEFAULT_COOLDOWN_DIVISOR
        else:
            cooldown = _resolve_steps("cooldown_steps", cooldown_steps, total_steps)
        if warmup + cooldown > total_steps:
            raise ValueError(
                f"warmup_steps + cooldown_steps must not exceed total_steps={total_steps}, "
                f"got warmup_steps={warmup} (from {warmup_steps!r}) + cooldown_steps={cooldown} "
                f"(from {cooldown_steps!r}) = {warmup + cooldown}"
            )

        name = strategy.lower() if isinstance(strategy, str) else strategy
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; expected one of: {', '.join(sorted(STRATEGIES))}")

        if final_lr_ratio is not None and final_lr is not None:
            raise ValueError(
                f"give at most one of final_lr_ratio and final_lr, got final_lr_ratio={final_lr_ratio!r} "
                f"and final_lr={final_lr!r}"
            )
        if final_lr_ratio is None and final_lr is None:
            final_lr_ratio = DEFAULT_FINAL_LR_RATIO
        if final_lr_ratio is not None and not 0.0 <= final_lr_ratio <= 1.0:
            raise ValueError(f"final_lr_ratio must be in [0, 1], got {final_lr_ratio!r}")
        if not 0.0 <= min_lr < math.inf:
            raise ValueError(f"min_lr must be a finite number >= 0, got {min_lr!r}")
        if final_lr is not None:
            if not 0.0 <= final_lr < math.inf:
                raise ValueError(f"final_lr must be a finite number >= 0, got {final_lr!r}")
            # torch keeps a group's first lr as `initial_lr`; read it the same way torch's __init__ will.
            for index, group in enumerate(optimizer.param_groups):
                base_lr = float(group.get("initial_lr", group["lr"]))
                if final_lr > base_lr:
                    raise ValueError(
                        f"final_lr must not exceed the initial lr of any param group, got final_lr={final_lr!r} "
                        f"above param_groups[{index}] initial lr {base_lr!r}; use final_lr_ratio for groups of "
                        "different lrs"
                    )
            min_lr = min(min_lr, final_lr)

        if method is None:
            method = "percentile" if final_lr_ratio is not None else "numerical"
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of: {', '.join(METHODS)}")

        # Everything `get_lr` reads must exist before torch's __init__, which takes the first step.
        # Only plain numbers and strings are stored, so `state_dict()` survives `torch.load(weights_only=True)`.
        self.total_steps = total_steps
        self.warmup_steps = warmup
        self.cooldown_steps = cooldown
        self.strategy = name
        self.method = method
        self.final_lr_ratio = final_lr_ratio
        self.final_lr = final_lr
        self.min_lr = min_lr
        super().__init__(optimizer, last_epoch)

    @property
    def final_lrs(self) -> list[float]:
        """The lr each param group decays to, in param-group order."""
        if self.final_lr_ratio is not None:
            return [float(base_lr) * self.final_lr_ratio for base_lr in self.base_lrs]
        return [float(self.final_lr)] * len(self.base_lrs)  # type: ignore[arg-type]

    def compute_lr(self, step: int, base_lr: float, final_lr: float) -> float:
        """Compute the lr after `step` calls to `step()` for a group going from `base_lr` to `final_lr`.

        That is the run's `step + 1`-th lr. No state changes.

        Args:
            step: Number of `step()` calls made, at least 0 (torch's `last_epoch`).
            base_lr: The group's initial lr.
            final_lr: The lr the decay ends at.

        Returns:
            The lr, at least `min(min_lr, base_lr)`.

        Raises:
            ValueError: If `step` is negative.

        Examples:
            >>> import torch
            >>> optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
            >>> scheduler = LRScheduler(optimizer, total_steps=100, strategy="cosine", method="numerical")
            >>> scheduler.compute_lr(49, base_lr=2.0, final_lr=0.0)
            1.0
            >>> scheduler.compute_lr(500, base_lr=2.0, final_lr=0.5)
            1e-09
        """
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        position = step + 1
        total = self.total_steps
        ratio = 1.0 - STRATEGIES[self.strategy](min(position / total, 1.0))
        lr = METHODS[self.method](base_lr, final_lr, ratio)
        floor = min(self.min_lr, base_lr)
        cooldown_start = total - self.cooldown_steps
        if position < self.warmup_steps:
            lr = floor + (lr - floor) * (position / self.warmup_steps)
        elif self.cooldown_steps > 0 and position > cooldown_start:
            # Past total_steps the ratio would turn negative; the lr holds at the floor instead.
            remaining = max(1.0 - (position - cooldown_start) / self.cooldown_steps, 0.0)
            lr = floor + (lr - floor) * remaining
        return max(lr, floor)

    def get_lr_at(self, step: int) -> list[float]:
        """Compute the lr of every param group after `step` calls to `step()`, without changing any state.

        Args:
            step: Number of `step()` calls made, at least 0; `get_lr_at(0)` is the lr right after construction.

        Returns:
            One lr per param group, in param-group order.
        """
        return [
            self.compute_lr(step, float(base_lr), final_lr)
            for base_lr, final_lr in zip(self.base_lrs, self.final_lrs, strict=True)
        ]

    def get_lr(self) -> list[float]:  # type: ignore[override]
        """Compute the lrs for the current step (`last_epoch`); torch's `step()` calls this.

        Returns:
            One lr per param group, in param-group order.
        """
        return self.get_lr_at(self.last_epoch)

    # torch's step(epoch) uses this when present; the schedule is closed-form anyway.
    _get_closed_form_lr = get_lr

    def __repr__(self) -> str:
        final = f"final_lr_ratio={self.final_lr_ratio}" if self.final_lr is None else f"final_lr={self.final_lr}"
        return (
            f"{self.__class__.__name__}({self.strategy!r}, method={self.method!r}, {final}, "
            f"total_steps={self.total_steps}, warmup_steps={self.warmup_steps}, "
            f"cooldown_steps={self.cooldown_steps}, min_lr={self.min_lr})"
        )


def _whole_steps(name: str, value: int | float) -> int:
    # bool is an int subclass, but `warmup_steps=True` is surely a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be an int or a float, got {type(value).__name__} {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{name} must be a whole number of steps, got {value!r}")
        value = int(value)
    return value


def _resolve_steps(name: str, value: int | float, total_steps: int) -> int:
    expected = f"{name} must be a fraction of total_steps in (0, 1) or a whole number of steps >= 0, got {value!r}"
    if isinstance(value, float) and 0.0 < value < 1.0:
        return round(value * total_steps)
    if isinstance(value, float) and not (value >= 0 and value.is_integer()):
        raise ValueError(expected)
    steps = _whole_steps(name, value)
    if steps < 0:
        raise ValueError(expected)
    return steps
