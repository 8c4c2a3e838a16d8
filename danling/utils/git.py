"""Read the current git commit without needing the `git` program."""

from __future__ import annotations

import os
from functools import lru_cache

__all__ = ["get_git_hash"]


def get_git_hash(path: str | None = None) -> str | None:
    """The commit hash checked out in the repository containing `path` (default: the working directory).

    Reads `.git` directly, so it works where git is not installed. Returns `None` outside a repository, or where
    the repository has no commit yet.

    Examples:
        >>> import tempfile
        >>> get_git_hash(tempfile.mkdtemp()) is None
        True
    """
    return _git_hash(os.path.abspath(path or os.getcwd()))


@lru_cache(maxsize=32)
def _git_hash(directory: str) -> str | None:
    # Cached per directory: every Config construction asks, and the answer only changes with a new commit.
    git_dir = _find_git_dir(directory)
    if git_dir is None:
        return None
    try:
        with open(os.path.join(git_dir, "HEAD"), encoding="utf-8") as fp:
            head = fp.read().strip()
    except OSError:
        return None
    if not head.startswith("ref:"):
        return head or None
    ref = head[4:].strip()
    ref_path = os.path.join(git_dir, ref)
    if os.path.isfile(ref_path):
        with open(ref_path, encoding="utf-8") as fp:
            return fp.read().strip() or None
    return _packed_ref(git_dir, ref)


def _find_git_dir(directory: str) -> str | None:
    while True:
        candidate = os.path.join(directory, ".git")
        if os.path.isdir(candidate):
            return candidate
        if os.path.isfile(candidate):  # a worktree or submodule: ".git" holds "gitdir: <path>"
            with open(candidate, encoding="utf-8") as fp:
                content = fp.read().strip()
            if content.startswith("gitdir:"):
                return os.path.normpath(os.path.join(directory, content[7:].strip()))
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


def _packed_ref(git_dir: str, ref: str) -> str | None:
    # Worktrees keep their refs in the common directory.
    common = git_dir
    common_file = os.path.join(git_dir, "commondir")
    if os.path.isfile(common_file):
        with open(common_file, encoding="utf-8") as fp:
            common = os.path.normpath(os.path.join(git_dir, fp.read().strip()))
    for directory in dict.fromkeys((git_dir, common)):
        ref_path = os.path.join(directory, ref)
        if os.path.isfile(ref_path):
            with open(ref_path, encoding="utf-8") as fp:
                return fp.read().strip() or None
        packed = os.path.join(directory, "packed-refs")
        if os.path.isfile(packed):
            with open(packed, encoding="utf-8") as fp:
                for line in fp:
                    parts = line.strip().split(" ")
                    if len(parts) == 2 and parts[1] == ref:
                        return parts[0]
    return None
