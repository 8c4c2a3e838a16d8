"""`python -m danling`: the `danling` command (see [`danling.cli`][danling.cli])."""

from danling.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
