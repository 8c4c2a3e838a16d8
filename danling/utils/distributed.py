"""Distributed plumbing: the one module (besides DDP wrapping) that talks to `torch.distributed`.

Every function works unchanged on a single process, where it is the identity (or a no-op). The device a
collective runs on follows the backend: tensors go to the CPU for `gloo` and to the current CUDA device for
`nccl`, and come back on the device they came from.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import socket
import sys
import time
import weakref
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from uuid import uuid4

import torch
from torch import distributed as dist

__all__ = [
    "all_gather_object",
    "all_reduce_max",
    "all_reduce_max_async",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "broadcast_module",
    "broadcast_object",
    "check_shared_directory",
    "collective_device",
    "destroy_process_group_at_exit",
    "gather_tensor",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "host_group",
    "init_process_group",
    "is_connection_failure",
    "is_distributed",
    "is_timeout",
    "unanswered_ranks",
]

CONNECTION_FAILURES = (
    "connectFullMesh failed",
    "Connection refused",
    "timed out connecting",
    "Connection reset by peer",
)
"""Phrases of the errors (`RuntimeError`, `DistBackendError`) a process group raises when its processes could not
connect to each other: the only errors [`init_process_group`][danling.utils.distributed.init_process_group] retries."""

# Torch's default timeout of a process group (gloo's; nccl's is shorter), in seconds.
_GLOO_DEFAULT_TIMEOUT = 1800.0

# The store key counting the processes at a try, and the least time they wait for each other there: a process can
# wait out a failed try for longer than the group's timeout (gloo's own connection timeout).
_ARRIVED = "arrived"
_MIN_MEETING = 300.0

# The timeout the default group was created with by `init_process_group`, for the groups made from it.
_group_timeout: timedelta | None = None


def is_connection_failure(error: BaseException) -> bool:
    """Whether `error` says the processes of a group could not connect to each other (worth trying again).

    Examples:
        >>> is_connection_failure(RuntimeError("Gloo connectFullMesh failed with ... Connection refused"))
        True
        >>> is_connection_failure(ValueError("Connection refused"))
        False
        >>> is_connection_failure(RuntimeError("Timed out waiting 3000ms for recv operation to complete"))
        False
    """
    return _says(error, CONNECTION_FAILURES)


def _says(error: BaseException, phrases: tuple[str, ...]) -> bool:
    # torch raises its distributed errors as RuntimeError subclasses that only their messages tell apart.
    return isinstance(error, RuntimeError) and any(phrase in str(error) for phrase in phrases)


def init_process_group(
    backend: str,
    *,
    world_size: int,
    rank: int,
    init_method: str | None = None,
    timeout: float | None = None,
    retries: int = 3,
    backoff: float = 1.0,
    **kwargs: Any,
) -> None:
    """Create the default process group, trying again when its processes fail to connect.

    The store comes from `init_method` (`env://`, which `torchrun` describes, when `None`), and every try keys its
    rendezvous by the launcher's restart (`TORCHELASTIC_RESTART_COUNT`) and by the try. Under `torchrun`'s default
    (static) rendezvous the store outlives the workers, and without those keys a restarted worker can read the
    address a killed one left there and fail with `Gloo connectFullMesh failed ... Connection refused`: a restart
    spent on nothing. A connection failure ([`is_connection_failure`][danling.utils.distributed.is_connection_failure])
    is tried again up to `retries` times, after `backoff`, `2 * backoff`, ... seconds, each announced in one line on
    stderr; a half-made group is destroyed first. Any other error is raised at once.

    Args:
        backend: `gloo`, `nccl`, ...
        world_size: Number of processes in the group.
        rank: Rank of this process.
        init_method: URL of the rendezvous; `None` reads `MASTER_ADDR` and `MASTER_PORT` from the environment.
        timeout: Seconds a collective (and the rendezvous) may wait for the other processes; `None` is torch's
            default (10 minutes for `nccl`, 30 for `gloo`).
        retries: Tries after the first.
        backoff: Seconds before the first retry; each later one waits twice as long as the one before.
        **kwargs: Passed to `torch.distributed.init_process_group` (such as `device_id`).
    """
    global _group_timeout
    limit = timedelta(seconds=timeout) if timeout is not None else None
    store_timeout = {"timeout": limit} if limit is not None else {}
    # One store for every try: under a plain `env://` launch, rank 0 serves it on MASTER_PORT and cannot bind twice.
    store, _, _ = next(dist.rendezvous(init_method or "env://", rank=rank, world_size=world_size, **store_timeout))
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")

    def tried(attempt: int) -> Any:
        return dist.PrefixStore(f"danling/restart{restart}/try{attempt}", store)

    # The tries are agreed through the store: a process that failed at once counts itself at the next try and waits
    # there for the others, which may wait out the try before for a while (gloo's connection timeout), and a process
    # that comes late joins the try the others have gone on to, not one they left. Without that the tries leapfrog.
    meeting = 2 * timeout if timeout is not None else _GLOO_DEFAULT_TIMEOUT
    attempt = next((later for later in range(retries, 0, -1) if tried(later).add(_ARRIVED, 0)), 0)
    counted = False
    counted_groups = _group_count()
    while True:
        keyed = tried(attempt)
        if attempt:
            if not counted:
                keyed.add(_ARRIVED, 1)
            _meet(keyed, world_size, rank, attempt, max(meeting, _MIN_MEETING))
        try:
            dist.init_process_group(backend, store=keyed, world_size=world_size, rank=rank, timeout=limit, **kwargs)
        except RuntimeError as error:  # DistBackendError and DistNetworkError are RuntimeErrors
            if attempt == retries or not is_connection_failure(error):
                raise
            if dist.is_initialized():
                dist.destroy_process_group()
            # A failed try still counted a group; the default group's name comes from that count, and a process
            # that joins at a later try (counting none) must meet a group of the same name.
            _forget_groups(counted_groups)
            delay = backoff * 2**attempt
            attempt += 1
            tried(attempt).add(_ARRIVED, 1)  # before the line below, which a test waits for to start a late process
            counted = True
            reason = str(error).strip().splitlines()[0][:200]
            print(
                f"danling: rank {rank}: the process group failed to connect ({reason}); "
                f"retrying the process group in {delay:g} s (try {attempt + 1} of {retries + 1})",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(delay)
        else:
            _group_timeout = limit
            return


def _group_count() -> int | None:
    world = getattr(dist.distributed_c10d, "_world", None)
    return getattr(world, "group_count", None)


def _forget_groups(count: int | None) -> None:
    if count is not None:
        dist.distributed_c10d._world.group_count = count


def _meet(store: Any, world_size: int, rank: int, attempt: int, timeout: float) -> None:
    """Wait until every process has come to try `attempt + 1` (counted in `store`), for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (arrived := store.add(_ARRIVED, 0)) < world_size:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"rank {rank}: {world_size - arrived} of {world_size} processes never came to try {attempt + 1} of "
                f"the process group within {timeout:g} s"
            )
        time.sleep(0.05)


TIMEOUTS = ("Timed out waiting", "timed out after", "wait timeout", "Watchdog caught collective operation timeout")
"""Phrases of the errors a collective (gloo, nccl) or the store raises when other processes did not come in time."""


def is_timeout(error: BaseException) -> bool:
    """Whether `error` is a collective or store timeout ([`TIMEOUTS`][danling.utils.distributed.TIMEOUTS]).

    Examples:
        >>> is_timeout(RuntimeError("[../gloo/transport/tcp/pair.cc:534] Timed out waiting 4000ms for recv operation"))
        True
        >>> is_timeout(RuntimeError("CUDA out of memory"))
        False
    """
    return _says(error, TIMEOUTS)


def unanswered_ranks(wait: float = 5.0) -> list[int] | None:
    """The ranks that do not answer through the process group's store within `wait` seconds, in order.

    Ask it after a collective timed out: gloo's message does not say which process is missing. Every process that
    asks answers (the others are stuck in the same collective, and time out at about the same time); a process that
    stopped, hangs or died does not. `None` when there is nothing to ask (one process, or the store is gone).
    """
    if not is_distributed():
        return None
    try:
        roll = dist.PrefixStore("danling/answered", dist.distributed_c10d._get_default_store())
        roll.set(str(get_rank()), "1")
        deadline = time.monotonic() + wait
        while True:
            missing = [rank for rank in range(get_world_size()) if not roll.check([str(rank)])]
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.1)
    except Exception:  # the store's server went away with the process that served it: nothing to tell
        return None


def is_distributed() -> bool:
    """Whether a process group is initialised and holds more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_world_size() -> int:
    """Number of processes in the default group, 1 when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def get_rank() -> int:
    """Global rank of this process, 0 when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def get_local_rank() -> int:
    """Rank of this process on its node, read from `LOCAL_RANK` as set by `torchrun`."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def collective_device() -> torch.device:
    """The device tensors must be on for a collective of the current backend."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(tensor: torch.Tensor, op: Any) -> torch.Tensor:
    if not is_distributed():
        return tensor
    reduced = tensor.detach().to(collective_device(), copy=True)
    dist.all_reduce(reduced, op=op)
    return reduced.to(tensor.device)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of `tensor` over every process, returned on the tensor's own device; the input is not modified."""
    return _all_reduce(tensor, dist.ReduceOp.SUM)


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of `tensor` over every process, on the tensor's own device; the input is not modified."""
    return _all_reduce(tensor, dist.ReduceOp.MAX)


def all_reduce_max_async(tensor: torch.Tensor, group: Any) -> dist.Work:
    """Start the element-wise maximum of the CPU `tensor` over `group`, in place, and return without waiting.

    `tensor` holds the result once the returned work's `wait()` has returned; until then it must not be touched.
    `group` is a `gloo` group such as [`host_group()`][danling.utils.distributed.host_group].
    """
    return dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=group, async_op=True)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of `tensor` over every process, returned on the tensor's own device; the input is not modified."""
    if not is_distributed():
        return tensor
    return all_reduce_sum(tensor) / get_world_size()


def gather_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every process along dimension 0, in rank order, on every process.

    Processes may hold different numbers of rows (uneven shards); the trailing dimensions must agree.
    """
    if not is_distributed():
        return tensor
    device = collective_device()
    local = tensor.detach().to(device).contiguous()
    sizes = all_gather_object(local.shape[0])
    longest = max(sizes)
    if local.shape[0] < longest:
        padding = local.new_zeros((longest - local.shape[0], *local.shape[1:]))
        local = torch.cat([local, padding])
    buffers = [torch.empty_like(local) for _ in sizes]
    dist.all_gather(buffers, local)
    return torch.cat([buffer[:size] for buffer, size in zip(buffers, sizes)]).to(tensor.device)


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's `obj`, as a list in rank order, on every process."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` as held by process `src`, on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=collective_device())
    return box[0]


# The group `host_group` made, and the default group it was made from: a new default group needs a new one.
_host_group: tuple[weakref.ref, Any] | None = None


def check_shared_directory(directory: str, what: str = "directory") -> None:
    """Raise on every process unless every process sees `directory` as the main process does. Collective.

    The main process writes a file with a fresh token into `directory` (creating it), and every process reads it
    back. Processes on several nodes must share checkpoints: sharded checkpoints are written by every process into
    the directory the main process made, and every process reads the checkpoint it resumes from; a node that sees a
    directory of its own under that name would leave a partial checkpoint. So would a relative path on processes
    started in different working directories. A no-op on one process.

    Args:
        directory: The directory every process must see.
        what: What it is, for the message (`"checkpoint directory"`, say).

    Raises:
        RuntimeError: On every process, naming the ranks (and their hosts) that name another directory than the
            main process, or that cannot see the main process's file; or the main process's failure to write it.
    """
    if not is_distributed():
        return
    token, failure = None, None
    if get_rank() == 0:
        token = uuid4().hex
        try:
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, f".danling-shared-{token}"), "w") as file:
                file.write(token)
        except OSError as error:
            failure = f"{type(error).__name__}: {error}"
    token, failure = broadcast_object((token, failure))
    if failure is not None:
        raise RuntimeError(f"the main process cannot write to the {what} {directory!r}: {failure}")
    probe = os.path.join(directory, f".danling-shared-{token}")
    try:
        with open(probe) as file:
            seen = file.read() == token
    except OSError:
        seen = False
    views = all_gather_object((seen, socket.gethostname(), directory, os.path.abspath(directory)))
    if get_rank() == 0:
        with contextlib.suppress(OSError):
            os.remove(probe)
    _, main_host, main_named, main_path = views[0]
    differing = [
        f"rank {rank} on {host} names {named!r}"
        for rank, (_, host, named, _) in enumerate(views)
        if named != main_named
    ]
    if differing:
        raise RuntimeError(
            f"the processes do not name the same {what}: the main process (on {main_host}) names {main_named!r}, "
            f"{', '.join(differing)}; every process must name the same one. A run's directory comes from its config "
            "and its id, and the id holds the git commit of each process's working directory: start every process "
            "with the same config, on the same commit"
        )
    blind = [f"rank {rank} on {host} (at {path!r})" for rank, (ok, host, _, path) in enumerate(views) if not ok]
    if blind:
        relative = (
            ""
            if os.path.isabs(directory)
            else (f"; {directory!r} is relative, so each process finds it under its own working directory")
        )
        raise RuntimeError(
            f"the {what} {main_path!r} that the main process (on {main_host}) writes is not visible to "
            f"{', '.join(blind)}{relative}: every process writes or reads checkpoints there, so put it on a "
            "filesystem every node mounts at the same absolute path (set project_root, or checkpoint_dir, to it)"
        )


def host_group() -> Any:
    """A `gloo` group of every process, for small flags exchanged on the host; `None` when not distributed.

    Created by the first call while the default group lives, which every process must make at the same point:
    creating a group is itself a collective. A group of its own, whatever the training backend: with `nccl` its
    collectives stay off the GPU and its stream; with `gloo` they still never queue behind (nor interleave with)
    the gradient reductions and gathers of training, so one left running across a step neither waits for the
    step's collectives nor delays them.
    """
    global _host_group
    if not is_distributed():
        return None
    world = dist.group.WORLD
    if _host_group is None or _host_group[0]() is not world:
        # The default group's timeout: a process that stops answering ends a wait here as it does a collective.
        _host_group = (weakref.ref(world), dist.new_group(backend="gloo", timeout=_group_timeout))
    return _host_group[1]


def barrier() -> None:
    """Wait until every process arrives here; a no-op on a single process."""
    if is_distributed():
        dist.barrier()


_teardown_callbacks: list[Callable[[], None]] = []
_teardown_registered = False


def destroy_process_group_at_exit(release: Callable[[], None] | None = None) -> None:
    """Destroy the default process group when the interpreter exits, after calling `release` (once each).

    A process group still alive at interpreter exit can abort the process (`terminate called without an active
    exception`, SIGABRT) after the script has finished, so the launcher reports a failed job. `release` drops
    objects that keep the group alive past its destruction, such as `DistributedDataParallel` wrappers.
    """
    global _teardown_registered
    if release is not None and release not in _teardown_callbacks:
        _teardown_callbacks.append(release)
    if not _teardown_registered:
        atexit.register(_tear_down)
        _teardown_registered = True


def _tear_down() -> None:
    global _host_group, _group_timeout
    for release in _teardown_callbacks:
        release()
    _teardown_callbacks.clear()
    # The released wrappers must be gone before the group is, or they keep it alive.
    gc.collect()
    _host_group = None
    _group_timeout = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Give every process the parameters and buffers `module` has on process `src`, in place.

    What `DistributedDataParallel` does when it wraps a model; a runner that shards instead (FSDP) must do it
    itself, or each process would keep its shard of differently initialised weights.
    """
    if not is_distributed():
        return
    device = collective_device()
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.device == device:
                dist.broadcast(tensor.data, src=src)
            else:
                staged = tensor.data.to(device)
                dist.broadcast(staged, src=src)
                tensor.data.copy_(staged)
