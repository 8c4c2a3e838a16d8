"""`danling.utils.git.get_git_hash`: read the checked-out commit from `.git`, without running git."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from danling.utils.git import get_git_hash

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(cwd, *args: str) -> str:
    env = dict(os.environ)
    env.update(
        GIT_AUTHOR_NAME="Tester",
        GIT_AUTHOR_EMAIL="tester@example.com",
        GIT_COMMITTER_NAME="Tester",
        GIT_COMMITTER_EMAIL="tester@example.com",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
    )
    completed = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return completed.stdout.strip()


def make_repo(path, commits: int = 1):
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "--quiet")
    for index in range(commits):
        (path / "file.txt").write_text(f"version {index}\n")
        git(path, "add", "file.txt")
        git(path, "commit", "--quiet", "-m", f"commit {index}")
    return path


def test_git_hash_equals_rev_parse_head(tmp_path):
    repo = make_repo(tmp_path / "repo", commits=2)
    head = git(repo, "rev-parse", "HEAD")
    assert len(head) == 40
    assert get_git_hash(str(repo)) == head


def test_git_hash_is_found_from_a_subdirectory(tmp_path):
    repo = make_repo(tmp_path / "repo")
    sub = repo / "a" / "b"
    sub.mkdir(parents=True)
    assert get_git_hash(str(sub)) == git(repo, "rev-parse", "HEAD")


def test_git_hash_works_with_packed_refs(tmp_path):
    repo = make_repo(tmp_path / "repo")
    branch = git(repo, "symbolic-ref", "HEAD")
    git(repo, "pack-refs", "--all")
    assert not (repo / ".git" / branch).exists()
    assert branch in (repo / ".git" / "packed-refs").read_text()
    assert get_git_hash(str(repo)) == git(repo, "rev-parse", "HEAD")


def test_git_hash_of_a_detached_head(tmp_path):
    repo = make_repo(tmp_path / "repo", commits=2)
    first = git(repo, "rev-parse", "HEAD~1")
    git(repo, "checkout", "--quiet", "--detach", first)
    assert get_git_hash(str(repo)) == first


def test_git_hash_in_a_worktree(tmp_path):
    repo = make_repo(tmp_path / "repo")
    worktree = tmp_path / "worktree"
    git(repo, "worktree", "add", "--quiet", "-b", "other", str(worktree))
    (worktree / "file.txt").write_text("other\n")
    git(worktree, "commit", "--quiet", "-am", "on other")
    assert (worktree / ".git").is_file()
    assert get_git_hash(str(worktree)) == git(worktree, "rev-parse", "HEAD")
    assert get_git_hash(str(worktree)) != get_git_hash(str(repo))


def test_git_hash_is_none_in_a_repository_without_commits(tmp_path):
    repo = tmp_path / "empty"
    repo.mkdir()
    git(repo, "init", "--quiet")
    assert get_git_hash(str(repo)) is None


def test_git_hash_is_none_outside_a_repository(tmp_path):
    assert get_git_hash(str(tmp_path)) is None


def test_git_hash_defaults_to_the_current_directory_and_follows_chdir(tmp_path, monkeypatch):
    first = make_repo(tmp_path / "first")
    second = make_repo(tmp_path / "second", commits=2)
    monkeypatch.chdir(first)
    assert get_git_hash() == git(first, "rev-parse", "HEAD")
    monkeypatch.chdir(second)
    assert get_git_hash() == git(second, "rev-parse", "HEAD")
    monkeypatch.chdir(tmp_path)
    assert get_git_hash() is None
