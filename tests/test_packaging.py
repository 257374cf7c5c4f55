"""Every third-party import in src/theralens is declared in pyproject.toml.

A module imported unconditionally must come from a core dependency. An optional one (an
extra, or a package theralens never installs, such as xlrd) may only be imported inside
``try: ... except ImportError`` whose handler raises one line with the install command:
``pip install 'theralens[<extra>]'`` for an extra, ``pip install <package>`` otherwise; a
package of an extra may also be imported inside a function of a file that raises that
install line (a check first, then the import). A core dependency that applies to some
Pythons only (``tomli; python_version < "3.11"``) must be guarded too, since it is absent
elsewhere.
"""

from __future__ import annotations

import ast
import re
import sys
from functools import cache
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "theralens"
STDLIB = set(sys.stdlib_module_names) | {"tomllib"}  # tomllib: standard library from 3.11


def _norm(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _with_extras(req: Requirement) -> set[str]:
    """The distribution and, for ``pkg[extra]``, what pkg's installed metadata requires for that extra."""
    names = {_norm(req.name)}
    if req.extras:
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            requires = []
        for line in requires:
            sub = Requirement(line)
            if sub.marker is not None and any(sub.marker.evaluate({"extra": e}) for e in req.extras):
                names.add(_norm(sub.name))
    return names


def _declared() -> tuple[dict[str, Requirement], dict[str, set[str]]]:
    """(core distribution -> requirement, extra -> distributions), extras of theralens itself expanded."""
    project = _pyproject()
    core: dict[str, Requirement] = {}
    for line in project["dependencies"]:
        req = Requirement(line)
        for name in _with_extras(req):
            core.setdefault(name, req)
    raw = {extra: [Requirement(r) for r in reqs] for extra, reqs in project["optional-dependencies"].items()}
    extras: dict[str, set[str]] = {}
    for extra, reqs in raw.items():
        names: set[str] = set()
        for req in reqs:
            if _norm(req.name) == "theralens":
                names |= {_norm(r.name) for e in req.extras for r in raw[e]}
            else:
                names |= _with_extras(req)
        extras[extra] = names
    return core, extras


@cache
def _installed() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def _distribution(module: str) -> str:
    """The distribution that installs ``module`` (its own name when it is not installed here)."""
    found = _installed().get(module)
    return _norm(found[0]) if found else _norm(module)


def _imports(path: Path) -> list[tuple[str, int, str | None, bool, bool]]:
    """(top-level module, line, handler source or None, is a fallback, inside a function) for
    every absolute import in one file.

    The handler source is the text of the ``except ImportError`` clauses of the ``try`` that
    holds the import, or None when the import is not guarded; a fallback is an import inside
    such a handler.
    """
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    guard: dict[int, str] = {}
    fallback: set[int] = set()
    lazy = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            for inner in ast.walk(node) if isinstance(inner, ast.Import | ast.ImportFrom)}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        handlers = [h for h in node.handlers if h.type is not None and any(
            isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in ast.walk(h.type))]
        if not handlers:
            continue
        text = "\n".join(ast.get_source_segment(source, h) or "" for h in handlers)
        for stmt in node.body:
            for inner in ast.walk(stmt):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    guard[id(inner)] = text
        for handler in handlers:  # the fallback (import tomli as tomllib) runs only where the first is missing
            for inner in ast.walk(handler):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    fallback.add(id(inner))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        for m in modules:
            found.append((m.split(".")[0], node.lineno, guard.get(id(node)), id(node) in fallback, id(node) in lazy))
    return found


def _problems() -> list[str]:
    core, extras = _declared()
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        for module, line, handler, is_fallback, in_function in _imports(path):
            if module in STDLIB or module == "theralens" or module == "__future__":
                continue
            dist = _distribution(module)
            where = f"{path.relative_to(ROOT)}:{line} imports {module} ({dist})"
            if dist in core:
                marker = core[dist].marker
                if marker is not None and handler is None and not is_fallback:
                    problems.append(f"{where}: declared only for {marker}, so guard it with except ImportError")
                continue
            in_extras = sorted(e for e, names in extras.items() if dist in names and e not in ("dev", "all"))
            if handler is None and in_function and "InputError" in source and any(
                    f"pip install 'theralens[{e}]'" in source for e in in_extras):
                continue  # a lazy import after the file's own check with the install line
            if handler is None:
                hint = f"the extra {in_extras[0]!r}" if in_extras else "dependencies"
                problems.append(f"{where}: not a core dependency; declare it in {hint} or guard the import")
                continue
            if "InputError" not in handler:
                problems.append(f"{where}: the except ImportError must raise InputError with the install command")
            elif in_extras:
                if not any(f"pip install 'theralens[{e}]'" in handler for e in in_extras):
                    problems.append(f"{where}: the message must say pip install 'theralens[{in_extras[0]}]'")
            elif f"pip install {dist}" not in handler:
                problems.append(f"{where}: undeclared; the message must say pip install {dist}")
    return problems


def test_every_import_is_declared():
    assert _problems() == []


def test_extras_cover_the_optional_readers_and_make_test_installs_them():
    core, extras = _declared()
    assert {"openpyxl", "pyreadstat"}.isdisjoint(core)
    assert "openpyxl" in extras["excel"] and "pyreadstat" in extras["spss"]
    assert extras["excel"] | extras["spss"] <= extras["all"]
    assert extras["excel"] | extras["spss"] <= extras["dev"]  # `make test` installs .[dev]
    assert {"python-dateutil", "tomli", "duckdb", "dask", "distributed"} <= set(core)
    assert str(core["tomli"].marker) == 'python_version < "3.11"'


def test_the_guard_finds_an_unguarded_optional_import(tmp_path, monkeypatch):
    """The check fails on the mistakes it is there for (a checker that finds nothing proves nothing)."""
    project = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    pkg = tmp_path / "src" / "theralens"
    pkg.mkdir(parents=True)
    (pkg / "bad.py").write_text(
        "import pyreadstat\nimport somethingundeclared\n"
        "try:\n    import openpyxl\nexcept ImportError as exc:\n    raise RuntimeError('no') from exc\n"
        "try:\n    import xlrd\nexcept ImportError as exc:\n    raise InputError('install xlrd') from exc\n"
        "try:\n    import tomllib\nexcept ImportError:\n    import tomli as tomllib\n"
        "def read_sav(path):\n    check_spss()\n    import pyreadstat\n"
        "def check_spss():\n    raise InputError(\"install it with: pip install 'theralens[spss]'\")\n"
    )
    (pkg / "lazy.py").write_text("def read_sav(path):\n    import pyreadstat\n")  # no check, no install line
    monkeypatch.setattr(sys.modules[__name__], "SRC", pkg)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "pyproject.toml").write_text(project, encoding="utf-8")
    found = _problems()
    assert any("bad.py:1 imports pyreadstat" in p and "'spss'" in p for p in found), found  # module level
    assert not any("bad.py:17 " in p for p in found), found  # in a function, after the check with the hint
    assert any("imports somethingundeclared" in p for p in found), found
    assert any("imports openpyxl" in p and "InputError" in p for p in found), found
    assert any("imports xlrd" in p and "pip install xlrd" in p for p in found), found
    assert not any("tomli" in p for p in found), found  # guarded fallback of a marker dependency
    assert any("lazy.py:2 imports pyreadstat" in p for p in found), found
    assert len(found) == 5, found
