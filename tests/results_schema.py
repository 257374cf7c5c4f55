"""Every results.json a test writes is checked against the shipped JSON Schema (imported by
the conftest files of the report and CLI tests)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema

from theralens.study.document import schema


def documents_under(folder: Path) -> Iterator[tuple[Path, object]]:
    """(path, parsed document) of every results.json under ``folder`` that theralens wrote (a
    JSON object with ``schema_version``; tests also leave placeholders of "an earlier run")."""
    for path in sorted(folder.rglob("results.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(doc, dict) and "schema_version" in doc:
            yield path, doc


def check_documents_under(folder: Path) -> int:
    """Validate every results.json under ``folder`` against the schema; the number checked."""
    validator = jsonschema.Draft202012Validator(schema())
    n = 0
    for path, doc in documents_under(folder):
        error = next(validator.iter_errors(doc), None)
        assert error is None, f"{path}: {error.message} at {'/'.join(map(str, error.absolute_path))}"
        n += 1
    return n
