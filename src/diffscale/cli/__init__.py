"""The ``diffscale`` command-line tool: ``train``, ``sample`` and ``demo`` (see :mod:`diffscale.cli.main`)."""

from diffscale.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
