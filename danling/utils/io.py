"""Saving and loading by file extension, with every write made atomic.

A write goes to a temporary file in the destination's directory, is flushed and fsynced, and is renamed over the
destination; the directory is then fsynced so the rename itself survives a power cut. A crash at any instant leaves
either the previous file or the new one, never a truncated mix.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import stat
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import IO, Any

import numpy as np
import yaml

__all__ = [
    "CorruptFileError",
    "PathStr",
    "atomic_copy",
    "atomic_write",
    "fsync_dir",
    "is_json_serializable",
    "load",
    "not_a_torch_file",
    "remove_stale_temporaries",
    "save",
    "to_builtin",
]

PathStr = str | os.PathLike

# Torch files written here end with a trailer: magic, CRC-32 of everything before it, and that length. Zip readers
# (and so `torch.load`) find their directory by scanning back from the end, so they read past it unchanged.
_TRAILER_MAGIC = b"DLCK"
_TRAILER_SIZE = 16


class CorruptFileError(RuntimeError):
    """A file exists but is truncated or corrupted; the message names it."""


# How every file `torch.save` writes begins: a zip archive (its format since torch 1.6) or, in its legacy format, a
# pickle of protocol 2 or higher. A file that begins otherwise was never a torch file, however it is named.
_TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80")


def not_a_torch_file(path: PathStr) -> str | None:
    """What the file at `path` holds when it plainly is no file `torch.save` wrote (`"text: 'lr: 0.1'"`), else `None`.

    Only the first bytes are read. An empty or unreadable file gives `None`: it may be a torch file cut short, which
    its loader reports as such.

    Examples:
        >>> import tempfile, os
        >>> with tempfile.NamedTemporaryFile("w", suffix=".pth", delete=False) as file:
        ...     _ = file.write("lr: 0.1")
        >>> not_a_torch_file(file.name)
        "text: 'lr: 0.1'"
        >>> os.remove(file.name)
    """
    try:
        with open(path, "rb") as fp:
            head = fp.read(256)
    except OSError:  # missing or unreadable: for the loader to report
        return None
    if not head or head.startswith(_TORCH_FILE_STARTS):
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 3:  # not just a character cut at the end of what was read
            return "binary data that is neither a zip archive nor a pickle"
        text = head[: error.start].decode("utf-8")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"text: {first[:60]!r}"


class _ChecksumWriter:
    """File wrapper that keeps a running CRC-32 and length of what is written through it.

    The first `OSError` a write raises is kept in `error`: `torch.save` replaces it with an internal message of its
    own ("unexpected pos ..."), and the `OSError` (disk full, file too large) is the one worth reporting.
    """

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.crc = 0
        self.length = 0
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        self.crc = zlib.crc32(data, self.crc)
        self.length += len(data)
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self) -> None:
        self.file.flush()


def verify_checksum(path: PathStr) -> bool:
    """Check a torch file written by [`save`][danling.utils.io.save] against its CRC-32 trailer.

    Returns:
        `True` if the file has a trailer and matches it, `False` if it has none (a file written elsewhere).

    Raises:
        CorruptFileError: If the file is shorter than its trailer says, or its content does not match.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size < _TRAILER_SIZE:
        return False
    with open(path, "rb") as fp:
        fp.seek(size - _TRAILER_SIZE)
        trailer = fp.read(_TRAILER_SIZE)
        if trailer[:4] != _TRAILER_MAGIC:
            return False
        expected_crc = int.from_bytes(trailer[4:8], "little")
        expected_length = int.from_bytes(trailer[8:], "little")
        if expected_length != size - _TRAILER_SIZE:
            raise CorruptFileError(
                f"{path!r} is truncated or damaged: expected {expected_length} bytes before its trailer"
            )
        # Mapped rather than read: the checksum runs over the page cache without copying the file.
        with (
            mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ) as mapped,
            memoryview(mapped) as view,
            view[:expected_length] as payload,
        ):
            crc = zlib.crc32(payload)
    if crc != expected_crc:
        raise CorruptFileError(f"{path!r} is corrupted: its checksum does not match its content")
    return True


# `mkstemp` makes files readable by their owner only; a saved file gets the mode `open()` would give it instead.
# Read once, at import: reading the umask means setting it, which would race with other threads creating files.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _naming(error: BaseException, path: str, prefix: str | None = None) -> BaseException:
    """`error` if its message names `path`, else an exception like it whose message does.

    The new message is `"{prefix}: {original message}"`, `prefix` defaulting to `"cannot write '{path}'"`.

    The replacement has the type of `error` when that type can be built from a message (an `OSError` keeps its
    `errno`, so `PermissionError` stays `PermissionError`); otherwise it is a `RuntimeError` that names the
    original type. The caller raises it `from error`, so the original and its traceback stay in the chain.
    Interrupts and exits (`KeyboardInterrupt`, `SystemExit`, anything not an `Exception`) and the iteration
    protocol's `StopIteration` pass through unchanged.
    """
    if not isinstance(error, Exception) or isinstance(error, (StopIteration, StopAsyncIteration)):
        return error
    message = str(error)
    if _names(message, path):
        return error
    prefix = prefix or f"cannot write {path!r}"
    if isinstance(error, OSError) and error.errno is not None:
        arguments: tuple = (error.errno, f"{prefix}: {error.strerror or message}")
    else:
        arguments = (f"{prefix}: {message or type(error).__name__}",)
    try:
        renamed: BaseException = type(error)(*arguments)
    except Exception:  # a constructor that wants other arguments (UnicodeError, say): wrap it instead
        renamed = error
    if renamed is error or not _names(str(renamed), path):
        renamed = RuntimeError(f"{prefix}: {type(error).__name__}: {message}")
    return renamed


def _names(message: str, path: str) -> bool:
    return path in message or repr(path) in message


def fsync_dir(directory: PathStr) -> None:
    """Flush a directory entry to disk, so that a rename inside it is durable.

    Platforms that cannot open a directory (Windows) skip this silently: there the rename is already durable.
    """
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        # Some filesystems (and all directories on some platforms) refuse fsync on a directory; nothing to do.
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: PathStr, mode: str = "wb", encoding: str | None = None, spare: bool = False) -> Iterator[IO]:
    """Open a temporary file beside `path`; on success, make it `path` in one rename.

    If the block raises, the temporary file is removed and `path` is untouched. Every exception that leaves names
    `path` in its message: one that does not is re-raised as the same type with `path` added (an `OSError` keeps
    its `errno`), or, for a type that cannot be built from a message, as a `RuntimeError`; the original is its
    `__cause__`. Interrupts such as `KeyboardInterrupt` pass through unchanged.

    With `spare=True`, the file `path` replaces is kept as `.{name}.spare` and the next write goes into it in
    place. For a file rewritten again and again (a checkpoint saved every few steps), rewriting pages already in
    the page cache is much cheaper than allocating a new file each time; the price is one more file of the same
    size on disk. A file that is also reachable under another name (a hard link such as `best.pth`) is never
    reused, so nothing but `path` itself ever changes.

    Args:
        path: Destination file.
        mode: `"wb"` or `"w"`.
        encoding: Text encoding when `mode` is `"w"` (defaults to UTF-8).
        spare: Keep the replaced file and write into it next time.

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "a.txt")
        >>> with atomic_write(path, "w") as fp:
        ...     _ = fp.write("hello")
        >>> open(path).read()
        'hello'
    """
    path = os.fspath(path)
    if mode not in ("w", "wb"):
        raise ValueError(f"cannot write {path!r}: atomic_write mode must be 'w' or 'wb', got {mode!r}")
    directory = os.path.dirname(os.path.abspath(path))
    spare_path = os.path.join(directory, f".{os.path.basename(path)}.spare")
    retiring = os.path.join(directory, f".{os.path.basename(path)}.retiring")
    try:
        os.makedirs(directory, exist_ok=True)
        if spare and _only_name(spare_path):
            fd, tmp_path = os.open(spare_path, os.O_WRONLY), spare_path
        else:
            fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
            os.chmod(tmp_path, 0o666 & ~_UMASK)
    except OSError as error:
        raise _naming(error, path) from error
    try:
        with os.fdopen(fd, mode, encoding=encoding or ("utf-8" if mode == "w" else None)) as fp:
            yield fp
            fp.truncate()  # a reused spare may be longer than what was written into it
            fp.flush()
            os.fsync(fp.fileno())
        keep = spare and _only_name(path)
        if keep:
            with suppress(FileNotFoundError):
                os.unlink(retiring)  # left by a crash between the renames below
            os.link(path, retiring)
        os.replace(tmp_path, path)
        if keep:
            os.replace(retiring, spare_path)
    except BaseException as error:
        for leftover in (tmp_path, retiring):
            with suppress(FileNotFoundError):
                os.unlink(leftover)
        renamed = _naming(error, path)
        if renamed is error:
            raise
        raise renamed from error
    fsync_dir(directory)


def remove_stale_temporaries(directory: PathStr) -> list[str]:
    """Delete the temporary files that writers killed mid-write left in `directory`; return their paths.

    Only names this module creates are touched (`.{name}.*.tmp`, `.{name}.retiring`, `.{name}.*.link`); spare
    files are kept for reuse. Call it only where no other process is writing to `directory`.
    """
    removed: list[str] = []
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return removed
    for name in os.listdir(directory):
        if name.startswith(".") and name.endswith((".tmp", ".retiring", ".link")):
            path = os.path.join(directory, name)
            with suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(path)
    return removed


def _only_name(path: str) -> bool:
    """Whether `path` is a regular file that no other name links to."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(status.st_mode) and status.st_nlink == 1


def atomic_copy(source: PathStr, destination: PathStr) -> None:
    """Make `destination` a copy of `source` atomically, by a hard link where the filesystem allows it.

    Files written through [`atomic_write`][danling.utils.io.atomic_write] are never modified in place, so a hard
    link is as good as a copy: replacing `source` later gives it a new inode and leaves `destination` alone.

    A failure (a missing `source`, an unwritable directory) raises with both paths in the message, as the same
    type (`FileNotFoundError` stays `FileNotFoundError`); no temporary file is left and `destination` is intact.
    """
    source, destination = os.fspath(source), os.fspath(destination)
    directory = os.path.dirname(os.path.abspath(destination))
    tmp_path = os.path.join(directory, f".{os.path.basename(destination)}.{os.getpid()}.link")
    try:
        try:
            os.link(source, tmp_path)
        except FileExistsError:
            os.unlink(tmp_path)
            os.link(source, tmp_path)
        except OSError:
            # Filesystems without hard links: fall back to a real, fsynced copy.
            with open(source, "rb") as src, atomic_write(destination) as dst:
                shutil.copyfileobj(src, dst, length=16 << 20)
            return
        os.replace(tmp_path, destination)
        if os.path.lexists(tmp_path):  # rename() does nothing when both names already link to the same file
            os.unlink(tmp_path)
    except BaseException as error:
        with suppress(FileNotFoundError):
            os.unlink(tmp_path)
        renamed = _naming(error, destination, f"cannot copy {source!r} to {destination!r}")
        if renamed is error:
            raise
        raise renamed from error
    fsync_dir(directory)


def to_builtin(obj: Any) -> Any:
    """Convert tensors, arrays, numpy scalars and mappings to plain Python for JSON and YAML."""
    if isinstance(obj, Mapping):
        return {key: to_builtin(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_builtin(value) for value in obj]
    if hasattr(obj, "tolist"):  # torch.Tensor, np.ndarray, np.generic
        return obj.tolist()
    if hasattr(obj, "value") and hasattr(obj, "name") and type(obj).__module__ != "builtins":  # Enum
        return obj.value
    return obj


def is_json_serializable(obj: Any) -> bool:
    """Whether `json.dumps` accepts `obj` as it is.

    Examples:
        >>> is_json_serializable({"a": [1, 2.0, None]})
        True
        >>> is_json_serializable({1, 2})
        False
    """
    try:
        json.dumps(obj)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def _save_json(obj: Any, path: str, **kwargs: Any) -> None:
    kwargs.setdefault("indent", 4)
    with atomic_write(path, "w") as fp:
        json.dump(to_builtin(obj), fp, **kwargs)


def _save_yaml(obj: Any, path: str, **kwargs: Any) -> None:
    kwargs.setdefault("sort_keys", False)
    with atomic_write(path, "w") as fp:
        yaml.safe_dump(to_builtin(obj), fp, **kwargs)


def _save_torch(obj: Any, path: str, spare: bool = False, **kwargs: Any) -> None:
    import torch

    with atomic_write(path, spare=spare) as fp:
        writer = _ChecksumWriter(fp)
        try:
            torch.save(obj, writer, **kwargs)  # type: ignore[arg-type]
        except Exception:
            if writer.error is not None:
                raise writer.error from None  # torch's own message would hide it
            raise
        fp.write(_TRAILER_MAGIC + writer.crc.to_bytes(4, "little") + writer.length.to_bytes(8, "little"))


def _save_npy(obj: Any, path: str, **kwargs: Any) -> None:
    with atomic_write(path) as fp:
        np.save(fp, obj, **kwargs)


def _save_npz(obj: Any, path: str, **kwargs: Any) -> None:
    with atomic_write(path) as fp:
        if isinstance(obj, Mapping):
            np.savez(fp, **obj, **kwargs)
        else:
            np.savez(fp, obj, **kwargs)


def _save_text(obj: Any, path: str, **kwargs: Any) -> None:
    with atomic_write(path, "w") as fp:
        fp.write(obj if isinstance(obj, str) else "\n".join(map(str, obj)) if isinstance(obj, list) else str(obj))


def _load_json(path: str, **kwargs: Any) -> Any:
    with open(path, encoding="utf-8") as fp:
        return json.load(fp, **kwargs)


def _load_yaml(path: str, **kwargs: Any) -> Any:
    with open(path, encoding="utf-8") as fp:
        return yaml.safe_load(fp, **kwargs)


def _load_torch(path: str, verify: bool = True, **kwargs: Any) -> Any:
    import pickle

    import torch

    # The checksum runs in a thread beside torch.load (zlib releases the GIL), so verifying costs little wall time;
    # nothing is returned before it has passed.
    verification = _Verification(path) if verify else None
    # Loading a checkpoint must never run code from the file.
    kwargs.setdefault("weights_only", True)
    kwargs.setdefault("map_location", "cpu")
    try:
        loaded = torch.load(path, **kwargs)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
        if verification is not None:
            verification.result()  # a damaged file is best reported by its checksum
        content = not_a_torch_file(path)
        if content is not None:
            # Not from torch.save at all (a YAML file named .pth, say): torch's advice to retry with weights_only=False
            # would only run whatever the file holds, so it is left out of the chain.
            raise ValueError(f"cannot load {path!r}: it is not a torch file, it holds {content}") from None
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            raise  # a file that is intact but holds objects that are not plain data: not a corruption
        raise CorruptFileError(f"{path!r} is truncated or corrupted: {error}") from error
    if verification is not None:
        verification.result()
    return loaded


class _Verification:
    """`verify_checksum(path)` running in a background thread; `result()` waits and re-raises its error."""

    def __init__(self, path: str) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(path,), daemon=True)
        self.thread.start()

    def _run(self, path: str) -> None:
        try:
            verify_checksum(path)
        except BaseException as error:  # handed to the caller's thread by result()
            self.error = error

    def result(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error


def _load_npy(path: str, **kwargs: Any) -> Any:
    return np.load(path, **kwargs)


def _load_text(path: str, **kwargs: Any) -> Any:
    with open(path, encoding="utf-8") as fp:
        return fp.read()


SAVERS: dict[str, Callable[..., None]] = {
    "json": _save_json,
    "yaml": _save_yaml,
    "yml": _save_yaml,
    "pth": _save_torch,
    "pt": _save_torch,
    "ckpt": _save_torch,
    "npy": _save_npy,
    "npz": _save_npz,
    "txt": _save_text,
}

LOADERS: dict[str, Callable[..., Any]] = {
    "json": _load_json,
    "yaml": _load_yaml,
    "yml": _load_yaml,
    "pth": _load_torch,
    "pt": _load_torch,
    "ckpt": _load_torch,
    "npy": _load_npy,
    "npz": _load_npy,
    "txt": _load_text,
}


def _extension(path: str, table: Mapping[str, Any], action: str) -> str:
    extension = os.path.splitext(path)[1].lstrip(".").lower()
    if extension not in table:
        raise ValueError(
            f"cannot {action} {path!r}: unknown extension {extension!r}; expected one of: {', '.join(table)}"
        )
    return extension


def save(obj: Any, file: PathStr, *args: Any, **kwargs: Any) -> PathStr:
    """Save `obj` to `file`, in the format its extension names, atomically.

    Supported: `json`, `yaml`/`yml`, `pth`/`pt`/`ckpt` (torch), `npy`, `npz`, `txt`. Extra arguments go to the
    underlying writer (`indent` for JSON, for instance).

    Returns:
        `file`.

    Raises:
        ValueError: If the extension is not supported.
        OSError: If the file cannot be written (permission denied, disk full, file too large).

    Whatever the error (an object that cannot be pickled, too), its message names the path, no temporary file is
    left behind and any earlier file is intact, byte for byte.

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "result.json")
        >>> _ = save({"acc": 0.9}, path)
        >>> load(path)
        {'acc': 0.9}
    """
    path = os.fspath(file)
    saver = SAVERS[_extension(path, SAVERS, "save")]
    try:
        saver(obj, path, *args, **kwargs)
    except BaseException as error:  # arguments the writer refuses fail before `atomic_write` can name the path
        renamed = _naming(error, path)
        if renamed is error:
            raise
        raise renamed from error
    return file


def load(file: PathStr, *args: Any, **kwargs: Any) -> Any:
    """Load `file` in the format its extension names.

    Torch files load with `weights_only=True` and onto the CPU unless told otherwise, so a checkpoint from an
    untrusted source cannot run code. Torch files written by [`save`][danling.utils.io.save] carry a CRC-32,
    checked before loading (pass `verify=False` to skip it).

    Raises:
        FileNotFoundError: If `file` does not exist.
        ValueError: If the extension is not supported.
        CorruptFileError: If a torch file is truncated or corrupted; the message names it.
    """
    path = os.fspath(file)
    loader = LOADERS[_extension(path, LOADERS, "load")]
    if not os.path.exists(path):
        raise FileNotFoundError(f"cannot load {path!r}: no such file")
    return loader(path, *args, **kwargs)
