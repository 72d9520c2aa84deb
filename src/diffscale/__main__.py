"""``python -m diffscale``: the same as the ``diffscale`` command."""

from diffscale.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
