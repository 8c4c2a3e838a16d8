"""`danling.utils.decorators`: catch, flexible_decorator, ensure_dir, method_cache and the main-process guards."""

from __future__ import annotations

import gc
import weakref

import pytest

from danling.utils.decorators import (
    catch,
    ensure_dir,
    flexible_decorator,
    method_cache,
    on_local_main_process,
    on_main_process,
)


def test_catch_returns_none_and_reports_the_error_on_stderr(capsys):
    @catch
    def fail(value):
        raise ValueError(f"boom {value}")

    assert fail(3) is None
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "error in" in captured.err
    assert "fail" in captured.err
    assert "ValueError: boom 3" in captured.err


def test_catch_passes_through_the_return_value_when_nothing_fails():
    @catch
    def add(a, b):
        return a + b

    assert add(2, b=3) == 5


def test_catch_preserves_the_function_name_and_docstring():
    @catch
    def documented():
        """Docs."""

    assert documented.__name__ == "documented"
    assert documented.__doc__ == "Docs."


def test_catch_with_print_args_reports_the_arguments(capsys):
    @catch(print_args=True)
    def fail(value, key=None):
        raise RuntimeError("bad")

    assert fail(41, key="k") is None
    err = capsys.readouterr().err
    assert "args=(41,)" in err
    assert "'key': 'k'" in err


def test_catch_lets_errors_outside_the_caught_type_through():
    @catch(ValueError)
    def fail():
        raise KeyError("not caught")

    with pytest.raises(KeyError, match="not caught"):
        fail()


def test_catch_exclude_lets_the_excluded_error_through(capsys):
    @catch(exclude=KeyError)
    def fail(error):
        raise error

    with pytest.raises(KeyError):
        fail(KeyError("excluded"))
    assert fail(ValueError("caught")) is None
    err = capsys.readouterr().err
    assert "ValueError: caught" in err
    assert "KeyError" not in err


def test_catch_exclude_accepts_a_tuple():
    @catch(exclude=(KeyError, IndexError))
    def fail(error):
        raise error

    with pytest.raises(IndexError):
        fail(IndexError("through"))


def test_flexible_decorator_works_bare_and_called():
    @flexible_decorator
    def tag(label="default"):
        def decorator(func):
            func.label = label
            return func

        return decorator

    @tag
    def bare(): ...

    @tag()
    def called_empty(): ...

    @tag(label="custom")
    def called(): ...

    assert bare.label == "default"
    assert called_empty.label == "default"
    assert called.label == "custom"


def test_flexible_decorator_treats_a_single_class_argument_as_an_option():
    @flexible_decorator
    def expect(error=Exception):
        def decorator(func):
            func.error = error
            return func

        return decorator

    @expect(ValueError)
    def f(): ...

    assert f.error is ValueError


def test_flexible_decorator_called_with_no_argument_returns_a_wrapping_decorator():
    def factory(times=2):
        def decorator(func):
            return lambda: func() * times

        return decorator

    flexible = flexible_decorator()(factory)

    @flexible
    def one():
        return 1

    @flexible(times=5)
    def also_one():
        return 1

    assert one() == 2
    assert also_one() == 5


def test_ensure_dir_creates_the_returned_directory_and_returns_it(tmp_path):
    target = tmp_path / "a" / "b" / "c"

    @ensure_dir
    def where():
        return str(target)

    assert where() == str(target)
    assert target.is_dir()
    assert where() == str(target)  # calling again, with the directory present, is fine


class Counter:
    def __init__(self, offset=0):
        self.offset = offset
        self.calls = 0

    @method_cache(maxsize=None)
    def compute(self, x, scale=1):
        self.calls += 1
        return (x + self.offset) * scale


def test_method_cache_returns_cached_results_per_arguments():
    counter = Counter()
    assert counter.compute(2) == 2
    assert counter.compute(2) == 2
    assert counter.calls == 1
    assert counter.compute(2, scale=3) == 6
    assert counter.compute(3) == 3
    assert counter.calls == 3


def test_method_cache_keeps_one_cache_per_instance():
    first, second = Counter(offset=10), Counter(offset=100)
    assert first.compute(1) == 11
    assert second.compute(1) == 101
    assert first.compute(1) == 11
    assert (first.calls, second.calls) == (1, 1)


def test_method_cache_keeps_separate_caches_for_equal_instances():
    class Point:
        def __init__(self, x):
            self.x = x
            self.calls = 0

        def __eq__(self, other):
            return isinstance(other, Point) and self.x == other.x

        def __hash__(self):
            return hash(self.x)

        @method_cache()
        def tag(self):
            self.calls += 1
            return id(self)

    first, second = Point(1), Point(1)
    assert first == second
    assert first.tag() == id(first)
    assert second.tag() == id(second)
    assert (first.calls, second.calls) == (1, 1)


def test_method_cache_works_on_unhashable_instances():
    class Unhashable:
        __hash__ = None

        @method_cache()
        def double(self, x):
            return 2 * x

    assert Unhashable().double(4) == 8


def test_method_cache_does_not_keep_the_instance_alive():
    counter = Counter()
    counter.compute(1)
    ref = weakref.ref(counter)
    del counter
    gc.collect()
    assert ref() is None


def test_method_cache_serves_a_new_instance_fresh_after_the_old_one_dies():
    # A new instance may reuse a dead one's id: it must not see the dead one's cached results.
    for offset in range(50):
        counter = Counter(offset=offset)
        assert counter.compute(0) == offset
        del counter


def test_method_cache_evicts_beyond_maxsize():
    class Limited:
        calls = 0

        @method_cache(maxsize=1)
        def square(self, x):
            Limited.calls += 1
            return x * x

    item = Limited()
    item.square(2)
    item.square(3)
    item.square(2)
    assert Limited.calls == 3


class Worker:
    def __init__(self, is_main_process, is_local_main_process):
        self.is_main_process = is_main_process
        self.is_local_main_process = is_local_main_process
        self.ran = []

    @on_main_process
    def report(self, value, suffix=""):
        self.ran.append("report")
        return f"{value}{suffix}"

    @on_local_main_process
    def prepare(self, value):
        self.ran.append("prepare")
        return value * 2


def test_on_main_process_runs_on_the_main_process():
    worker = Worker(is_main_process=True, is_local_main_process=True)
    assert worker.report(1, suffix="!") == "1!"
    assert worker.ran == ["report"]


def test_on_main_process_returns_none_without_running_elsewhere():
    worker = Worker(is_main_process=False, is_local_main_process=True)
    assert worker.report(1) is None
    assert worker.ran == []


def test_on_local_main_process_runs_on_the_local_main_process():
    worker = Worker(is_main_process=False, is_local_main_process=True)
    assert worker.prepare(4) == 8
    assert worker.ran == ["prepare"]


def test_on_local_main_process_returns_none_without_running_elsewhere():
    worker = Worker(is_main_process=True, is_local_main_process=False)
    assert worker.prepare(4) is None
    assert worker.ran == []


def test_process_guards_preserve_the_method_name():
    assert Worker.report.__name__ == "report"
    assert Worker.prepare.__name__ == "prepare"
