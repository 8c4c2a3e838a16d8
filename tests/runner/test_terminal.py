"""What a person sees while a runner trains: in a terminal, one bar and never a log line on it (issue 12).

A short run (`scripts/terminal_train.py`) is played in a pseudo-terminal, and its bytes are fed to a terminal
emulator (`pyte`), so the assertions are about the screen, as a person would see it after every write, and about
the lines that scrolled off it. Without a terminal the same run must print the step lines and no bar.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pexpect = pytest.importorskip("pexpect", reason="pseudo-terminals need pexpect (the test extra)")
pyte = pytest.importorskip("pyte", reason="the terminal emulator is pyte (the test extra)")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")

SCRIPT = Path(__file__).parent / "scripts" / "terminal_train.py"
COLUMNS, ROWS = 100, 24
TRAIN_BATCHES, VAL_BATCHES, EPOCHS = 12, 13, 3

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
BAR_MARK = re.compile(r"\d+%\|")  # tqdm's percentage and the left edge of the bar
# A line that is a bar and nothing else: label, percentage, bar, count, times and rate, postfix.
WHOLE_BAR = re.compile(
    r"^(?P<label>.*?): +\d+%\|[^|]*\| *(?P<n>\d+)/(?P<total>\d+)"
    r" \[[0-9:]+<[0-9:?]+, [^,\]]+(?:, (?P<postfix>[^\]]*))?\]$"
)
# The step lines of run.log: "training on train [4/12]\t..."
STEP_LINE = re.compile(r"(training|evaluating) on (\w+) \[(\d+)/(\d+)\]\t")
STEP_ON_SCREEN = re.compile(r"(training|evaluating) on \w+ \[\d+/\d+\]")  # the terminal turns tabs to spaces


@dataclass
class Screen:
    """The screens of one run: one after each write that starts with a carriage return, and the scrollback."""

    screens: list[list[str]]
    history: list[str]
    run_log: str

    @property
    def last(self) -> list[str]:
        return self.screens[-1]

    def lines(self) -> list[str]:
        """Every distinct line that was ever on the screen, in the order it first appeared."""
        seen: dict[str, None] = {}
        for screen in self.screens:
            seen.update(dict.fromkeys(line.rstrip() for line in screen))
        seen.update(dict.fromkeys(line.rstrip() for line in self.history))
        return [line for line in seen if line]

    def bars(self) -> list[re.Match]:
        return [match for line in self.lines() if (match := WHOLE_BAR.match(line))]


def play_in_a_terminal(root: Path, *args: str) -> Screen:
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    env.update(OMP_NUM_THREADS="1", TERM="xterm")
    child = pexpect.spawn(
        sys.executable, [str(SCRIPT), str(root), *args], dimensions=(ROWS, COLUMNS), env=env, timeout=240
    )
    output = child.read()
    child.close()
    assert child.exitstatus == 0, output.decode(errors="replace")
    screen = pyte.HistoryScreen(COLUMNS, ROWS, history=100_000)
    stream = pyte.ByteStream(screen)
    screens = []
    # tqdm starts every redraw with "\r", and the terminal ends every line with "\r\n": a screen after each.
    for piece in re.split(rb"(?=\r)", output):
        stream.feed(piece)
        screens.append(list(screen.display))
    history = ["".join(line[column].data for column in range(COLUMNS)) for line in screen.history.top]
    logs = list(root.glob("*/*/run.log"))
    return Screen(screens, history, logs[0].read_text(encoding="utf-8") if logs else "")


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> Screen:
    return play_in_a_terminal(tmp_path_factory.mktemp("logged"))


@pytest.fixture(scope="module")
def unlogged(tmp_path_factory) -> Screen:
    return play_in_a_terminal(tmp_path_factory.mktemp("unlogged"), "--no-log")


@pytest.fixture(scope="module")
def by_steps(tmp_path_factory) -> Screen:
    """30 steps over passes of 12 batches, evaluating every 10 steps: evaluations inside the passes."""
    return play_in_a_terminal(tmp_path_factory.mktemp("by_steps"), "--steps")


def assert_one_clean_bar(screen: list[str]) -> None:
    bars = [line.rstrip() for line in screen if BAR_MARK.search(line)]
    assert len(bars) <= 1, "more than one bar on the screen:\n" + "\n".join(bars)
    for bar in bars:
        assert not TIMESTAMP.search(bar), f"a log record on the bar's line: {bar!r}"
        assert WHOLE_BAR.match(bar), f"the bar's line holds more than the bar: {bar!r}"


@pytest.mark.parametrize("run", ["logged", "unlogged", "by_steps"])
def test_a_terminal_shows_at_most_one_bar_and_no_line_holds_a_bar_and_anything_else(run, request):
    terminal: Screen = request.getfixturevalue(run)
    assert terminal.bars(), "no bar was ever on the screen"
    for screen in terminal.screens:
        assert_one_clean_bar(screen)
    for line in terminal.history:
        assert not (BAR_MARK.search(line) and TIMESTAMP.search(line)), f"a bar and a log record: {line!r}"
        assert not BAR_MARK.search(line), f"a bar left behind in the scrollback: {line!r}"


@pytest.mark.parametrize("run", ["logged", "unlogged"])
def test_prints_in_the_middle_of_an_epoch_get_a_line_of_their_own(run, request):
    terminal: Screen = request.getfixturevalue(run)
    notes = [line for line in terminal.lines() if "a note from the script" in line]
    assert len(notes) == EPOCHS
    for note in notes:
        assert re.fullmatch(r"(\S+ \S+ )?a note from the script at iteration \d+", note), note


def test_bars_name_the_epoch_and_the_split_and_count_batches_as_the_step_lines_do(logged):
    totals: dict[tuple[str, str], set[int]] = {}
    for bar in logged.bars():
        epoch, _, split = bar["label"].rpartition(" ")
        totals.setdefault((epoch, split), set()).add(int(bar["total"]))
    expected = {(f"epoch [{epoch}/{EPOCHS - 1}]", split) for epoch in range(EPOCHS) for split in ("train", "val")}
    assert set(totals) == expected
    assert all(totals[key] == {TRAIN_BATCHES if key[1] == "train" else VAL_BATCHES} for key in totals)
    # The step lines count batches done of the same total: the last one of a pass reads [N/N].
    steps = STEP_LINE.findall(logged.run_log)
    assert {(split, total) for _, split, _, total in steps} == {("train", "12"), ("val", "13")}
    last = [f"{split} [{done}/{total}]" for _, split, done, total in steps if done == total]
    assert last == ["train [12/12]", "val [13/13]"] * EPOCHS


def test_step_results_show_in_the_bar_whole_and_in_full_in_run_log_not_as_console_lines(logged):
    postfixes = [bar["postfix"] for bar in logged.bars() if bar["postfix"]]
    assert postfixes, "no step result was ever shown in a bar"
    for postfix in postfixes:
        # Whole name=value pairs only: a number cut at the screen's edge would read as another number.
        assert re.fullmatch(r"[\w.]+=\d+\.\d{4}(, [\w.]+=\d+\.\d{4})*", postfix), postfix
        assert postfix.startswith("loss=")
    assert not [line for line in logged.lines() if STEP_ON_SCREEN.search(line)]
    assert len(STEP_LINE.findall(logged.run_log)) == EPOCHS * (5 + 5)


def test_console_lines_have_the_time_and_the_message_and_run_log_keeps_level_and_logger(logged):
    records = [line for line in logged.lines() if TIMESTAMP.match(line)]
    assert any(line.endswith(f"epoch [{EPOCHS - 1}/{EPOCHS - 1}]") for line in records)
    for line in logged.lines():
        assert "danling.print" not in line and "[INFO]" not in line, line
    assert re.search(r"\[INFO\] danling\.print: training on train \[12/12\]\t", logged.run_log)


def test_the_last_screen_shows_the_results_table_with_its_columns_aligned(logged):
    screen = [line.rstrip() for line in logged.last]
    assert not [line for line in screen if BAR_MARK.search(line)]
    (header,) = [index for index, line in enumerate(screen) if line.endswith("epoch  train.loss  val.loss  val.acc")]
    rows = screen[header + 1 : header + 1 + EPOCHS]
    assert [row.split()[0] for row in rows] == [str(epoch) for epoch in range(EPOCHS)]
    assert any(row.endswith("<- best") for row in rows)
    # Every value ends where its column's name ends, as in `results_table`.
    ends = [match.end() for match in re.finditer(r"\S+", screen[header])][-3:]
    for row in rows:
        values = [match.end() for match in re.finditer(r"\d+\.\d{4}", row)]
        assert values == ends, f"{screen[header]!r}\n{row!r}"


def test_by_steps_the_training_bar_gives_way_to_each_evaluation_and_comes_back(by_steps):
    labels = [bar["label"] for bar in by_steps.bars()]
    assert {"pass [0] train", "pass [1] train", "pass [2] train", "val"} == set(labels)
    # Evaluations at steps 10 and 20 fall inside passes 0 and 1; the training bar of that pass is back after each.
    for before, after in (("pass [0] train", "pass [1] train"), ("pass [1] train", "pass [2] train")):
        first_val = labels.index("val", labels.index(before))
        assert before in labels[first_val : labels.index(after)], labels
    screen = [line.rstrip() for line in by_steps.last]
    (header,) = [index for index, line in enumerate(screen) if re.search(r"step +train.loss  val.loss  val.acc$", line)]
    assert [row.split()[0] for row in screen[header + 1 : header + 4]] == ["10", "20", "30"]


def test_by_steps_step_lines_after_an_evaluation_inside_a_pass_go_to_the_bar_not_to_the_console(by_steps):
    # The evaluation at step 10 comes after batch 10 of pass 0's 12: the step line of batch 12 follows it, and
    # those of pass 1 follow the one at step 20. The training bar is current again, so they go to its postfix.
    steps = [f"{kind} {split} [{k}/{n}]" for kind, split, k, n in STEP_LINE.findall(by_steps.run_log)]
    assert steps.count("training train [12/12]") == 2 and "evaluating val [13/13]" in steps, steps
    on_screen = [line for line in by_steps.lines() if STEP_ON_SCREEN.search(line)]
    assert not on_screen, "step lines printed on the console:\n" + "\n".join(on_screen)


def test_without_a_terminal_there_is_no_bar_and_the_step_lines_are_printed(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, env=env, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "\r" not in out and not BAR_MARK.search(out)
    steps = [f"{split} [{k}/{n}]" for _, split, k, n in STEP_LINE.findall(out)]
    epoch = [f"train [{k}/12]" for k in (1, 4, 7, 10, 12)] + [f"val [{k}/13]" for k in (1, 4, 7, 10, 13)]
    assert steps == epoch * EPOCHS
    lines = [line for line in out.splitlines() if STEP_LINE.search(line)]
    assert all(TIMESTAMP.match(line) and "danling" not in line for line in lines)
    assert "epoch  train.loss  val.loss  val.acc" in out
