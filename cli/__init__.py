"""The `hark` command line: one module per group of commands over functions in their layers."""

from hark.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
