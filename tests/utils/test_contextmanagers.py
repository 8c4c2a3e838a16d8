"""`danling.utils.contextmanagers.debug`: a post-mortem debugger only where a person can use it."""

from __future__ import annotations

import io
import pdb
import sys

import pytest

from danling.utils.contextmanagers import debug


class FakeTerminal(io.StringIO):
    """A standard input that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def post_mortems(monkeypatch):
    """Record calls to the debugger instead of opening it, so a test can never hang at a prompt."""
    calls = []
    monkeypatch.setattr(pdb, "post_mortem", lambda traceback=None: calls.append(traceback))
    return calls


def test_debug_runs_the_block_when_nothing_fails():
    with debug():
        result = 1 + 1
    assert result == 2


def test_debug_reraises_without_a_debugger_when_stdin_is_not_a_tty(monkeypatch, post_mortems):
    monkeypatch.setattr(sys, "stdin", io.StringIO())
    with pytest.raises(ValueError, match="boom"), debug():
        raise ValueError("boom")
    assert post_mortems == []


def test_debug_reraises_when_there_is_no_stdin(monkeypatch, post_mortems):
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(ValueError, match="boom"), debug():
        raise ValueError("boom")
    assert post_mortems == []


def test_debug_opens_the_debugger_on_a_tty_then_reraises(monkeypatch, post_mortems, capsys):
    monkeypatch.setattr(sys, "stdin", FakeTerminal())
    with pytest.raises(ValueError, match="boom") as info, debug():
        raise ValueError("boom")
    assert len(post_mortems) == 1
    # The debugger starts where the error was raised: the innermost frame of its traceback is this test's.
    link = post_mortems[0]
    while link.tb_next is not None:
        link = link.tb_next
    assert link.tb_frame.f_code.co_name == "test_debug_opens_the_debugger_on_a_tty_then_reraises"
    assert isinstance(info.value, ValueError)
    assert "ValueError: boom" in capsys.readouterr().err


def test_debug_disabled_reraises_without_a_debugger_even_on_a_tty(monkeypatch, post_mortems):
    monkeypatch.setattr(sys, "stdin", FakeTerminal())
    with pytest.raises(ValueError, match="boom"), debug(enable=False):
        raise ValueError("boom")
    assert post_mortems == []


def test_debug_lets_excluded_errors_through_without_a_debugger(monkeypatch, post_mortems):
    monkeypatch.setattr(sys, "stdin", FakeTerminal())
    with pytest.raises(KeyError), debug(exclude=KeyError):
        raise KeyError("through")
    assert post_mortems == []


def test_debug_ignores_errors_outside_the_chosen_types(monkeypatch, post_mortems):
    monkeypatch.setattr(sys, "stdin", FakeTerminal())
    with pytest.raises(KeyError), debug(error=ValueError):
        raise KeyError("other")
    assert post_mortems == []
