"""The studies the report tests look at: the demo study and a hostile variant of it (therapist
ids, a process and a moderator name that try to inject markup or escape the output folder)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from theralens.data.config import config_from_dict
from theralens.datasets import DEMO_TRAINING, load_demo, load_demo_training
from theralens.report import write_report
from theralens.report.html import render_report
from theralens.study.analysis import analyze
from theralens.study.result import StudyResult
from theralens.study.stability import stability
from theralens.study.training import training

DEMO_MODERATORS = ["self_rated_alliance_skill", "self_rated_expectancy_skill", "cbt"]

#: Therapist ids, a process name and a moderator name that try to inject markup or escape
#: the output folder.
HOSTILE_IDS = {
    "T01": "<img src=x onerror=alert(1)>",
    "T02": "T&\"quote'",
    "T04": "<script>alert('x')</script>",
    "T07": "../../etc/passwd",
}
HOSTILE_PROCESS = "<b>alliance</b>"
HOSTILE_MODERATOR = "<i onclick=x>cbt</i>"


@dataclass
class Written:
    """A study result and the folder its results.json and report were written to."""

    result: StudyResult
    out: Path
    written: list[Path]


def write_study(result: StudyResult, out: Path) -> Written:
    """Write ``result``'s results.json, tables and report into ``out``."""
    result.write(out)
    return Written(result=result, out=out, written=write_report(result, out))


def demo_study(out: Path) -> Written:
    """The demo study (patient-level design), as ``theralens demo`` runs it, written to ``out``."""
    sessions, therapists = load_demo()
    cfg = config_from_dict({"therapist_moderators": {"columns": DEMO_MODERATORS}})
    result = analyze(sessions, therapists, cfg, source="demo sessions")
    return write_study(result, out)


def loop_study(out: Path) -> Written:
    """The demo study with its stability and training sections, as ``theralens demo`` writes it."""
    import json

    sessions, therapists = load_demo()
    cfg = config_from_dict({"therapist_moderators": {"columns": DEMO_MODERATORS}, "training": DEMO_TRAINING})
    result = analyze(sessions, therapists, cfg, source="demo sessions")
    doc = result.to_dict()
    doc["stability"] = stability(result, sessions=sessions).section()
    doc["training"] = training(result, load_demo_training(), sessions=sessions).section()
    text = json.dumps(doc, indent=2, allow_nan=False)
    result.write(out, document=text)
    return Written(result=result, out=out, written=render_report(json.loads(text), out))


def hostile_study(out: Path) -> Written:
    """The demo study with hostile therapist ids, process and moderator names, written to ``out``."""
    sessions, therapists = load_demo()
    sessions["therapist"] = sessions["therapist"].replace(HOSTILE_IDS)
    therapists["therapist"] = therapists["therapist"].replace(HOSTILE_IDS)
    sessions = sessions.rename(columns={"alliance": HOSTILE_PROCESS})
    therapists = therapists.rename(columns={"cbt": HOSTILE_MODERATOR})
    cfg = config_from_dict({
        "columns": {"process": [HOSTILE_PROCESS, "expectancy"]},
        "therapist_moderators": {"columns": [HOSTILE_MODERATOR]},
    })
    result = analyze(sessions, therapists, cfg, source="hostile demo <script>alert(2)</script>")
    return write_study(result, out)
