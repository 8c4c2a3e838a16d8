"""Read the current git commit without needing the `git` program."""

from __future__ import annotations

import hashlib
import os
import subprocess
from functools import lru_cache
from typing import Any

__all__ = ["get_git_hash", "git_state"]


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


def git_state(path: str | None = None) -> dict[str, Any] | None:
    """The code a run starts with: `{"commit", "dirty", "diff_sha256"}` for the repository containing `path`.

    `diff_sha256` hashes the uncommitted changes to tracked files (`git diff HEAD`), so two launches at the same
    commit with different edits can be told apart; it is `None` for a clean tree, and when the `git` program is not
    available (`dirty` is then `None` too: unknown). Returns `None` outside a repository.

    Examples:
        >>> import tempfile
        >>> git_state(tempfile.mkdtemp()) is None
        True
    """
    directory = os.path.abspath(path or os.getcwd())
    commit = get_git_hash(directory)
    if commit is None:
        return None
    try:
        diff = subprocess.run(
            ["git", "diff", "HEAD", "--binary", "--no-color", "--no-ext-diff"],
            cwd=directory,
            capture_output=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        # No git program, or a repository it cannot read: the commit is still known.
        return {"commit": commit, "dirty": None, "diff_sha256": None}
    return {"commit": commit, "dirty": bool(diff), "diff_sha256": hashlib.sha256(diff).hexdigest() if diff else None}


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
