"""Every ``DsocrError`` class defined so far, for the tests of the edges' tables (status, exit code)."""

from __future__ import annotations

from dsocr.errors import DsocrError


def all_error_classes() -> list[type[DsocrError]]:
    """``DsocrError`` and every subclass imported by now (import the modules that define them first)."""
    found: list[type[DsocrError]] = []
    pending: list[type[DsocrError]] = [DsocrError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found
