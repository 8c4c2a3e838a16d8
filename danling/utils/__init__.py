"""Utilities the runner is built on: file IO, decorators, seeding and distributed plumbing."""

from . import distributed
from .basex import base62_decode, base62_encode, get_time_str
from .contextmanagers import debug
from .decorators import catch, ensure_dir, flexible_decorator, method_cache, on_local_main_process, on_main_process
from .distributed import get_local_rank, get_rank, get_world_size, is_distributed
from .git import get_git_hash
from .io import atomic_copy, atomic_write, is_json_serializable, load, save
from .seed import get_rng_state, seed_everything, set_rng_state

__all__ = [
    "atomic_copy",
    "atomic_write",
    "base62_decode",
    "base62_encode",
    "catch",
    "debug",
    "distributed",
    "ensure_dir",
    "flexible_decorator",
    "get_git_hash",
    "get_local_rank",
    "get_rank",
    "get_rng_state",
    "get_time_str",
    "get_world_size",
    "is_distributed",
    "is_json_serializable",
    "load",
    "method_cache",
    "on_local_main_process",
    "on_main_process",
    "save",
    "seed_everything",
    "set_rng_state",
]
