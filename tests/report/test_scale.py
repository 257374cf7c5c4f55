"""The report at many therapists (issue #11): profile pages only for the chosen therapists
([report] profiles / profiles_service; all up to PAGES_ALL), caterpillars of a subset beside the
distribution of every slope above DRAWN_MAX, HTML tables of the chosen therapists above PAGES_ALL
(results.json and the CSV tables still hold everyone), and the report's size stated."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from theralens.data.config import config_from_dict
from theralens.datasets import demo_paths
from theralens.errors import InputError
from theralens.report import study as report_study
from theralens.report.html import render_report
from theralens.report.profile_page import profile_filename
from theralens.study.analysis import analyze_files

MODS = {"therapist_moderators": {"columns": ["cbt"]}}


@pytest.fixture(scope="module")
def clinic_doc(tmp_path_factory):
    """The demo (patient design) with 7 services."""
    folder = tmp_path_factory.mktemp("scale")
    s = pd.read_csv(demo_paths()[0], dtype={"therapist": str, "patient": str})
    s["clinic"] = [f"C{k // 6 + 1}" for k in pd.factorize(s["therapist"], sort=True)[0]]
    path = folder / "s.csv"
    s.to_csv(path, index=False)
    config = config_from_dict({**MODS, "columns": {"service": "clinic"}})
    return json.loads(analyze_files(path, demo_paths()[1], config, engine="pandas").to_json())


def with_report(doc, **report):
    out = json.loads(json.dumps(doc))
    out["options"]["report"].update(report)
    return out


def stated_size(html: str) -> tuple[int, float]:
    m = re.search(r"report\.html and (\d+) profile page\(s\), +([0-9.]+) MB in all", html)
    assert m, "the report states its size"
    return int(m.group(1)), float(m.group(2))


def test_every_therapist_by_default_and_the_size_is_stated(tmp_path, clinic_doc):
    render_report(clinic_doc, tmp_path)
    pages = sorted((tmp_path / "therapists").glob("*.html"))
    assert len(pages) == len(clinic_doc["therapists"]) == 42
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    n, mb = stated_size(html)
    total = (tmp_path / "report.html").stat().st_size + sum(p.stat().st_size for p in pages)
    assert n == 42 and mb == pytest.approx(total / 1e6, abs=5e-4)
    assert "Profile pages: 42 of 42 therapists (every therapist)" in html
    assert "fig-slope-distribution" not in html  # 42 therapists: every one drawn


def test_pages_for_listed_therapists_and_a_service(tmp_path, clinic_doc):
    ids = [t["therapist"] for t in clinic_doc["therapists"]]
    doc = with_report(clinic_doc, profiles=[ids[0], ids[10]], profiles_service="C3")
    render_report(doc, tmp_path / "a")
    in_c3 = {t["therapist"] for t in clinic_doc["therapists"] if t["service"] == "C3"}
    expected = {ids[0], ids[10]} | in_c3
    assert len(in_c3) == 6
    got = {p.name for p in (tmp_path / "a" / "therapists").glob("*.html")}
    assert got == {profile_filename(t) for t in expected}
    html = (tmp_path / "a" / "report.html").read_text(encoding="utf-8")
    links = set(re.findall(r'class="profile-link">([^<]+)</a>', html))
    assert links == expected  # the table lists every therapist (42 <= PAGES_ALL); only pages are linked
    assert stated_size(html)[0] == len(expected)
    # a rebuild into the same folder with another choice removes the pages no longer chosen
    render_report(with_report(clinic_doc, profiles=[ids[5]]), tmp_path / "a")
    assert {p.name for p in (tmp_path / "a" / "therapists").glob("*.html")} == {profile_filename(ids[5])}
    with pytest.raises(InputError, match=r"\[report\] profiles names therapist 'nobody'"):
        render_report(with_report(clinic_doc, profiles=["nobody"]), tmp_path / "b")
    with pytest.raises(InputError, match=r"profiles_service = 'C99' is not a service"):
        render_report(with_report(clinic_doc, profiles_service="C99"), tmp_path / "b")


def test_above_the_limits_figures_summarise_and_tables_list_the_chosen(tmp_path, clinic_doc, monkeypatch):
    """PAGES_ALL and DRAWN_MAX lowered to 20 and 10 stand for 500 and 60 on the demo's 42 therapists."""
    monkeypatch.setattr(report_study, "PAGES_ALL", 20)
    monkeypatch.setattr(report_study, "DRAWN_MAX", 10)
    render_report(clinic_doc, tmp_path / "none")  # no choice: no pages above PAGES_ALL
    assert not list((tmp_path / "none" / "therapists").glob("*.html"))
    html = (tmp_path / "none" / "report.html").read_text(encoding="utf-8")
    assert "Profile pages: 0 of 42 therapists (none by default above 20 therapists" in html
    assert stated_size(html)[0] == 0
    for i in range(len(clinic_doc["aim2"])):
        assert f'id="fig-slope-distribution-{i + 1}"' in html
    assert "10 of the" in html and "evenly spaced by rank" in html
    profiles_csv = pd.read_csv(tmp_path / "none" / "tables" / "therapist_profiles.csv")
    assert profiles_csv["therapist"].nunique() == 42  # the tables hold everyone

    chosen = [t["therapist"] for t in clinic_doc["therapists"] if t["service"] == "C2"]
    render_report(with_report(clinic_doc, profiles_service="C2"), tmp_path / "c2")
    html = (tmp_path / "c2" / "report.html").read_text(encoding="utf-8")
    table = html[html.index('id="table-profiles"'):]
    table = table[: table.index("</table>")]
    assert set(re.findall(r'class="profile-link">([^<]+)</a>', table)) == set(chosen)
    assert "tables/therapist_profiles.csv every therapist" in html
    slopes = html[html.index('id="table-slopes"'):]
    slopes = slopes[: slopes.index("</table>")]
    assert slopes.count("<tr>") - 1 <= len(chosen) * len(clinic_doc["aim2"])
    assert "the therapists with a profile page" in html  # the caterpillars draw the chosen ones
    assert re.search(r"Caterpillar plot of (\d+) therapists", html).group(1) == str(
        int(np.sum([t["estimable"] and t["therapist"] in chosen
                    for t in clinic_doc["aim2"][0]["therapists"]])))


def test_slope_figures_summarise_ten_thousand_therapists():
    """A slope-by-moderator panel of 10,000 therapists is their density (hexagonal bins), not 10,000
    points and intervals: the SVG stays about the size of a 500-therapist scatter."""
    from theralens.report import figures

    rng = np.random.default_rng(0)

    def panel(n: int) -> figures.Panel:
        x = rng.normal(size=n)
        y = 0.3 * x + rng.normal(size=n)
        return figures.Panel(title="cbt", xlabel="moderator", x=x, slope=y, ci_low=y - 1, ci_high=y + 1,
                             intercept=0.0, coef=0.3, centre=0.0)

    small = len(str(figures.slope_by_covariate([panel(500)], "moderator", -1)))
    large = len(str(figures.slope_by_covariate([panel(10_000)], "moderator", -1)))
    points = len(str(figures.slope_by_covariate([panel(figures.MAX_POINTS_DRAWN)], "moderator", -1)))
    assert large < 2 * small < points * 2 and large < 400_000
    svg = figures.slope_distribution(rng.normal(size=10_000), 0.1, "alliance", -1, "#0072B2")
    assert len(str(svg)) < 100_000 and "Histogram of 10000 therapists" in str(svg)
