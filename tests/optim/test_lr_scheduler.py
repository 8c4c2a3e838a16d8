"""`danling.optim.LRScheduler` against closed-form curves written out here, independently of the implementation."""

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
RATIO = 0.1
FINAL = BASE * RATIO


def make_optimizer(*lrs: float) -> torch.optim.Optimizer:
    """An SGD optimizer with one single-parameter group per lr."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups)


def trace(scheduler: LRScheduler, steps: int) -> list[list[float]]:
    """The optimizer's lrs right after construction and after each of `steps` optimizer+scheduler steps."""
    optimizer = scheduler.optimizer
    lrs = [[group["lr"] for group in optimizer.param_groups]]
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        lrs.append([group["lr"] for group in optimizer.param_groups])
    return lrs


def interpolate(factor: float, base: float = BASE, final: float = FINAL) -> float:
    return final + (base - final) * factor


EXP_RATE = math.log(1000.0)
CURVES = {
    "constant": lambda p: BASE,
    "linear": lambda p: interpolate(1 - p),
    "cosine": lambda p: interpolate((1 + math.cos(math.pi * p)) / 2),
    "polynomial": lambda p: interpolate((1 - p) ** 2),
    "sqrt": lambda p: interpolate(1 - math.sqrt(p)),
    "log": lambda p: interpolate(1 - math.log(1 + (math.e - 1) * p)),
    "exponential": lambda p: interpolate((math.exp(-EXP_RATE * p) - math.exp(-EXP_RATE)) / (1 - math.exp(-EXP_RATE))),
}


def test_every_registered_strategy_has_a_reference_curve():
    assert set(STRATEGIES) == set(CURVES)


@pytest.mark.parametrize("strategy", sorted(CURVES))
def test_strategy_curve_matches_closed_form(strategy):
    scheduler = LRScheduler(
        make_optimizer(BASE), total_steps=TOTAL, final_lr_ratio=RATIO, min_lr=0.0, strategy=strategy
    )
    lrs = trace(scheduler, TOTAL)
    for step in (0, 1, 10, 25, 50, 73, 99, 100):
        assert lrs[step][0] == pytest.approx(CURVES[strategy](step / TOTAL), rel=1e-12, abs=1e-15), step
        assert scheduler.get_lr_at(step)[0] == lrs[step][0]


@pytest.mark.parametrize("strategy", ["linear", "cosine", "polynomial", "sqrt", "log", "exponential"])
def test_decaying_strategies_end_exactly_at_final_lr(strategy):
    scheduler = LRScheduler(
        make_optimizer(BASE), total_steps=TOTAL, final_lr_ratio=RATIO, min_lr=0.0, strategy=strategy
    )
    assert trace(scheduler, TOTAL)[-1][0] == pytest.approx(FINAL, rel=1e-15)


def test_strategy_name_is_case_insensitive():
    upper = LRScheduler(make_optimizer(BASE), total_steps=TOTAL, strategy="Cosine")
    lower = LRScheduler(make_optimizer(BASE), total_steps=TOTAL, strategy="cosine")
    assert upper.strategy == "cosine"
    assert [upper.get_lr_at(s) for s in range(TOTAL + 1)] == [lower.get_lr_at(s) for s in range(TOTAL + 1)]


def test_custom_strategy_registered_in_table(monkeypatch):
    monkeypatch.setitem(STRATEGIES, "half", lambda p: 0.5)
    scheduler = LRScheduler(make_optimizer(1.0), total_steps=10, final_lr=0.0, min_lr=0.0, strategy="half")
    assert scheduler.get_lr_at(3) == [0.5]


def test_default_final_lr_ratio_is_one_thousandth():
    scheduler = LRScheduler(make_optimizer(BASE), total_steps=TOTAL, min_lr=0.0)
    assert trace(scheduler, TOTAL)[-1][0] == pytest.approx(BASE * 1e-3)


def test_warmup_is_linear_and_reaches_base_lr_exactly():
    warmup = 10
    scheduler = LRScheduler(
        make_optimizer(BASE), total_steps=TOTAL, warmup_steps=warmup, final_lr_ratio=RATIO, strategy="cosine"
    )
    lrs = [lr for (lr,) in trace(scheduler, TOTAL)]
    assert lrs[0] == 1e-9, "step 0 is floored at min_lr, not 0"
    for step in range(1, warmup):
        assert lrs[step] == pytest.approx(BASE * step / warmup, rel=1e-12)
    assert lrs[warmup] == BASE
    # After warmup, the cosine runs over the remaining TOTAL - warmup steps.
    for step in (warmup + 1, 40, 77, TOTAL):
        progress = (step - warmup) / (TOTAL - warmup)
        assert lrs[step] == pytest.approx(CURVES["cosine"](progress), rel=1e-12)


def test_cooldown_is_linear_from_truncated_decay_to_final_lr():
    warmup, cooldown = 10, 20
    scheduler = LRScheduler(
        make_optimizer(BASE),
        total_steps=TOTAL,
        warmup_steps=warmup,
        cooldown_steps=cooldown,
        final_lr_ratio=RATIO,
        strategy="linear",
    )
    lrs = [lr for (lr,) in trace(scheduler, TOTAL)]
    start = TOTAL - cooldown
    # The linear decay is laid over [warmup, TOTAL] and cut at the cooldown start.
    start_lr = FINAL + (BASE - FINAL) * (1 - (start - warmup) / (TOTAL - warmup))
    assert lrs[start] == pytest.approx(start_lr, rel=1e-12)
    for step in range(start, TOTAL + 1):
        expected = start_lr + (FINAL - start_lr) * (step - start) / cooldown
        assert lrs[step] == pytest.approx(expected, rel=1e-12), step
    assert lrs[TOTAL] == FINAL


def test_warmup_stable_decay_with_constant_strategy():
    scheduler = LRScheduler(
        make_optimizer(BASE),
        total_steps=TOTAL,
        warmup_steps=10,
        cooldown_steps=30,
        final_lr_ratio=RATIO,
        strategy="constant",
    )
    lrs = [lr for (lr,) in trace(scheduler, TOTAL)]
    assert all(lr == BASE for lr in lrs[10:71])
    assert lrs[85] == pytest.approx(BASE + (FINAL - BASE) * 15 / 30)
    assert lrs[TOTAL] == FINAL


def test_warmup_and_cooldown_filling_the_whole_run():
    scheduler = LRScheduler(
        make_optimizer(BASE), total_steps=10, warmup_steps=4, cooldown_steps=6, final_lr_ratio=RATIO, min_lr=0.0
    )
    lrs = [lr for (lr,) in trace(scheduler, 10)]
    assert lrs[:5] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    assert lrs[4:] == pytest.approx([BASE + (FINAL - BASE) * k / 6 for k in range(7)])


def test_warmup_filling_the_whole_run_then_holds_base_lr():
    scheduler = LRScheduler(make_optimizer(BASE), total_steps=4, warmup_steps=4, min_lr=0.0)
    assert [lr for (lr,) in trace(scheduler, 6)] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0])


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


@pytest.mark.parametrize("strategy", ["cosine", "linear", "exponential"])
def test_param_groups_decay_to_their_own_final_lr(strategy):
    lrs = (1.0, 0.01, 3e-4)
    scheduler = LRScheduler(
        make_optimizer(*lrs), total_steps=50, warmup_steps=5, final_lr_ratio=0.05, min_lr=0.0, strategy=strategy
    )
    assert scheduler.final_lrs == pytest.approx([lr * 0.05 for lr in lrs])
    history = trace(scheduler, 50)
    assert history[5] == list(lrs)
    assert history[50] == pytest.approx([lr * 0.05 for lr in lrs], rel=1e-12)
    # Every group follows the same shape, scaled by its own base lr.
    for step in (2, 20, 37):
        assert history[step] == pytest.approx([lr * history[step][0] for lr in lrs], rel=1e-12)


def test_absolute_final_lr_is_shared_by_groups():
    scheduler = LRScheduler(make_optimizer(1.0, 0.1), total_steps=20, final_lr=0.01, min_lr=0.0, strategy="linear")
    assert trace(scheduler, 20)[-1] == pytest.approx([0.01, 0.01])
    assert scheduler.get_lr_at(10) == pytest.approx([(1.0 + 0.01) / 2, (0.1 + 0.01) / 2])


def test_min_lr_floors_every_lr():
    min_lr = 1e-3
    scheduler = LRScheduler(
        make_optimizer(1.0), total_steps=20, warmup_steps=5, final_lr_ratio=0.0, min_lr=min_lr, strategy="cosine"
    )
    lrs = [lr for (lr,) in trace(scheduler, 25)]
    assert min(lrs) == min_lr
    assert lrs[0] == min_lr
    assert lrs[-1] == min_lr


def test_group_with_base_lr_below_min_lr_is_not_raised():
    scheduler = LRScheduler(make_optimizer(1.0, 0.0), total_steps=10, warmup_steps=2, min_lr=1e-6)
    assert all(lrs[1] == 0.0 for lrs in trace(scheduler, 12))


def test_stepping_past_total_steps_holds_final_lr():
    scheduler = LRScheduler(make_optimizer(BASE), total_steps=10, final_lr_ratio=RATIO, cooldown_steps=2)
    lrs = [lr for (lr,) in trace(scheduler, 40)]
    assert lrs[10:] == [FINAL] * 31
    assert scheduler.last_epoch == 40


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


def build(optimizer: torch.optim.Optimizer) -> LRScheduler:
    return LRScheduler(
        optimizer, total_steps=60, warmup_steps=0.1, cooldown_steps=10, final_lr_ratio=0.01, strategy="cosine"
    )


@pytest.mark.parametrize("stop", [0, 1, 5, 6, 37, 50, 55, 60, 70])
def test_resume_from_state_dict_matches_uninterrupted_run(stop):
    model = torch.nn.Linear(3, 2)

    def make() -> torch.optim.Optimizer:
        return torch.optim.AdamW([{"params": model.weight, "lr": 1e-2}, {"params": model.bias, "lr": 1e-3}])

    reference = trace(build(make()), 80)

    scheduler = build(make())
    interrupted = trace(scheduler, stop)
    buffer = io.BytesIO()
    torch.save({"optimizer": scheduler.optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    optimizer = make()
    resumed = build(optimizer)
    optimizer.load_state_dict(checkpoint["optimizer"])
    resumed.load_state_dict(checkpoint["scheduler"])
    assert resumed.last_epoch == stop
    assert resumed.get_last_lr() == reference[stop]
    assert interrupted[1:] + trace(resumed, 80 - stop)[1:] == reference[1:]


def test_state_dict_holds_the_schedule_settings():
    state = build(make_optimizer(BASE)).state_dict()
    assert state["total_steps"] == 60
    assert state["warmup_steps"] == 6
    assert state["cooldown_steps"] == 10
    assert state["strategy"] == "cosine"
    assert "optimizer" not in state


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
        ({"final_lr_ratio": 1.5}, ["final_lr_ratio", "1.5", "[0, 1]"]),
        ({"final_lr_ratio": -0.1}, ["final_lr_ratio", "-0.1"]),
        ({"final_lr_ratio": 0.1, "final_lr": 0.01}, ["final_lr_ratio=0.1", "final_lr=0.01"]),
        ({"final_lr": -1.0}, ["final_lr", "-1.0", ">= 0"]),
        ({"final_lr": 5.0}, ["final_lr=5.0", "2.0"]),
        ({"min_lr": -1e-3}, ["min_lr", "-0.001", ">= 0"]),
        ({"strategy": "cosin"}, ["'cosin'", "cosine", "linear", "constant"]),
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
