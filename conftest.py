"""Doctest collection over `danling/`: the modules of optional backends are left out where their package is missing."""

from importlib.util import find_spec

OPTIONAL_MODULES = {
    "danling/runner/deepspeed_runner.py": "deepspeed",
    "danling/runner/accelerate_runner.py": "accelerate",
}

collect_ignore = [path for path, package in OPTIONAL_MODULES.items() if find_spec(package) is None]
