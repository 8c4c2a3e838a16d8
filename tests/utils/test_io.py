"""`danling.utils.io`: saving and loading by extension, and writes that are atomic under errors and kills."""

from __future__ import annotations

import enum
import errno
import os
import pickle
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

import danling.utils.io as io_module
from danling.utils.io import atomic_copy, atomic_write, is_json_serializable, load, save

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

# The directory `danling` was imported from, so a child process imports the same package.
PACKAGE_ROOT = Path(io_module.__file__).parents[2]

# Pickling a lambda fails with one of these, depending on the Python version.
PICKLING_ERRORS = (pickle.PicklingError, AttributeError)

NOBODY = 65534  # the conventional uid and gid of `nobody`


class Colour(enum.Enum):
    RED = "red"


class Custom:
    """An arbitrary class: a pickle of it must not load with `weights_only`."""

    def __init__(self) -> None:
        self.value = 42


class Abort(BaseException):
    """Not an `Exception`: like `KeyboardInterrupt`, without the risk of stopping pytest."""


class ExplodingPickle:
    """Pickling it raises, part way through a `torch.save`."""

    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Inside the block, a write that would take a file past `limit` bytes fails with `EFBIG` ("File too large").

    SIGXFSZ, which the kernel sends to such a writer and which kills it by default, is ignored meanwhile; both the
    limit and the handler are restored on the way out.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def outcome_without_privileges(function: Callable[[], object]) -> tuple[str, str] | None:
    """What `function()` raises, as `(type name, message)` (`None` if nothing), run by a user without privileges.

    Permission bits do not bind root, so as root `function` runs in a forked child that first becomes `nobody`;
    otherwise it runs here.
    """
    if os.geteuid() != 0:
        try:
            function()
        except Exception as error:
            return type(error).__name__, str(error)
        return None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports through the pipe and never returns into pytest
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                function()
                outcome = None
            except Exception as error:
                outcome = (type(error).__name__, str(error))
            with os.fdopen(write_end, "wb") as pipe:
                pickle.dump(outcome, pipe)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0 and report, f"the child running as nobody failed before reporting (status {status})"
    return pickle.loads(report)


def nested_payload() -> dict:
    return {
        "name": "run",
        "flag": True,
        "missing": None,
        "metrics": {
            "loss": torch.tensor(0.25),
            "scores": torch.tensor([1.0, 2.0]),
            "count": np.int64(3),
            "acc": np.float32(0.5),
            "matrix": np.array([[1, 2], [3, 4]]),
            "pair": (1, 2),
        },
        "colour": Colour.RED,
    }


PLAIN_PAYLOAD = {
    "name": "run",
    "flag": True,
    "missing": None,
    "metrics": {"loss": 0.25, "scores": [1.0, 2.0], "count": 3, "acc": 0.5, "matrix": [[1, 2], [3, 4]], "pair": [1, 2]},
    "colour": "red",
}


def test_json_round_trip_converts_tensors_and_numpy_scalars_to_plain_python(tmp_path):
    path = tmp_path / "result.json"
    assert save(nested_payload(), path) == path
    loaded = load(path)
    assert loaded == PLAIN_PAYLOAD
    assert type(loaded["metrics"]["count"]) is int
    assert type(loaded["metrics"]["acc"]) is float
    assert type(loaded["metrics"]["loss"]) is float


@pytest.mark.parametrize("extension", ["yaml", "yml"])
def test_yaml_round_trip_converts_tensors_and_numpy_scalars_to_plain_python(tmp_path, extension):
    path = tmp_path / f"config.{extension}"
    save(nested_payload(), path)
    loaded = load(path)
    assert loaded == PLAIN_PAYLOAD
    assert type(loaded["metrics"]["count"]) is int
    # safe_dump writes plain YAML: no python-specific tags a safe loader would reject.
    assert "!!python" not in path.read_text()


def test_yaml_keeps_key_order(tmp_path):
    path = tmp_path / "ordered.yaml"
    save({"zeta": 1, "alpha": 2, "mid": 3}, path)
    assert list(load(path)) == ["zeta", "alpha", "mid"]


@pytest.mark.parametrize("extension", ["pth", "pt", "ckpt"])
def test_torch_round_trip_keeps_tensors_and_nested_structure(tmp_path, extension):
    state = {"weight": torch.randn(3, 4), "step": 7, "nested": {"ids": torch.arange(5), "names": ["a", "b"]}}
    path = tmp_path / f"model.{extension}"
    save(state, path)
    loaded = load(path)
    assert torch.equal(loaded["weight"], state["weight"])
    assert torch.equal(loaded["nested"]["ids"], state["nested"]["ids"])
    assert loaded["step"] == 7
    assert loaded["nested"]["names"] == ["a", "b"]


def test_npy_round_trip_keeps_values_and_dtype(tmp_path):
    array = np.arange(12, dtype=np.int16).reshape(3, 4)
    path = tmp_path / "array.npy"
    save(array, path)
    loaded = load(path)
    assert loaded.dtype == np.int16
    np.testing.assert_array_equal(loaded, array)


def test_npz_round_trip_of_a_mapping_keeps_every_array_by_name(tmp_path):
    arrays = {"x": np.linspace(0, 1, 5), "y": np.array([1, 2, 3], dtype=np.int32)}
    path = tmp_path / "arrays.npz"
    save(arrays, path)
    with load(path) as loaded:
        assert sorted(loaded.files) == ["x", "y"]
        np.testing.assert_array_equal(loaded["x"], arrays["x"])
        np.testing.assert_array_equal(loaded["y"], arrays["y"])
        assert loaded["y"].dtype == np.int32


def test_npz_round_trip_of_a_single_array_stores_it_as_arr_0(tmp_path):
    path = tmp_path / "single.npz"
    save(np.eye(3), path)
    with load(path) as loaded:
        np.testing.assert_array_equal(loaded["arr_0"], np.eye(3))


def test_txt_round_trip_of_a_string(tmp_path):
    path = tmp_path / "notes.txt"
    save("héllo\nworld", path)
    assert load(path) == "héllo\nworld"
    assert path.read_bytes() == "héllo\nworld".encode()


def test_txt_writes_a_list_one_item_per_line(tmp_path):
    path = tmp_path / "lines.txt"
    save(["a", 1, 2.5], path)
    assert load(path) == "a\n1\n2.5"


def test_extension_is_matched_case_insensitively(tmp_path):
    path = tmp_path / "UPPER.JSON"
    save({"a": 1}, path)
    assert load(path) == {"a": 1}


def test_save_accepts_a_str_path_and_returns_it(tmp_path):
    path = str(tmp_path / "result.json")
    assert save([1, 2], path) == path
    assert load(path) == [1, 2]


def test_save_creates_missing_parent_directories(tmp_path):
    path = tmp_path / "a" / "b" / "c.json"
    save({"deep": True}, path)
    assert load(path) == {"deep": True}


def test_save_with_unknown_extension_raises_value_error_naming_it_and_the_supported_ones(tmp_path):
    path = tmp_path / "table.csv"
    with pytest.raises(ValueError, match="'csv'") as info:
        save({"a": 1}, path)
    message = str(info.value)
    for extension in ("json", "yaml", "yml", "pth", "pt", "npy", "npz", "txt"):
        assert extension in message
    assert listing(tmp_path) == []


def test_load_with_unknown_extension_raises_value_error_naming_it(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("a,b\n")
    with pytest.raises(ValueError, match="'csv'") as info:
        load(path)
    assert "json" in str(info.value)


def test_save_without_extension_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="unknown extension"):
        save({"a": 1}, tmp_path / "noextension")


def test_load_of_a_missing_file_raises_file_not_found_naming_the_path(tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(FileNotFoundError) as info:
        load(path)
    assert str(path) in str(info.value)


def test_torch_load_uses_weights_only_so_an_arbitrary_pickle_is_refused(tmp_path):
    path = tmp_path / "untrusted.pth"
    torch.save({"object": Custom()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load(path)


def test_loading_a_text_file_named_pth_says_it_is_no_torch_file_and_never_advises_weights_only_false(tmp_path):
    path = tmp_path / "latest.pth"
    path.write_text("lr: 0.1\nepoch_end: 3\n")
    with pytest.raises(ValueError) as raised:
        load(path)
    assert str(raised.value) == f"cannot load {str(path)!r}: it is not a torch file, it holds text: 'lr: 0.1'"
    # torch's own error, which suggests weights_only=False, is not in the chain a traceback would print.
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_torch_load_of_an_arbitrary_pickle_works_when_explicitly_trusted(tmp_path):
    path = tmp_path / "trusted.pth"
    torch.save({"object": Custom()}, path)
    assert load(path, weights_only=False)["object"].value == 42


def test_is_json_serializable():
    assert is_json_serializable({"a": [1, 2.0, None, "x"]})
    assert not is_json_serializable({1, 2})
    assert not is_json_serializable(torch.tensor(1.0))


def test_saved_file_gets_the_same_permissions_as_a_file_made_by_open(tmp_path):
    reference = tmp_path / "reference.txt"
    reference.write_text("x")
    saved = tmp_path / "saved.json"
    save({"a": 1}, saved)
    assert (saved.stat().st_mode & 0o777) == (reference.stat().st_mode & 0o777)


def test_successful_saves_leave_no_temporary_files(tmp_path):
    for index in range(3):
        save({"step": index}, tmp_path / "result.json")
        save(torch.ones(3) * index, tmp_path / "model.pth")
    assert listing(tmp_path) == ["model.pth", "result.json"]


def test_json_save_failing_mid_serialization_keeps_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "result.json"
    save({"epoch": 1}, path)
    before = path.read_bytes()
    # The first keys serialise (and are written) before the set makes json.dump raise.
    with pytest.raises(TypeError, match="not JSON serializable") as info:
        save({"epoch": 2, "long": "x" * 100_000, "bad": {1, 2}}, path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == before
    assert load(path) == {"epoch": 1}
    assert listing(tmp_path) == ["result.json"]


def test_torch_save_failing_mid_pickle_keeps_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "model.pth"
    save({"weight": torch.zeros(4)}, path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="cannot pickle this") as info:
        save({"weight": torch.ones(1_000_000), "extra": ExplodingPickle()}, path)
    assert str(path) in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)  # the original error, with its traceback, is chained
    assert path.read_bytes() == before
    assert torch.equal(load(path)["weight"], torch.zeros(4))
    assert listing(tmp_path) == ["model.pth"]


@pytest.mark.skipif(resource is None or not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE and SIGXFSZ")
@pytest.mark.parametrize("spare", [False, True])
def test_torch_save_past_the_file_size_limit_names_the_path_and_keeps_the_previous_file(tmp_path, spare):
    path = tmp_path / "model.pth"
    save({"weight": torch.zeros(4)}, path, spare=spare)
    save({"weight": torch.zeros(8)}, path, spare=spare)  # with `spare`, the next write goes into the replaced file
    before = path.read_bytes()
    # torch.save meets "File too large" part-way through its 4 MiB and reports a failure of its own.
    with file_size_limit(64 << 10), pytest.raises(OSError) as info:
        save({"weight": torch.ones(1 << 20)}, path, spare=spare)
    assert info.value.errno == errno.EFBIG
    assert str(path) in str(info.value)
    assert path.read_bytes() == before
    assert torch.equal(load(path)["weight"], torch.zeros(8))
    assert listing(tmp_path) == ["model.pth"]


def test_exception_inside_atomic_write_after_half_the_bytes_keeps_the_previous_file(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"old contents")
    payload = os.urandom(1 << 20)

    def write_half_then_abort():
        with atomic_write(path) as fp:
            fp.write(payload[: len(payload) // 2])
            fp.flush()
            assert os.path.getsize(path) == len(b"old contents")  # the bytes went to a temporary, not to `path`
            raise Abort

    with pytest.raises(Abort):
        write_half_then_abort()
    assert path.read_bytes() == b"old contents"
    assert listing(tmp_path) == ["data.bin"]


def test_atomic_write_replaces_the_file_on_success(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("old")
    with atomic_write(path, "w") as fp:
        fp.write("new ✓")
    assert path.read_text(encoding="utf-8") == "new ✓"
    assert listing(tmp_path) == ["data.txt"]


def test_atomic_write_rejects_modes_other_than_w_and_wb(tmp_path):
    with pytest.raises(ValueError, match="'a'"), atomic_write(tmp_path / "x.txt", "a"):
        pass
    assert listing(tmp_path) == []


def test_save_where_the_parent_is_a_regular_file_raises_os_error_naming_the_path(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    path = blocker / "result.json"
    with pytest.raises(OSError, match="cannot write") as info:
        save({"a": 1}, path)
    assert str(path) in str(info.value)
    assert blocker.read_text() == "not a directory"


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX permissions")
def test_save_into_a_read_only_directory_raises_permission_error_naming_the_path(tmp_path):
    # As root the save runs as `nobody`, who cannot reach into tmp_path's private parents: a fresh directory.
    base = Path(tempfile.mkdtemp()) if os.geteuid() == 0 else tmp_path
    writable, locked = base / "open", base / "locked"
    try:
        for directory, mode in ((base, 0o755), (writable, 0o777), (locked, 0o555)):
            directory.mkdir(exist_ok=True)
            directory.chmod(mode)

        def save_both() -> None:
            save({"a": 1}, writable / "result.json")  # succeeds: only the locked directory's mode stops the next
            save({"a": 2}, locked / "result.json")

        outcome = outcome_without_privileges(save_both)
        assert outcome is not None, "the save into the read-only directory succeeded"
        kind, message = outcome
        assert kind == "PermissionError", message
        assert str(locked / "result.json") in message
        assert load(writable / "result.json") == {"a": 1}
        assert listing(locked) == []
    finally:
        locked.chmod(0o755)
        if base != tmp_path:
            shutil.rmtree(base)


def test_save_over_a_directory_raises_os_error_naming_the_path_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "taken.json"
    path.mkdir()
    with pytest.raises(IsADirectoryError) as info:
        save({"a": 1}, path)
    assert str(path) in str(info.value)
    assert path.is_dir()
    assert listing(tmp_path) == ["taken.json"]


def test_atomic_copy_makes_an_identical_file_that_survives_a_later_save_of_the_source(tmp_path):
    source, copy = tmp_path / "latest.pth", tmp_path / "best.pth"
    save({"weight": torch.full((8,), 1.0)}, source)
    atomic_copy(source, copy)
    assert copy.read_bytes() == source.read_bytes()

    save({"weight": torch.full((8,), 2.0)}, source)
    assert torch.equal(load(copy)["weight"], torch.full((8,), 1.0))
    assert torch.equal(load(source)["weight"], torch.full((8,), 2.0))
    assert listing(tmp_path) == ["best.pth", "latest.pth"]


def test_atomic_copy_replaces_an_existing_destination(tmp_path):
    source, copy = tmp_path / "latest.json", tmp_path / "best.json"
    save({"score": 1}, copy)
    save({"score": 2}, source)
    atomic_copy(source, copy)
    assert load(copy) == {"score": 2}
    assert listing(tmp_path) == ["best.json", "latest.json"]


def test_atomic_copy_onto_a_link_to_the_same_file_leaves_no_temporary(tmp_path):
    source, copy = tmp_path / "latest.json", tmp_path / "best.json"
    save({"score": 1}, source)
    atomic_copy(source, copy)
    atomic_copy(source, copy)
    assert load(copy) == {"score": 1}
    assert listing(tmp_path) == ["best.json", "latest.json"]


def test_atomic_copy_of_a_missing_source_raises_naming_both_paths_and_creates_nothing(tmp_path):
    source, destination = tmp_path / "absent.json", tmp_path / "copy.json"
    with pytest.raises(FileNotFoundError) as info:
        atomic_copy(source, destination)
    assert str(source) in str(info.value) and str(destination) in str(info.value)
    assert listing(tmp_path) == []


# A child that saves one of three ~20 MiB tensors to the same path, over and over, until it is killed.
WRITER = """
import sys
import torch
from danling.utils.io import save

versions = [torch.full((5 << 20,), float(value)) for value in range(3)]
print("ready", flush=True)
index = 0
while True:
    index += 1
    save(versions[index % 3], sys.argv[1])
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_while_repeatedly_saving_never_leaves_a_file_that_fails_to_load(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    paths = [tmp_path / f"run{index}" / "model.pth" for index in range(3)]
    for path in paths:
        save(torch.full((5 << 20,), 0.0), path)

    # Three writers at once, each killed at its own random moment: three kills for one interpreter start-up.
    children = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        for path in paths
    ]
    try:
        for child in children:
            line = child.stdout.readline()
            assert line.strip() == b"ready", child.stderr.read().decode() if child.poll() is not None else line
        for child in children:
            time.sleep(random.uniform(0.1, 0.5))
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
            assert child.returncode == -signal.SIGKILL
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
            child.stdout.close()
            child.stderr.close()

    for path in paths:
        tensor = load(path)
        assert tensor.shape == (5 << 20,)
        value = tensor[0].item()
        assert value in {0.0, 1.0, 2.0}
        assert torch.all(tensor == value)


def test_spare_write_reuses_the_replaced_file_and_keeps_content_exact(tmp_path):
    import torch

    from danling.utils.io import load, save

    path = tmp_path / "latest.pth"
    spare = tmp_path / ".latest.pth.spare"
    save({"w": torch.arange(1000)}, path, spare=True)
    assert not spare.exists()  # nothing was replaced yet
    save({"w": torch.arange(10)}, path, spare=True)
    assert spare.exists()
    spare_inode = spare.stat().st_ino
    save({"w": torch.arange(5)}, path, spare=True)
    assert path.stat().st_ino == spare_inode  # written in place into the spare, then renamed
    assert torch.equal(load(path)["w"], torch.arange(5))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".latest.pth.spare", "latest.pth"]


def test_spare_write_never_touches_a_file_shared_with_another_name(tmp_path):
    import torch

    from danling.utils.io import atomic_copy, load, save

    path, best = tmp_path / "latest.pth", tmp_path / "best.pth"
    save({"w": torch.zeros(100)}, path, spare=True)
    atomic_copy(path, best)  # best is a hard link to latest's file
    for value in (1.0, 2.0, 3.0):
        save({"w": torch.full((100,), value)}, path, spare=True)
        assert torch.equal(load(best)["w"], torch.zeros(100))
    assert torch.equal(load(path)["w"], torch.full((100,), 3.0))


def test_failed_spare_write_keeps_the_previous_file(tmp_path):
    import pytest
    import torch

    from danling.utils.io import load, save

    path = tmp_path / "latest.pth"
    save({"w": torch.ones(10)}, path, spare=True)
    save({"w": torch.ones(10) * 2}, path, spare=True)
    with pytest.raises(PICKLING_ERRORS) as info:
        save({"w": lambda: None}, path, spare=True)
    assert str(path) in str(info.value)
    assert torch.equal(load(path)["w"], torch.ones(10) * 2)
    assert listing(tmp_path) == ["latest.pth"]  # the spare written into is gone with the failed write


def saved_checkpoint(path) -> dict:
    state = {"weight": torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), "step": 3, "name": "run"}
    save(state, path)
    return state


def flip(path, offset: int) -> None:
    with open(path, "r+b") as fp:
        fp.seek(offset)
        byte = fp.read(1)
        fp.seek(offset)
        fp.write(bytes([byte[0] ^ 0xFF]))


def test_a_torch_file_is_a_valid_zip_whose_records_carry_the_checksum(tmp_path):
    import zipfile

    path = tmp_path / "latest.pth"
    saved_checkpoint(path)
    assert path.read_bytes()[-16:-12] == b"DLZ1"  # the archive's own CRC-32s are the checksum
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None  # zip tools read it as an intact archive
    assert io_module.verify_checksum(path)


def test_every_damaged_byte_is_reported_and_nothing_damaged_loads(tmp_path):
    # Every byte of a small checkpoint flipped in turn. The records' data are covered by the archive's CRC-32s, all
    # else by the trailer's (torch reads more of the zip directory than `zipfile` checks: a flipped attribute byte
    # there made torch load other content). Only a flipped trailer magic goes unreported: the file then reads as
    # one written elsewhere, and it loads what was saved.
    path, work = tmp_path / "original.pth", tmp_path / "damaged.pth"
    state = saved_checkpoint(path)
    original = path.read_bytes()
    unreported = []
    for offset in range(len(original)):
        work.write_bytes(original)
        flip(work, offset)
        try:
            loaded = load(work)
        except io_module.CorruptFileError:
            continue
        unreported.append(offset)
        assert torch.equal(loaded["weight"], state["weight"]) and (loaded["step"], loaded["name"]) == (3, "run")
    assert unreported == list(range(len(original) - 16, len(original) - 12))


@pytest.mark.parametrize("where", ["tensor data", "pickle", "directory"])
def test_a_damaged_record_or_directory_is_reported_naming_the_file(tmp_path, where):
    import zipfile

    path = tmp_path / "latest.pth"
    saved_checkpoint(path)
    with zipfile.ZipFile(path) as archive:
        records = {info.filename.rsplit("/", 1)[-1]: info for info in archive.infolist()}
    content = path.read_bytes()
    if where == "directory":
        offset = content.rindex(b"PK\x01\x02")  # the last record's entry in the central directory
    else:
        info = records["data.pkl"] if where == "pickle" else next(i for n, i in records.items() if n.isdigit())
        name_length, extra_length = struct.unpack("<HH", content[info.header_offset + 26 : info.header_offset + 30])
        offset = info.header_offset + 30 + name_length + extra_length + info.file_size // 2
    flip(path, offset)
    with pytest.raises(io_module.CorruptFileError, match="latest.pth"):
        load(path)


def test_files_whose_archive_has_no_checksums_get_a_whole_file_crc(tmp_path):
    path = tmp_path / "latest.pth"
    torch.serialization.set_crc32_options(False)
    try:
        state = saved_checkpoint(path)
    finally:
        torch.serialization.set_crc32_options(True)
    assert path.read_bytes()[-16:-12] == b"DLCK"
    assert torch.equal(load(path)["weight"], state["weight"])
    flip(path, os.path.getsize(path) // 2)
    with pytest.raises(io_module.CorruptFileError, match="its checksum does not match"):
        load(path)


def test_a_replaced_best_becomes_the_spare_that_the_next_save_of_latest_rewrites_in_place(tmp_path):
    from danling.utils.io import spare_file

    latest, best = tmp_path / "latest.pth", tmp_path / "best.pth"
    spare = Path(spare_file(latest))
    assert spare == tmp_path / ".latest.pth.spare"
    inodes = []
    for step in range(4):  # a new best at every save: `latest` is always linked as `best` when it is replaced
        save({"w": torch.full((1000,), float(step))}, latest, spare=True)
        atomic_copy(latest, best, retire_to=spare)
        inodes.append(latest.stat().st_ino)
        assert best.stat().st_ino == latest.stat().st_ino
        assert torch.equal(load(best)["w"], torch.full((1000,), float(step)))
    # From the third save on, each is written into the file that was `best` two saves before: no new file.
    assert inodes[2] == inodes[0] and inodes[3] == inodes[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".latest.pth.spare", "best.pth", "latest.pth"]


def test_retiring_never_takes_a_file_another_name_still_links(tmp_path):
    latest, best, snapshot = tmp_path / "latest.pth", tmp_path / "best.pth", tmp_path / "epoch-0.pth"
    save({"w": torch.zeros(10)}, latest)
    atomic_copy(latest, best)
    atomic_copy(latest, snapshot)  # the file is `latest`, `best` and `epoch-0`
    save({"w": torch.ones(10)}, latest)
    atomic_copy(latest, best, retire_to=tmp_path / ".latest.pth.spare")
    assert not (tmp_path / ".latest.pth.spare").exists()  # `epoch-0` still names the old best
    save({"w": torch.full((10,), 2.0)}, latest, spare=True)
    assert torch.equal(load(snapshot)["w"], torch.zeros(10)) and torch.equal(load(best)["w"], torch.ones(10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth", "epoch-0.pth", "latest.pth"]
