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


def closest(name: str, options: list[str] | tuple[str, ...]) -> str | None:
    """The option a mistyped ``name`` most likely meant (same letters in another case first,
    then the closest by ``difflib``, similarity at least 0.5), or None."""
    import difflib

    texts = [str(o) for o in options]
    lowered = {t.lower(): t for t in texts}
    if str(name).lower() in lowered:
        return lowered[str(name).lower()]
    match = difflib.get_close_matches(str(name), texts, n=1, cutoff=0.5)
    return match[0] if match else None
