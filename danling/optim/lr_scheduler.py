"""A learning-rate scheduler with built-in warmup, a pluggable decay strategy, and cooldown.

The schedule over `total_steps` optimizer steps has three phases:

1. **warmup** (`[0, warmup_steps)`): the lr rises linearly from (about) zero to the param group's base lr.
2. **decay** (`[warmup_steps, total_steps - cooldown_steps]`): the lr follows a decay strategy from the base lr
   towards the final lr.
   The strategy's curve is laid over `[warmup_steps, total_steps]` and cut short where the cooldown begins.
3. **cooldown** (`[total_steps - cooldown_steps, total_steps]`): the lr falls linearly from wherever the decay left
   it to the final lr.

Every lr is floored at `min_lr`, and steps past `total_steps` hold the lr of step `total_steps`.

A strategy is a function from progress `p` in `[0, 1]` to a factor `f(p)`, with `f(0) == 1` and, for decaying
strategies, `f(1) == 0`.
The lr during decay is `base_lr * f(p) + final_lr * (1 - f(p))`.
Strategies are looked up by name in [`STRATEGIES`][danling.optim.lr_scheduler.STRATEGIES]; add an entry there to
make a new one available by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer, lr_scheduler

__all__ = [
    "DEFAULT_FINAL_LR_RATIO",
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
"""`final_lr / base_lr` when neither `final_lr_ratio` nor `final_lr` is given."""


def constant(progress: float) -> float:
    """Hold the base lr: the factor is 1 everywhere.

    Combine with `cooldown_steps` for a warmup-stable-decay schedule.

    Args:
        progress: Fraction of the decay phase done, in `[0, 1]`.

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
        progress: Fraction of the decay phase done, in `[0, 1]`.

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
        progress: Fraction of the decay phase done, in `[0, 1]`.

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
        progress: Fraction of the decay phase done, in `[0, 1]`.
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
        progress: Fraction of the decay phase done, in `[0, 1]`.

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
        progress: Fraction of the decay phase done, in `[0, 1]`.

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
    The default `rate = ln(1000)` makes the curve close to a geometric fall by three orders of magnitude,
    matching the default `final_lr_ratio` of `1e-3`.

    Args:
        progress: Fraction of the decay phase done, in `[0, 1]`.
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

Keys are lowercase; [`LRScheduler`][danling.optim.LRScheduler] lowercases the name it is given before looking it up.
"""


class LRScheduler(lr_scheduler.LRScheduler):
    """Warmup, then a decay strategy from each param group's base lr to its final lr, then cooldown.

    Call `step()` once after every `optimizer.step()`.
    After `k` calls the optimizer's lrs are those of step `k`: step 0 (right after construction) is the start of
    warmup and step `total_steps` is the end of the schedule.
    Stepping further holds the lrs of step `total_steps`.

    The lr is a closed-form function of the step count (see
    [`compute_lr`][danling.optim.LRScheduler.compute_lr]), so restoring
    `state_dict` into a scheduler built the same way resumes the
    schedule exactly.

    Args:
        optimizer: The optimizer whose param groups are scheduled.
            Each group's base lr is its `initial_lr` if set (by an earlier scheduler), else its `lr`.
        total_steps: Length of the schedule in optimizer steps; at least 1.
            A whole-valued float (`1e4`, as YAML reads it) is accepted.
        final_lr_ratio: Final lr of each group as a fraction of its base lr, in `[0, 1]`.
            Defaults to [`DEFAULT_FINAL_LR_RATIO`][danling.optim.lr_scheduler.DEFAULT_FINAL_LR_RATIO] when
            `final_lr` is not given either.
        final_lr: Final lr shared by all groups, at least 0 and at most the smallest base lr.
            Mutually exclusive with `final_lr_ratio`.
        min_lr: Floor on every lr, warmup included, so that no step runs at lr 0.
            A group whose base lr is below `min_lr` (say, a frozen group at lr 0) is floored at its base lr instead.
        strategy: Name of the decay strategy, a key of
            [`STRATEGIES`][danling.optim.lr_scheduler.STRATEGIES] (case-insensitive).
        warmup_steps: Length of the linear warmup: a float in `(0, 1)` is a fraction of `total_steps` (rounded to the
            nearest step); a whole number (int, or whole-valued float such as `1.0`) is a count of steps.
        cooldown_steps: Length of the linear cooldown at the end, read as `warmup_steps` is.
        last_epoch: Index of the last step taken, `-1` for a fresh schedule (torch's convention).

    Raises:
        ValueError: If an argument is out of range; the message names the argument, its value and the valid range.
        TypeError: If a step count is not a number.

    Examples:
        >>> import torch
        >>> optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
        >>> scheduler = LRScheduler(
        ...     optimizer, total_steps=10, warmup_steps=2, strategy="linear", final_lr_ratio=0.0, min_lr=0.0
        ... )
        >>> [scheduler.get_lr_at(step)[0] for step in range(12)]
        [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0, 0.0]
        >>> for _ in range(3):
        ...     optimizer.step()
        ...     scheduler.step()
        >>> scheduler.get_last_lr()
        [0.875]

        Fractions of `total_steps` work for warmup and cooldown; a constant strategy with a cooldown gives
        warmup-stable-decay:

        >>> optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
        >>> scheduler = LRScheduler(
        ...     optimizer, total_steps=10, warmup_steps=0.2, cooldown_steps=0.4, strategy="constant", final_lr=0.2
        ... )
        >>> scheduler.warmup_steps, scheduler.cooldown_steps
        (2, 4)
        >>> [round(scheduler.get_lr_at(step)[0], 3) for step in range(11)]
        [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2]
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        final_lr_ratio: float | None = None,
        final_lr: float | None = None,
        min_lr: float = 1e-9,
        strategy: str = "cosine",
        warmup_steps: int | float = 0,
        cooldown_steps: int | float = 0,
        last_epoch: int = -1,
    ) -> None:
        total_steps = _whole_steps("total_steps", total_steps)
        if total_steps < 1:
            raise ValueError(f"total_steps must be a positive integer (>= 1), got {total_steps}")
        warmup = _resolve_steps("warmup_steps", warmup_steps, total_steps)
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
        if final_lr is not None:
            if not 0.0 <= final_lr < math.inf:
                raise ValueError(f"final_lr must be a finite number >= 0, got {final_lr!r}")
            # torch keeps a group's first lr as `initial_lr`; read it the same way torch's __init__ will.
            for index, group in enumerate(optimizer.param_groups):
                base_lr = float(group.get("initial_lr", group["lr"]))
                if final_lr > base_lr:
                    raise ValueError(
                        f"final_lr must not exceed the base lr of any param group, got final_lr={final_lr!r} "
                        f"above param_groups[{index}] base lr {base_lr!r}; use final_lr_ratio for groups of "
                        "different lrs"
                    )
        if not 0.0 <= min_lr < math.inf:
            raise ValueError(f"min_lr must be a finite number >= 0, got {min_lr!r}")

        # Everything `get_lr` reads must exist before torch's __init__, which takes the first step.
        # Only plain numbers and strings are stored, so `state_dict()` survives `torch.load(weights_only=True)`.
        self.total_steps = total_steps
        self.warmup_steps = warmup
        self.cooldown_steps = cooldown
        self.strategy = name
        self.final_lr_ratio = final_lr_ratio
        self.final_lr = final_lr
        self.min_lr = min_lr
        super().__init__(optimizer, last_epoch)

    @property
    def final_lrs(self) -> list[float]:
        """The lr each param group ends at, in param-group order."""
        if self.final_lr_ratio is not None:
            return [float(base_lr) * self.final_lr_ratio for base_lr in self.base_lrs]
        return [float(self.final_lr)] * len(self.base_lrs)  # type: ignore[arg-type]

    def compute_lr(self, step: int, base_lr: float, final_lr: float) -> float:
        """Compute the lr at `step` for a group going from `base_lr` to `final_lr`, without changing any state.

        Args:
            step: Number of optimizer steps taken, at least 0; steps past `total_steps` count as `total_steps`.
            base_lr: The lr at the end of warmup.
            final_lr: The lr at `total_steps`.

        Returns:
            The lr, floored at `min(min_lr, base_lr)`.

        Raises:
            ValueError: If `step` is negative.

        Examples:
            >>> import torch
            >>> optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
            >>> scheduler = LRScheduler(optimizer, total_steps=100, strategy="cosine")
            >>> scheduler.compute_lr(50, base_lr=2.0, final_lr=0.0)
            1.0
            >>> scheduler.compute_lr(500, base_lr=2.0, final_lr=0.5)
            0.5
        """
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        step = min(step, self.total_steps)
        floor = min(self.min_lr, base_lr)
        if step < self.warmup_steps:
            return max(base_lr * step / self.warmup_steps, floor)
        cooldown_start = self.total_steps - self.cooldown_steps
        if step <= cooldown_start:
            return max(self._decay(step, base_lr, final_lr), floor)
        start_lr = self._decay(cooldown_start, base_lr, final_lr)
        done = (step - cooldown_start) / self.cooldown_steps
        return max(start_lr * (1.0 - done) + final_lr * done, floor)

    def get_lr_at(self, step: int) -> list[float]:
        """Compute the lr of every param group at `step`, without changing any state.

        Args:
            step: Number of optimizer steps taken, at least 0; steps past `total_steps` count as `total_steps`.

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

    def _decay(self, step: int, base_lr: float, final_lr: float) -> float:
        span = self.total_steps - self.warmup_steps
        # span is 0 only when warmup fills the whole run, leaving nothing to decay over: hold the base lr.
        progress = (step - self.warmup_steps) / span if span > 0 else 0.0
        factor = STRATEGIES[self.strategy](progress)
        # Weighted this way rather than `final + (base - final) * f`, the ends are exact: f == 1 gives base_lr.
        return base_lr * factor + final_lr * (1.0 - factor)


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
