"""Errors that theralens reports to users as one clear line.

Every problem with a user's input (a file, a column, a row, a therapist, a config key or a
model specification) raises :class:`InputError`. The command-line interface prints its
message as a single line on stderr and exits with status 2; the Python API lets it
propagate. The message names where the problem is and how to fix it.
"""

from __future__ import annotations


class InputError(ValueError):
    """A problem with the user's input, stated as one line: where it is and how to fix it."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ModelSpecError(InputError):
    """A model the engine cannot fit as written (e.g. crossed grouping factors)."""
