"""`import danling` stays light (the `danling` command needs it to) while the public surface stays the same."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import danling as dl

REPO_ROOT = Path(__file__).resolve().parents[2]
PUBLIC_NAMES = {
    "metrics",
    "optim",
    "runner",
    "utils",
    "Config",
    "Runner",
    "BaseRunner",
    "TorchRunner",
    "LRScheduler",
    "Metrics",
    "MultiTaskMetrics",
    "MetricMeter",
    "MetricMeters",
    "MultiTaskMetricMeters",
    "AverageMeter",
    "AverageMeters",
    "MultiTaskAverageMeters",
    "save",
    "load",
    "catch",
    "debug",
    "ensure_dir",
    "flexible_decorator",
    "method_cache",
    "is_json_serializable",
    "__version__",
}


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)


def test_import_danling_imports_no_torch_until_a_runner_is_used():
    completed = run_python(
        "import sys\n"
        "import danling as dl\n"
        "print('before:', 'torch' in sys.modules)\n"
        "dl.TorchRunner\n"
        "print('after:', 'torch' in sys.modules)\n"
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["before:", "False", "after:", "True"]


def test_every_public_name_resolves_to_the_object_of_its_module():
    import danling.metrics
    import danling.optim
    import danling.runner
    import danling.utils
    import danling.utils.contextmanagers

    assert set(dl.__all__) == PUBLIC_NAMES
    assert set(dl.__all__) <= set(dir(dl))
    assert dl.TorchRunner is danling.runner.TorchRunner and dl.Config is danling.runner.Config
    assert dl.MultiTaskMetrics is danling.metrics.MultiTaskMetrics and dl.LRScheduler is danling.optim.LRScheduler
    assert dl.save is danling.utils.save and dl.debug is danling.utils.contextmanagers.debug
    assert dl.metrics is danling.metrics and dl.utils is danling.utils
    with pytest.raises(AttributeError, match="module 'danling' has no attribute 'Trainer'"):
        dl.Trainer


def test_star_import_gives_every_public_name():
    completed = run_python(
        "import danling\nfrom danling import *\nprint(sorted(set(danling.__all__) - set(globals())))\n"
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_touching_the_runner_loads_neither_fsdp_nor_the_metric_functions():
    completed = run_python(
        "import sys\n"
        "import danling as dl\n"
        "dl.Runner, dl.TorchRunner, dl.Config\n"
        "lazy = ('danling.runner.fsdp_runner', 'danling.runner.dcp', 'danling.metrics.functional',"
        " 'danling.metrics.metrics')\n"
        "print(*[name for name in (*lazy, 'torch.distributed.checkpoint') if name in sys.modules])\n"
        "dl.runner.FSDPRunner, dl.metrics.Metrics, dl.metrics.auroc\n"
        "print(*[name for name in lazy if name not in sys.modules])\n"
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == ["", ""]


@pytest.mark.parametrize("package", ["danling.metrics", "danling.runner"])
def test_every_name_a_subpackage_lists_resolves(package):
    module = __import__(package, fromlist=["__all__"])
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'Nothing'"):
        module.Nothing
