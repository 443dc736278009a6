"""The ``upres`` command: ``app`` builds the parser and dispatches; the commands live by group
(``images``, ``training``, ``competition``), each parser beside its handler."""

from upres.cli.app import build_parser, main, main_entry

__all__ = ["build_parser", "main", "main_entry"]
