"""``theralens report OUT/results.json [--out DIR]``: the report and the therapist pages rebuilt
from results.json alone (in a fresh process, with nothing but that file) are byte-identical to
what ``theralens analyze`` wrote, in both designs; a missing, broken, tampered or other-version
results file is refused with one line and exit status 2, and nothing is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from clirun import fingerprint, run_cli

from theralens.datasets import demo_paths

MODERATORS = '[therapist_moderators]\ncolumns = ["self_rated_alliance_skill", "cbt"]\n'
SESSION = '[design]\nlevel = "session"\n'


def _outputs(folder: Path) -> dict[str, bytes]:
    """The report's files under ``folder``: report.html, every profile page, the profile table."""
    files = [folder / "report.html", folder / "tables" / "therapist_profiles.csv",
             *sorted((folder / "therapists").glob("*.html"))]
    return {str(f.relative_to(folder)): f.read_bytes() for f in files}


@pytest.fixture(scope="module", params=["patient design with moderators", "session design, no therapist table"])
def analysed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of ``theralens analyze`` on the demo CSVs."""
    folder = tmp_path_factory.mktemp("analysed")
    sessions, therapists = demo_paths()
    if request.param.startswith("patient"):
        (folder / "study.toml").write_text(MODERATORS)
        extra = ["--therapists", str(therapists)]
    else:
        (folder / "study.toml").write_text(SESSION)
        extra = []
    r = run_cli("analyze", sessions, *extra, "--config", "study.toml", "--out", "out", cwd=folder)
    assert r.returncode == 0, r.stderr
    return folder / "out"


def test_report_rebuilt_from_results_json_alone_is_byte_identical(analysed: Path, tmp_path: Path) -> None:
    original = _outputs(analysed)
    doc = json.loads((analysed / "results.json").read_text())
    assert len(original) == 2 + len(doc["therapists"]) == 2 + doc["n"]["therapists"]
    # a folder holding nothing but results.json; the report is written beside it
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(analysed / "results.json", alone / "results.json")
    r = run_cli("report", "results.json", cwd=alone)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "" and "wrote" in r.stdout
    assert _outputs(alone) == original
    # --out elsewhere: the same bytes, and the results file is left alone
    before = (alone / "results.json").read_bytes()
    r = run_cli("report", alone / "results.json", "--out", tmp_path / "restyled", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _outputs(tmp_path / "restyled") == original
    assert (alone / "results.json").read_bytes() == before
    assert not (tmp_path / "restyled" / "results.json").exists()
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".theralens-staging-") or p.suffix == ".tmp"]


def test_report_over_the_analysis_folder_changes_nothing(analysed: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(analysed, folder)
    before = fingerprint(folder)
    (folder / "therapists" / "gone-0123456789.html").write_text("a page of a therapist no longer in the data")
    r = run_cli("report", folder / "results.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert fingerprint(folder) == before


def _tampered(doc: dict, how: str) -> str:
    if how == "missing key":
        del doc["models"][0]["varcorr"]
    elif how == "wrong type":
        doc["n"]["therapists"] = "42"
    elif how == "other version":
        doc["schema_version"] = 1
    return json.dumps(doc)


@pytest.mark.parametrize(("how", "message"), [
    ("missing key", "does not match the results schema at models/0: 'varcorr' is a required property"),
    ("wrong type", "does not match the results schema at n/therapists: '42' is not of type 'integer'"),
    ("other version", "has schema_version 1, but this theralens reads version 2; run theralens analyze again"),
    ("not JSON", "is not valid JSON (line 1, column 1: Expecting value)"),
    ("not an object", "is not a theralens results document (a JSON object is expected)"),
    ("absent", "not found; give the results.json that theralens analyze wrote"),
])
def test_a_bad_results_file_gives_one_line_and_exit_2(analysed: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     how: str, message: str) -> None:
    from theralens.cli import main

    path = tmp_path / "tampered.json"  # not results.json: the suite checks every results.json against the schema
    doc = json.loads((analysed / "results.json").read_text())
    text = {"not JSON": "<html>not json</html>", "not an object": "[1, 2]"}.get(how) or _tampered(doc, how)
    if how != "absent":
        path.write_text(text)
    before = fingerprint(tmp_path)
    assert main(["report", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"theralens: results file {path} ") and err.count("\n") == 1
    assert message in err
    assert fingerprint(tmp_path) == before


def test_report_of_a_folder_says_which_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from theralens.cli import main

    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    inside = tmp_path / "results.json"
    assert err == f"theralens: {tmp_path} is a folder; give the results.json file inside it ({inside})\n"
