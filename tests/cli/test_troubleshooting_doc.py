"""docs/troubleshooting.md lists every error message theralens can raise: for each
``raise InputError(...)`` / ``raise ModelSpecError(...)`` in src/theralens, the longest fixed
piece of its message text appears in the page verbatim."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "theralens"
DOC = ROOT / "docs" / "troubleshooting.md"


def _messages() -> list[tuple[str, str]]:
    """(file:line, longest literal piece of the message) for every raise site."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                continue
            if getattr(node.exc.func, "id", "") not in ("InputError", "ModelSpecError") or not node.exc.args:
                continue
            pieces = [n.value for n in ast.walk(node.exc.args[0])
                      if isinstance(n, ast.Constant) and isinstance(n.value, str)]
            found.append((f"{path.relative_to(SRC)}:{node.lineno}", max(pieces, key=len, default="")))
    return found


def test_every_error_message_is_documented():
    doc = " ".join(DOC.read_text(encoding="utf-8").split())
    messages = _messages()
    assert len(messages) > 100
    missing = [f"{where}: {text!r}" for where, text in messages if " ".join(text.split()) not in doc]
    assert not missing, "add these messages to docs/troubleshooting.md:\n" + "\n".join(missing)
