"""Saving and loading by file extension, with every write made atomic.

A write goes to a temporary file in the destination's directory, is flushed and fsynced, and is renamed over the
destination; the directory is then fsynced so the rename itself survives a power cut. A crash at any instant leaves
either the previous file or the new one, never a truncated mix.
"""

from __future__ import annotations

import io
import json
import mmap
import os
import shutil
import stat
import struct
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
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
    "spare_file",
    "to_builtin",
]

PathStr = str | os.PathLike

# Torch files written here end with a 16-byte trailer: magic, 4 bytes, and the length of everything before it. Zip
# readers (and so `torch.load`) find their directory by scanning back from the end, so they read past it unchanged.
# - "DLCK": the 4 bytes are a CRC-32 of everything before the trailer (written when the archive has no CRC-32s).
# - "DLZ1": the archive's own per-record CRC-32s, which `torch.save` computes anyway, cover the records' data, and
#   the 4 bytes are a CRC-32 of the rest (headers, padding, directory: a few KB), so every byte is covered and the
#   save does not pay for a second pass over the data.
_TRAILER_MAGIC = b"DLCK"
_ZIP_TRAILER_MAGIC = b"DLZ1"
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
    """File wrapper that counts what is written through it and, with `checksum`, keeps its running CRC-32.

    The first `OSError` a write raises is kept in `error`: `torch.save` replaces it with an internal message of its
    own ("unexpected pos ..."), and the `OSError` (disk full, file too large) is the one worth reporting.
    """

    def __init__(self, file: IO[bytes], checksum: bool = True) -> None:
        self.file = file
        self.checksum = checksum
        self.crc = 0
        self.length = 0
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        if self.checksum:
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
    """Check a torch file written by [`save`][danling.utils.io.save] against its trailer.

    Files with a CRC-32 trailer are checked against it; files whose trailer names the archive's own checksums have
    every record checked against the CRC-32 the zip directory holds for it, and each record's local header against
    the directory, so a damaged byte anywhere `torch.load` reads is found.

    Returns:
        `True` if the file has a trailer and matches it, `False` if it has none (a file written elsewhere).

    Raises:
        CorruptFileError: If the file is shorter than its trailer says, or its content does not match.
    """
    path = os.fspath(path)
    with open(path, "rb", buffering=0) as fp:
        size = os.fstat(fp.fileno()).st_size
        if size < _TRAILER_SIZE:
            return False
        trailer = os.pread(fp.fileno(), _TRAILER_SIZE, size - _TRAILER_SIZE)
        if trailer[:4] not in (_TRAILER_MAGIC, _ZIP_TRAILER_MAGIC):
            return False
        expected_crc = int.from_bytes(trailer[4:8], "little")
        expected_length = int.from_bytes(trailer[8:], "little")
        if expected_length != size - _TRAILER_SIZE:
            raise CorruptFileError(
                f"{path!r} is truncated or damaged: expected {expected_length} bytes before its trailer"
            )
        if trailer[:4] == _ZIP_TRAILER_MAGIC:
            _verify_zip_records(fp.fileno(), expected_length, expected_crc, path)
            return True
        (crc,) = _crc32s(fp.fileno(), [(0, expected_length)])
    if crc != expected_crc:
        raise CorruptFileError(f"{path!r} is corrupted: its checksum does not match its content")
    return True


def _crc32s(fd: int, ranges: list[tuple[int, int]]) -> list[int]:
    """CRC-32 of each byte range `[start, end)` of the file `fd`, on up to `_CHECKSUM_THREADS` threads.

    The file is mapped, not read: each checksum runs over the page cache in one call that releases the GIL, so the
    threads run beside `torch.load` (which holds the GIL while it reads) and beside each other; reading through a
    buffer instead cost a copy and a GIL handover per chunk, and serialised them. Every slice is released before
    the mapping closes.
    """
    if not ranges:
        return []
    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as view:

        def crc32(bounds: tuple[int, int]) -> int:
            with view[bounds[0] : bounds[1]] as part:
                return zlib.crc32(part)

        threads = min(_CHECKSUM_THREADS, len(ranges))
        if threads == 1 or sum(end - start for start, end in ranges) < 64 << 20:
            return [crc32(bounds) for bounds in ranges]
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(crc32, ranges))


# Records are checksummed independently, so large checkpoints spread over the cores. Measured on 2 cores with 288 MiB:
# two threads beside `torch.load` verify in 48 ms instead of 101 ms, and the whole load takes 93 ms instead of 117.
_CHECKSUM_THREADS = max(1, min(8, os.cpu_count() or 1))


_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then (past version to sizes) name and extra lengths


def _zip_records(fd: int, length: int, path: str) -> list[tuple[zipfile.ZipInfo, int, int]]:
    """The records of the zip archive in the first `length` bytes of `fd`: `(record, data start, data end)` in file
    order, each local header checked against the directory."""
    try:
        with zipfile.ZipFile(_FileWindow(fd, length)) as archive:
            records = archive.infolist()
    except Exception as error:  # zipfile raises many kinds (BadZipFile, NotImplementedError, ...) on damage
        raise CorruptFileError(f"{path!r} is corrupted: its zip directory cannot be read ({error})") from None
    if not records:
        raise CorruptFileError(f"{path!r} is corrupted: its zip directory lists no records")
    layout, end = [], 0
    for record in sorted(records, key=lambda record: record.header_offset):
        start = record.header_offset
        if not end <= start <= length - _LOCAL_HEADER.size:
            raise CorruptFileError(f"{path!r} is corrupted: record {record.filename!r} is not where it should be")
        signature, name_length, extra_length = _LOCAL_HEADER.unpack(os.pread(fd, _LOCAL_HEADER.size, start))
        name_start = start + _LOCAL_HEADER.size
        data_start = name_start + name_length + extra_length
        end = data_start + record.compress_size
        if (
            signature != b"PK\x03\x04"
            or os.pread(fd, name_length, name_start) != record.orig_filename.encode("utf-8")
            or record.compress_type != zipfile.ZIP_STORED
            or record.compress_size != record.file_size
            or end > length
        ):
            raise CorruptFileError(f"{path!r} is corrupted: record {record.filename!r} does not match its header")
        layout.append((record, data_start, end))
    return layout


def _structure_crc32(fd: int, length: int, layout: list[tuple[zipfile.ZipInfo, int, int]]) -> int:
    """CRC-32 of every byte of the archive outside its records' data: headers, padding and the directory."""
    crc, position = 0, 0
    for _, start, end in [*layout, (None, length, length)]:
        crc = zlib.crc32(os.pread(fd, start - position, position), crc) if start > position else crc
        position = end
    return crc


def _verify_zip_records(fd: int, length: int, expected_crc: int, path: str) -> None:
    """Check each record's data against its CRC-32 in the zip directory, and all else against `expected_crc`."""
    layout = _zip_records(fd, length, path)
    for (record, _, _), crc in zip(layout, _crc32s(fd, [(start, end) for _, start, end in layout])):
        if crc != record.CRC:
            raise CorruptFileError(
                f"{path!r} is corrupted: its checksum does not match its content (record {record.filename!r})"
            )
    if _structure_crc32(fd, length, layout) != expected_crc:
        raise CorruptFileError(
            f"{path!r} is corrupted: its checksum does not match its content (the zip headers or directory)"
        )


class _FileWindow(io.RawIOBase):
    """The first `length` bytes of the file `fd`, read-only and seekable, so `zipfile` finds the archive's directory
    where the archive ends (before the trailer) without reading anything else."""

    def __init__(self, fd: int, length: int) -> None:
        self.fd = fd
        self.length = length
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.length}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self.position = base + offset
        return self.position

    def readinto(self, buffer: Any) -> int:
        wanted = max(0, min(len(buffer), self.length - self.position))
        with memoryview(buffer) as view:
            count = os.preadv(self.fd, [view[:wanted]], self.position) if wanted else 0
        self.position += count
        return count


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


def spare_file(path: PathStr) -> str:
    """Where [`atomic_write`][danling.utils.io.atomic_write] keeps the spare file of `path` (with `spare=True`).

    Examples:
        >>> spare_file("/runs/checkpoints/latest.pth")
        '/runs/checkpoints/.latest.pth.spare'
    """
    path = os.fspath(path)
    return os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.spare")


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
    spare_path = spare_file(path)
    retiring = os.path.join(directory, f".{os.path.basename(path)}.retiring")
    try:
        os.makedirs(directory, exist_ok=True)
        if spare and _only_name(spare_path):
            # Readable too: a torch file's trailer is computed from what was written (see `_save_torch`).
            fd, tmp_path = os.open(spare_path, os.O_RDWR), spare_path
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


def atomic_copy(source: PathStr, destination: PathStr, retire_to: PathStr | None = None) -> None:
    """Make `destination` a copy of `source` atomically, by a hard link where the filesystem allows it.

    Files written through [`atomic_write`][danling.utils.io.atomic_write] are never modified in place, so a hard
    link is as good as a copy: replacing `source` later gives it a new inode and leaves `destination` alone.

    With `retire_to`, the file `destination` named before is kept there rather than dropped, when no other name links
    it and nothing is at `retire_to` yet: as the [spare][danling.utils.io.spare_file] of another file, a `best.pth`
    replaced by a newer one is rewritten in place by the next save of `latest.pth`, instead of a new file being
    allocated (several times slower for large files).

    A failure (a missing `source`, an unwritable directory) raises with both paths in the message, as the same
    type (`FileNotFoundError` stays `FileNotFoundError`); no temporary file is left and `destination` is intact.
    """
    source, destination = os.fspath(source), os.fspath(destination)
    directory = os.path.dirname(os.path.abspath(destination))
    tmp_path = os.path.join(directory, f".{os.path.basename(destination)}.{os.getpid()}.link")
    retiring = None
    if retire_to is not None:
        retire_to = os.fspath(retire_to)
        retiring = os.path.join(os.path.dirname(retire_to), f".{os.path.basename(retire_to)}.{os.getpid()}.link")
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
        # A second name for the file about to be dropped, made before the rename: `destination` names a complete
        # file at every instant, and a crash leaves only a `.link` temporary behind.
        if retiring is None or not _only_name(destination) or os.path.lexists(retire_to):  # type: ignore[arg-type]
            retiring = None
        else:
            with suppress(FileNotFoundError):
                os.unlink(retiring)
            os.link(destination, retiring)
        os.replace(tmp_path, destination)
        if os.path.lexists(tmp_path):  # rename() does nothing when both names already link to the same file
            os.unlink(tmp_path)
        if retiring is not None:
            os.replace(retiring, retire_to)  # type: ignore[arg-type]
    except BaseException as error:
        for leftover in (tmp_path, retiring):
            if leftover is not None:
                with suppress(FileNotFoundError):
                    os.unlink(leftover)
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

    # The archive's own CRC-32s serve as the checksum when torch writes them (its default); otherwise (they are
    # turned off, or the legacy format is asked for) one CRC-32 over the whole file is computed on the way out.
    archived = torch.serialization.get_crc32_options() and kwargs.get("_use_new_zipfile_serialization", True)
    with atomic_write(path, spare=spare) as fp:
        writer = _ChecksumWriter(fp, checksum=not archived)
        try:
            torch.save(obj, writer, **kwargs)  # type: ignore[arg-type]
        except Exception:
            if writer.error is not None:
                raise writer.error from None  # torch's own message would hide it
            raise
        if archived:
            fp.flush()  # read back below: the archive's headers and directory, from the page cache
            fd = fp.fileno()
            magic, crc = (
                _ZIP_TRAILER_MAGIC,
                _structure_crc32(fd, writer.length, _zip_records(fd, writer.length, path)),
            )
        else:
            magic, crc = _TRAILER_MAGIC, writer.crc
        fp.write(magic + crc.to_bytes(4, "little") + writer.length.to_bytes(8, "little"))


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
    except BaseException as error:
        if verification is not None:
            # Never returns while the thread still reads the file; a damaged file is best reported by its checksum.
            verification.result(check=isinstance(error, Exception))
        if not isinstance(error, (RuntimeError, EOFError, OSError, pickle.UnpicklingError)):
            raise
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

    def result(self, check: bool = True) -> None:
        """Wait for the check; with `check`, re-raise its error, if any."""
        self.thread.join()
        if check and self.error is not None:
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
