"""Study configuration: defaults, TOML parsing and one-line errors (data/config.py)."""

from __future__ import annotations

import json

import pytest

from theralens.data.config import StudyConfig, config_from_dict, load_config
from theralens.errors import InputError


def write(tmp_path, text: str):
    path = tmp_path / "study.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file():
    cfg = load_config(None)
    assert cfg == StudyConfig()
    assert cfg.columns.time == "session"
    assert cfg.columns.process == ("alliance", "expectancy")
    assert cfg.columns.higher_outcome_is == "worse"
    assert cfg.design.level == "patient"
    assert cfg.design.change == "residualized"
    assert cfg.design.process_sessions == 0
    assert cfg.design.caseload_weighting == "patient"
    assert cfg.therapist_moderators.columns == ()
    assert cfg.therapist_moderators.joint is False
    assert cfg.report.min_caseload == 5
    assert cfg.report.show_patient_ids is False


def test_empty_file_gives_defaults(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg.to_dict() == StudyConfig().to_dict()
    assert cfg.source.endswith("study.toml")


def test_full_file(tmp_path):
    cfg = load_config(
        write(
            tmp_path,
            """
[columns]
therapist = "tid"
patient = "pid"
time = "date"
outcome = "top"
process = ["wai", "oe"]
covariates = ["age"]
higher_outcome_is = "better"
[therapist_moderators]
columns = ["self_rated_alliance_skill", "cbt"]
joint = true
[design]
level = "session"
change = "slope"
process_sessions = 3
caseload_weighting = "session"
[report]
min_caseload = 10
show_patient_ids = true
""",
        )
    )
    assert cfg.columns.therapist == "tid"
    assert cfg.columns.process == ("wai", "oe")
    assert cfg.columns.covariates == ("age",)
    assert cfg.therapist_moderators.joint is True
    assert cfg.design.level == "session"
    assert cfg.design.process_sessions == 3
    assert cfg.report.min_caseload == 10
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["columns"]["process"] == ["wai", "oe"]
    assert "source" not in d


def test_single_process_as_string():
    cfg = config_from_dict({"columns": {"process": "alliance"}})
    assert cfg.columns.process == ("alliance",)


def test_config_is_frozen():
    cfg = StudyConfig()
    with pytest.raises(AttributeError):
        cfg.design.level = "session"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[colums]\ntherapist = 'x'\n", ["[colums]", '"columns"']),
        ("[columns]\nproces = ['a']\n", ["'proces'", '"process"']),
        ("[design]\nlevels = 'patient'\n", ["'levels'", '"level"']),
        ("[design]\nlevel = 'sessions'\n", ["level", '"patient"', '"session"']),
        ("[design]\nchange = 'delta'\n", ["change", '"residualized"', '"post_minus_pre"']),
        ("[columns]\nhigher_outcome_is = 'lower'\n", ["higher_outcome_is", '"worse"']),
        ("[columns]\nprocess = 3\n", ["process", "list of column names"]),
        ("[columns]\nprocess = []\n", ["process", "at least one"]),
        ("[columns]\nprocess = ['a', 'a']\n", ["process", "twice"]),
        ("[therapist_moderators]\njoint = 'yes'\n", ["joint", "true or false"]),
        ("[design]\nprocess_sessions = -1\n", ["process_sessions", ">= 0"]),
        ("[report]\nmin_caseload = 0\n", ["min_caseload", ">= 1"]),
        ("[report]\nmin_caseload = 2.5\n", ["min_caseload", "whole number"]),
        ("[columns]\noutcome = 5\n", ["outcome", "column name"]),
        ("columns = 3\n", ["columns", "section"]),
        ("[columns]\noutcome = 'alliance'\n", ['"alliance"', "one role"]),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, expected):
    with pytest.raises(InputError) as err:
        load_config(write(tmp_path, text))
    msg = str(err.value)
    assert "study.toml" in msg
    assert "\n" not in msg
    for part in expected:
        assert part in msg


def test_toml_syntax_error_gives_line_and_column(tmp_path):
    path = write(tmp_path, '[columns]\ntherapist = "tid"\noutcome = top\n')
    with pytest.raises(InputError) as err:
        load_config(path)
    msg = str(err.value)
    assert "study.toml" in msg
    assert "line 3" in msg and "column" in msg
    assert "\n" not in msg


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(InputError, match="folder"):
        load_config(tmp_path)


def test_not_utf8(tmp_path):
    path = tmp_path / "latin.toml"
    path.write_bytes(b"[columns]\noutcome = '\xe9'\n")
    with pytest.raises(InputError, match="UTF-8"):
        load_config(path)
