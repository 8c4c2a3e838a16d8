"""`danling.optim.LRScheduler` against the documented formulas, written out here independently of the implementation.

The k-th lr of a run (k = 1 right after construction, one more per `scheduler.step()`) has progress
`p = min(k / total, 1)` and strategy ratio `r(p)`; the scheduled lr is `lr * (final / lr) ** r` ("percentile") or
`(1 - r) * (lr - final) + final` ("numerical"); warmup (`k < warmup`) and cooldown (`k > total - cooldown`) ramp
linearly between `min_lr` and the scheduled lr; nothing is below `min_lr`.
"""

from __future__ import annotations

import io
import math

import pytest
import torch

from danling.optim import STRATEGIES, LRScheduler

# Any warning (say, torch complaining about step order) is a failure here.
pytestmark = pytest.mark.filterwarnings("error")

TOTAL = 100
BASE = 2.0
RATIO = 0.01
FINAL = BASE * RATIO

# The strategies' ratios: 0 at the start, 1 at the end for the decaying ones.
EXP_RATE = math.log(1000.0)
RATIOS = {
    "constant": lambda p: 0.0,
    "linear": lambda p: p,
    "cosine": lambda p: (1 - math.cos(math.pi * p)) / 2,
    "polynomial": lambda p: 1 - (1 - p) ** 2,
    "sqrt": lambda p: math.sqrt(p),
    "log": lambda p: math.log(1 + (math.e - 1) * p),
    "exponential": lambda p: 1 - (math.exp(-EXP_RATE * p) - math.exp(-EXP_RATE)) / (1 - math.exp(-EXP_RATE)),
}


def expected_lr(
    k: int,
    *,
    strategy: str,
    method: str,
    lr: float = BASE,
    final: float = FINAL,
    total: int = TOTAL,
    warmup: int = 0,
    cooldown: int = 0,
    min_lr: float = 0.0,
) -> float:
    """The k-th lr of a run, from the documented formulas."""
    ratio = RATIOS[strategy](min(k / total, 1.0))
    scheduled = lr * (final / lr) ** ratio if method == "percentile" else (1 - ratio) * (lr - final) + final
    if k < warmup:
        scheduled = min_lr + (scheduled - min_lr) * k / warmup
    elif cooldown and k > total - cooldown:
        scheduled = min_lr + (scheduled - min_lr) * max(0.0, 1 - (k - (total - cooldown)) / cooldown)
    return max(scheduled, min_lr)


def make_optimizer(*lrs: float) -> torch.optim.Optimizer:
    """An SGD optimizer with one single-parameter group per lr."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups)


def trace(scheduler: LRScheduler, steps: int) -> list[list[float]]:
    """The optimizer's lrs right after construction and after each of `steps` optimizer+scheduler steps.

    Entry `i` is the run's `(i + 1)`-th lr: the one the `(i + 1)`-th optimizer step uses.
    """
    optimizer = scheduler.optimizer
    lrs = [[group["lr"] for group in optimizer.param_groups]]
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        lrs.append([group["lr"] for group in optimizer.param_groups])
    return lrs


def single(scheduler: LRScheduler, steps: int) -> list[float]:
    return [lr for (lr,) in trace(scheduler, steps)]


def test_every_registered_strategy_has_a_reference_ratio():
    assert set(STRATEGIES) == set(RATIOS)


def test_documented_constant_example_on_lr_1():
    scheduler = LRScheduler(make_optimizer(1.0), total_steps=100, strategy="constant", min_lr=0.0)
    lrs = single(scheduler, 100)
    # Written out by hand: warmup over k = 1..4, flat until k = 80, cooldown to 0 at k = 100.
    expected = [0.2, 0.4, 0.6, 0.8] + [1.0] * 76 + [1.0 - 0.05 * j for j in range(1, 21)]
    assert len(expected) == 100
    assert lrs[:100] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert lrs[:5] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert lrs[79:82] == [1.0, 0.95, 0.9]
    assert lrs[99] == 0.0


def test_documented_constant_example_with_the_default_min_lr():
    scheduler = LRScheduler(make_optimizer(1.0), total_steps=100, strategy="constant")
    lrs = single(scheduler, 100)
    expected = [0.2, 0.4, 0.6, 0.8] + [1.0] * 76 + [1.0 - 0.05 * j for j in range(1, 21)]
    assert lrs[:100] == pytest.approx(expected, abs=1e-8)
    assert lrs[99] == 1e-9, "the default min_lr floors the end of the cooldown"


@pytest.mark.parametrize("method", ["percentile", "numerical"])
@pytest.mark.parametrize("strategy", ["constant", "linear", "cosine"])
def test_curve_with_default_warmup_and_cooldown_matches_formula(strategy, method):
    scheduler = LRScheduler(
        make_optimizer(BASE), total_steps=TOTAL, final_lr_ratio=RATIO, strategy=strategy, method=method, min_lr=0.0
    )
    lrs = single(scheduler, TOTAL + 10)
    for index, lr in enumerate(lrs):
        k = index + 1
        want = expected_lr(k, strategy=strategy, method=method, warmup=5, cooldown=20)
        assert lr == pytest.approx(want, rel=1e-12, abs=1e-15), k
        assert scheduler.get_lr_at(index)[0] == lr


@pytest.mark.parametrize("method", ["percentile", "numerical"])
@pytest.mark.parametrize("strategy", sorted(RATIOS))
def test_decay_without_warmup_or_cooldown_matches_formula(strategy, method):
    scheduler = LRScheduler(
        make_optimizer(BASE),
        total_steps=TOTAL,
        final_lr_ratio=RATIO,
        strategy=strategy,
        method=method,
        warmup_steps=0,
        cooldown_steps=0,
        min_lr=0.0,
    )
    lrs = single(scheduler, TOTAL + 5)
    for index in (0, 1, 9, 24, 49, 72, 98, 99, 100, 104):
        want = expected_lr(index + 1, strategy=strategy, method=method)
        assert lrs[index] == pytest.approx(want, rel=1e-12, abs=1e-15), index


@pytest.mark.parametrize("strategy", ["linear", "cosine", "polynomial", "sqrt", "log", "exponential"])
def test_decaying_strategies_reach_the_final_lr_at_total_steps(strategy):
    scheduler = LRScheduler(
        make_optimizer(BASE),
        total_steps=TOTAL,
        final_lr_ratio=RATIO,
        strategy=strategy,
        warmup_steps=0,
        cooldown_steps=0,
    )
    lrs = single(scheduler, TOTAL + 3)
    assert lrs[TOTAL - 1] == pytest.approx(FINAL, rel=1e-12)
    assert lrs[TOTAL:] == [lrs[TOTAL - 1]] * 4, "past total_steps the lr holds"


def test_percentile_falls_by_an_equal_factor_per_step():
    scheduler = LRScheduler(
        make_optimizer(1.0), total_steps=8, final_lr_ratio=1e-8, strategy="linear", cooldown_steps=0
    )
    lrs = single(scheduler, 7)
    assert lrs == pytest.approx([10.0**-k for k in range(1, 9)], rel=1e-12)


def test_numerical_falls_by_an_equal_amount_per_step():
    scheduler = LRScheduler(make_optimizer(1.0), total_steps=8, final_lr=0.2, strategy="linear", cooldown_steps=0)
    assert scheduler.method == "numerical"
    lrs = single(scheduler, 7)
    assert lrs == pytest.approx([1.0 - 0.1 * k for k in range(1, 9)], rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "method", "ratio"),
    [
        ({}, "percentile", 1e-3),
        ({"final_lr_ratio": 0.1}, "percentile", 0.1),
        ({"final_lr": 0.01}, "numerical", None),
        ({"final_lr": 0.01, "method": "percentile"}, "percentile", None),
        ({"final_lr_ratio": 0.1, "method": "numerical"}, "numerical", 0.1),
    ],
)
def test_default_method_and_final_lr_ratio(kwargs, method, ratio):
    scheduler = LRScheduler(make_optimizer(BASE), total_steps=TOTAL, **kwargs)
    assert scheduler.method == method
    assert scheduler.final_lr_ratio == ratio


def test_default_final_lr_is_a_thousandth_of_the_initial_lr():
    scheduler = LRScheduler(make_optimizer(BASE), total_steps=TOTAL, warmup_steps=0, cooldown_steps=0, min_lr=0.0)
    assert single(scheduler, TOTAL)[TOTAL - 1] == pytest.approx(BASE * 1e-3, rel=1e-12)


@pytest.mark.parametrize(("total", "warmup", "cooldown"), [(1000, 50, 200), (100, 5, 20), (19, 0, 3), (4, 0, 0)])
def test_default_warmup_is_a_twentieth_and_cooldown_a_fifth(total, warmup, cooldown):
    scheduler = LRScheduler(make_optimizer(BASE), total_steps=total)
    assert (scheduler.warmup_steps, scheduler.cooldown_steps) == (warmup, cooldown)


def test_zero_disables_warmup_and_cooldown():
    scheduler = LRScheduler(
        make_optimizer(1.0), total_steps=10, strategy="constant", warmup_steps=0, cooldown_steps=0, min_lr=0.0
    )
    assert single(scheduler, 12) == [1.0] * 13


def test_first_lr_is_the_first_step_of_warmup():
    scheduler = LRScheduler(
        make_optimizer(BASE), total_steps=TOTAL, warmup_steps=10, strategy="constant", cooldown_steps=0, min_lr=0.0
    )
    lrs = single(scheduler, 12)
    assert lrs[:10] == pytest.approx([BASE * k / 10 for k in range(1, 11)], rel=1e-12)
    assert lrs[9:] == [BASE] * 4


def test_warmup_starts_from_min_lr():
    min_lr = 0.1
    scheduler = LRScheduler(
        make_optimizer(1.1), total_steps=50, warmup_steps=4, cooldown_steps=0, strategy="constant", min_lr=min_lr
    )
    assert single(scheduler, 4) == pytest.approx([0.35, 0.6, 0.85, 1.1, 1.1], rel=1e-12)


def test_final_lr_below_min_lr_lowers_min_lr():
    scheduler = LRScheduler(make_optimizer(1.0), total_steps=10, final_lr=0.0, min_lr=1e-3, strategy="linear")
    assert scheduler.min_lr == 0.0
    assert single(scheduler, 10)[9:] == [0.0, 0.0]


def test_strategy_name_is_case_insensitive():
    upper = LRScheduler(make_optimizer(BASE), total_steps=TOTAL, strategy="Cosine")
    lower = LRScheduler(make_optimizer(BASE), total_steps=TOTAL, strategy="cosine")
    assert upper.strategy == "cosine"
    assert [upper.get_lr_at(s) for s in range(TOTAL + 1)] == [lower.get_lr_at(s) for s in range(TOTAL + 1)]


def test_custom_strategy_registered_in_table(monkeypatch):
    monkeypatch.setitem(STRATEGIES, "half", lambda p: 0.5)
    scheduler = LRScheduler(
        make_optimizer(1.0), total_steps=10, final_lr=0.0, min_lr=0.0, strategy="half", warmup_steps=0
    )
    assert scheduler.get_lr_at(3) == [0.5]


@pytest.mark.parametrize(("fraction", "steps"), [(0.1, 10), (0.25, 25), (0.29, 29), (0.5, 50)])
def test_fractional_warmup_and_cooldown_equal_step_counts(fraction, steps):
    by_fraction = LRScheduler(
        make_optimizer(BASE), total_steps=TOTAL, warmup_steps=fraction, cooldown_steps=fraction / 2
    )
    by_steps = LRScheduler(
        make_optimizer(BASE), total_steps=TOTAL, warmup_steps=steps, cooldown_steps=round(TOTAL * fraction / 2)
    )
    assert by_fraction.warmup_steps == steps
    assert trace(by_fraction, TOTAL + 5) == trace(by_steps, TOTAL + 5)


def test_whole_valued_floats_count_steps():
    scheduler = LRScheduler(make_optimizer(BASE), total_steps=1e2, warmup_steps=5.0, cooldown_steps=1.0)
    assert (scheduler.total_steps, scheduler.warmup_steps, scheduler.cooldown_steps) == (100, 5, 1)


@pytest.mark.parametrize("method", ["percentile", "numerical"])
def test_param_groups_decay_to_their_own_final_lr(method):
    lrs = (1.0, 0.01, 3e-4)
    scheduler = LRScheduler(
        make_optimizer(*lrs), total_steps=50, final_lr_ratio=0.05, min_lr=0.0, cooldown_steps=0, method=method
    )
    assert scheduler.final_lrs == pytest.approx([lr * 0.05 for lr in lrs])
    history = trace(scheduler, 50)
    assert history[49] == pytest.approx([lr * 0.05 for lr in lrs], rel=1e-12)
    # Every group follows the same shape, scaled by its own initial lr.
    for step in (0, 1, 20, 37):
        assert history[step] == pytest.approx([lr * history[step][0] for lr in lrs], rel=1e-12)


def test_absolute_final_lr_is_shared_by_groups():
    scheduler = LRScheduler(
        make_optimizer(1.0, 0.1), total_steps=20, final_lr=0.01, strategy="linear", warmup_steps=0, cooldown_steps=0
    )
    assert trace(scheduler, 20)[19] == pytest.approx([0.01, 0.01])
    # k = 10: half way, linearly.
    assert scheduler.get_lr_at(9) == pytest.approx([(1.0 + 0.01) / 2, (0.1 + 0.01) / 2])


def test_min_lr_floors_every_lr():
    min_lr = 1e-3
    scheduler = LRScheduler(make_optimizer(1.0), total_steps=20, final_lr_ratio=0.0, min_lr=min_lr, strategy="cosine")
    lrs = single(scheduler, 25)
    assert min(lrs) == min_lr
    assert lrs[19:] == [min_lr] * 7


@pytest.mark.parametrize("method", ["percentile", "numerical"])
def test_frozen_group_at_lr_zero_stays_at_zero(method):
    scheduler = LRScheduler(make_optimizer(1.0, 0.0), total_steps=10, warmup_steps=2, method=method, min_lr=1e-6)
    assert all(lrs[1] == 0.0 for lrs in trace(scheduler, 12))


def test_get_lr_at_does_not_change_state():
    optimizer = make_optimizer(BASE)
    scheduler = LRScheduler(optimizer, total_steps=TOTAL, warmup_steps=5)
    before = (scheduler.last_epoch, scheduler.get_last_lr(), optimizer.param_groups[0]["lr"])
    scheduler.get_lr_at(50)
    scheduler.compute_lr(70, base_lr=1.0, final_lr=0.0)
    assert (scheduler.last_epoch, scheduler.get_last_lr(), optimizer.param_groups[0]["lr"]) == before


def test_compute_lr_rejects_negative_step():
    scheduler = LRScheduler(make_optimizer(BASE), total_steps=TOTAL)
    with pytest.raises(ValueError, match="-3"):
        scheduler.compute_lr(-3, base_lr=1.0, final_lr=0.0)


def build(optimizer: torch.optim.Optimizer, **kwargs) -> LRScheduler:
    return LRScheduler(optimizer, total_steps=60, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"warmup_steps": 0.1, "cooldown_steps": 10, "final_lr_ratio": 0.01, "method": "numerical"}],
    ids=["defaults", "explicit"],
)
@pytest.mark.parametrize("stop", [0, 1, 2, 5, 6, 37, 47, 50, 59, 60, 70])
def test_resume_from_state_dict_matches_uninterrupted_run(stop, kwargs):
    model = torch.nn.Linear(3, 2)

    def make() -> torch.optim.Optimizer:
        return torch.optim.AdamW([{"params": model.weight, "lr": 1e-2}, {"params": model.bias, "lr": 1e-3}])

    reference = trace(build(make(), **kwargs), 80)

    scheduler = build(make(), **kwargs)
    interrupted = trace(scheduler, stop)
    buffer = io.BytesIO()
    torch.save({"optimizer": scheduler.optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    optimizer = make()
    resumed = build(optimizer, **kwargs)
    optimizer.load_state_dict(checkpoint["optimizer"])
    resumed.load_state_dict(checkpoint["scheduler"])
    assert resumed.last_epoch == stop
    assert resumed.get_last_lr() == reference[stop]
    assert interrupted[1:] + trace(resumed, 80 - stop)[1:] == reference[1:]


def test_state_dict_holds_the_schedule_settings():
    state = build(make_optimizer(BASE), warmup_steps=0.1, cooldown_steps=10, strategy="linear").state_dict()
    assert state["total_steps"] == 60
    assert state["warmup_steps"] == 6
    assert state["cooldown_steps"] == 10
    assert state["strategy"] == "linear"
    assert state["method"] == "percentile"
    assert state["final_lr_ratio"] == 1e-3
    assert "optimizer" not in state


def test_repr_names_the_settings():
    text = repr(LRScheduler(make_optimizer(BASE), total_steps=TOTAL, strategy="linear"))
    for fragment in ("'linear'", "method='percentile'", "final_lr_ratio=0.001", "warmup_steps=5", "cooldown_steps=20"):
        assert fragment in text


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"total_steps": 0}, ["total_steps", "0", ">= 1"]),
        ({"total_steps": -5}, ["total_steps", "-5"]),
        ({"total_steps": 2.5}, ["total_steps", "2.5"]),
        ({"warmup_steps": -1}, ["warmup_steps", "-1", "(0, 1)"]),
        ({"warmup_steps": 1.5}, ["warmup_steps", "1.5"]),
        ({"warmup_steps": float("nan")}, ["warmup_steps", "nan"]),
        ({"cooldown_steps": -0.5}, ["cooldown_steps", "-0.5"]),
        ({"warmup_steps": 60, "cooldown_steps": 50}, ["warmup_steps=60", "cooldown_steps=50", "110", "100"]),
        ({"warmup_steps": 0.6, "cooldown_steps": 0.5}, ["0.6", "0.5", "total_steps=100"]),
        ({"warmup_steps": 90}, ["warmup_steps=90", "cooldown_steps=20", "from None"]),
        ({"final_lr_ratio": 1.5}, ["final_lr_ratio", "1.5", "[0, 1]"]),
        ({"final_lr_ratio": -0.1}, ["final_lr_ratio", "-0.1"]),
        ({"final_lr_ratio": 0.1, "final_lr": 0.01}, ["final_lr_ratio=0.1", "final_lr=0.01"]),
        ({"final_lr": -1.0}, ["final_lr", "-1.0", ">= 0"]),
        ({"final_lr": 5.0}, ["final_lr=5.0", "2.0"]),
        ({"min_lr": -1e-3}, ["min_lr", "-0.001", ">= 0"]),
        ({"strategy": "cosin"}, ["'cosin'", "cosine", "linear", "constant"]),
        ({"method": "geometric"}, ["'geometric'", "percentile", "numerical"]),
    ],
)
def test_bad_arguments_name_the_value(kwargs, fragments):
    kwargs = {"total_steps": TOTAL, **kwargs}
    with pytest.raises(ValueError) as info:
        LRScheduler(make_optimizer(BASE), **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"warmup_steps": "10"}, "'10'"), ({"total_steps": None}, "None"), ({"cooldown_steps": True}, "True")],
)
def test_non_numeric_step_counts_raise_type_error(kwargs, fragment):
    kwargs = {"total_steps": TOTAL, **kwargs}
    with pytest.raises(TypeError) as info:
        LRScheduler(make_optimizer(BASE), **kwargs)
    assert fragment in str(info.value)
