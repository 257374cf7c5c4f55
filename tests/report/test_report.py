"""The HTML report and therapist pages: numbers equal results.json, pages exist and link both
ways, nothing external is loaded, data values are escaped, patient ids stay out."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from studies import HOSTILE_IDS, HOSTILE_MODERATOR, HOSTILE_PROCESS, Written

from theralens.profiles import build_profiles
from theralens.report import write_report
from theralens.report.page import CSP
from theralens.report.profile_page import profile_filename


class Page(HTMLParser):
    """What the tests need from a page: tags, attributes, data-key spans and their text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.keys: list[tuple[str, str, str]] = []  # (data-key, data-value, shown text)
        self._open: list[Any] | None = None
        self.text_parts: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        self.tags.append((tag, a))
        if "data-key" in a:
            self._open = [a["data-key"], a.get("data-value", ""), ""]

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self._open is not None:
            self.keys.append(tuple(self._open))  # type: ignore[arg-type]
            self._open = None

    def handle_data(self, data: str) -> None:
        self.text_parts.append(data)
        if self._open is not None:
            self._open[2] += data

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


def flatten_results(doc: dict[str, Any]) -> dict[str, Any]:
    """results.json as {data-key: value}, keys built from the documented schema."""
    flat: dict[str, Any] = {}
    for k in ("therapists", "patients", "assessments"):
        flat[f"n.{k}"] = doc["n"][k]
    for i, e in enumerate(doc["n"]["exclusions"]):
        for f in ("rows", "patients", "patients_removed"):
            flat[f"n.exclusions.{i}.{f}"] = e[f]
    for r in doc["aim1"]:
        for f in ("estimate", "se", "df", "p", "ci_low", "ci_high"):
            flat[f"aim1.{r['process']}.{r['component']}.{f}"] = r[f]
    for r in doc["aim2"]:
        for f in ("slope_variance", "slope_sd", "slope_sd_ci_low", "slope_sd_ci_high", "lrt_statistic", "lrt_df", "p",
                  "mean_slope_reliability"):
            flat[f"aim2.{r['process']}.{f}"] = r[f]
        for t in r["therapists"]:
            for f, v in t.items():
                flat[f"aim2.{r['process']}.therapists.{t['therapist']}.{f}"] = v
    for r in doc["aim3"]:
        for f in ("estimate", "se", "df", "p", "ci_low", "ci_high", "therapists", "therapists_missing"):
            flat[f"aim3.{r['process']}.{r['moderator']}.{r['target']}.{f}"] = r[f]
    for r in doc["ancillary"]:
        for f in ("estimate", "se", "df", "p", "ci_low", "ci_high"):
            flat[f"ancillary.{r['process']}.{f}"] = r[f]
    for r in doc["reliability"]:
        for f, v in r.items():
            flat[f"reliability.{r['process']}.{f}"] = v
    for t in doc["therapists"]:
        for f in ("n_patients", "intercept_deviation", "intercept_sd"):
            flat[f"therapists.{t['therapist']}.{f}"] = t[f]
        for p, v in t["caseload_means"].items():
            flat[f"therapists.{t['therapist']}.caseload_means.{p}"] = v
    for i, m in enumerate(doc["models"]):
        for f in ("nobs", "reml_criterion", "evaluations", "gradient_norm"):
            flat[f"models.{i}.{f}"] = m[f]
    return flat


def shown_number(text: str) -> tuple[float, float] | None:
    """(value, tolerance) of a number as the page shows it, or None for a dash."""
    t = text.strip()
    if t in ("\u2013", ""):
        return None
    if t == "< .001":
        return 0.0, 0.001
    pct = t.endswith("%")
    t = t.rstrip("%")
    if t.startswith("."):
        t = "0" + t
    mantissa = t.split("e")[0].lstrip("-")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    value = float(t)
    exp = int(t.split("e")[1]) if "e" in t else 0
    tol = 0.5 * 10 ** (exp - decimals) * 1.0001
    return (value / 100, tol / 100) if pct else (value, tol)


def pages(w: Written) -> dict[str, str]:
    out = {"report.html": (w.out / "report.html").read_text(encoding="utf-8")}
    for f in sorted((w.out / "therapists").glob("*.html")):
        out[f"therapists/{f.name}"] = f.read_text(encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def demo_doc(demo: Written) -> dict[str, Any]:
    return json.loads((demo.out / "results.json").read_text())


def test_report_numbers_equal_results_json(demo: Written, demo_doc: dict[str, Any]) -> None:
    flat = flatten_results(demo_doc)
    checked = 0
    for name, text in pages(demo).items():
        for k, value, shown in Page(text).keys:
            if k.startswith("profile."):
                continue
            assert k in flat, f"{name}: data-key {k!r} is not in results.json"
            expected = flat[k]
            if expected is None:
                assert value == "null", f"{name}: {k} should be null"
                continue
            assert json.loads(value) == expected, f"{name}: {k} = {value}, results.json has {expected!r}"
            sn = shown_number(shown)
            if sn is not None and isinstance(expected, (int, float)):
                v, tol = sn
                assert abs(v - expected) <= tol + 1e-12, f"{name}: {k} shown as {shown!r}, value {expected!r}"
            checked += 1
    assert checked > 500


def test_report_shows_every_quantity_of_the_aims(demo: Written, demo_doc: dict[str, Any]) -> None:
    keys = {k for k, _, _ in Page((demo.out / "report.html").read_text()).keys}
    flat = flatten_results(demo_doc)
    wanted = [k for k in flat if k.split(".")[0] in ("aim1", "aim3", "ancillary", "n", "reliability", "models")
              and not k.endswith(("n_therapists", "n_patients", ".process", ".process_label", ".therapists_missing"))]
    wanted += [k for k in flat if k.startswith("aim2.") and ".therapists." not in k]
    missing = sorted(set(wanted) - keys)
    assert not missing, f"report.html lacks {missing[:10]}"
    # each therapist's slope, interval and probability are on their own page
    profile_keys = set()
    for name, text in pages(demo).items():
        if name.startswith("therapists/"):
            profile_keys |= {k for k, _, _ in Page(text).keys}
    for r in demo_doc["aim2"]:
        for t in r["therapists"]:
            if t["estimable"]:
                for f in ("slope", "ci_low", "ci_high", "deviation", "deviation_sd", "prob_stronger_than_average"):
                    assert f"aim2.{r['process']}.therapists.{t['therapist']}.{f}" in profile_keys


def test_profile_numbers_equal_profiles(demo: Written) -> None:
    prof = build_profiles(demo.result)
    seen = 0
    for text in pages(demo).values():
        for k, value, _ in Page(text).keys:
            if not k.startswith("profile."):
                continue
            _, tid, *rest = k.split(".")
            t = prof[tid]
            if rest[0] == "outcome":
                expected = getattr(t.outcome, rest[1])
            elif rest[0] == "moderators":
                expected = t.moderators[rest[1]]
            else:
                expected = getattr(t.process(rest[0]), rest[1])
            got = json.loads(value)
            assert (got is None and expected is None) or math.isclose(got, expected, rel_tol=0, abs_tol=0), k
            seen += 1
    assert seen > 100


def test_report_labels_follow_the_paper(demo: Written) -> None:
    text = Page((demo.out / "report.html").read_text()).text
    for phrase in ("within-therapist association", "between-therapist association", "chi-bar-square",
                   "Satterthwaite", "REML", "observed (manifest)", "cross-level interaction",
                   "within \u00d7 between", "Coyne", "Methods", "Options used", "caseload_weighting",
                   "residualized change", "each patient weighing once"):
        assert phrase in text, phrase
    assert "@media print" in (demo.out / "report.html").read_text()


def test_every_therapist_has_a_linked_page(demo: Written, demo_doc: dict[str, Any]) -> None:
    report = Page((demo.out / "report.html").read_text())
    hrefs = {a.get("href") for tag, a in report.tags if tag == "a"}
    files = {f.name for f in (demo.out / "therapists").glob("*.html")}
    assert len(files) == len(demo_doc["therapists"])
    for t in demo_doc["therapists"]:
        name = profile_filename(t["therapist"])
        assert name in files
        assert f"therapists/{name}" in hrefs
        page = Page((demo.out / "therapists" / name).read_text())
        back = {a.get("href") for tag, a in page.tags if tag == "a"}
        assert "../report.html#profiles" in back
        assert f"Therapist profile: {t['therapist']}" in page.text
    assert (demo.out / "tables" / "therapist_profiles.csv").exists()


def test_profiles_follow_the_uncertainty(demo: Written) -> None:
    for name, text in pages(demo).items():
        if not name.startswith("therapists/"):
            continue
        plain = Page(text).text
        assert "weakness" not in plain.replace("This is not a weakness", "").replace("which is not a weakness", "")
    prof = build_profiles(demo.result)
    for t in prof:
        page = Page((demo.out / "therapists" / profile_filename(t.therapist)).read_text()).text
        if t.n_patients < 5:
            assert "too uncertain to interpret" in page.lower()
            assert f"only {t.n_patients} analysed patient" in page


def test_pages_are_self_contained(demo: Written) -> None:
    for name, text in pages(demo).items():
        assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in text, name
        for bad in ("http://", "https://", "src=", "<script", "<iframe", "<link", "@import", "<img", "<object",
                    "<embed", "//fonts", "url(http"):
            assert bad not in text, f"{name} contains {bad!r}"
        page = Page(text)
        for _tag, a in page.tags:
            href = a.get("href") or a.get("xlink:href")
            if href:
                assert href.startswith("#") or re.fullmatch(r"(therapists/[A-Za-z0-9_-]+\.html|\.\./report\.html"
                                                             r"(#[a-z]+)?)", href), f"{name}: href {href!r}"
        assert not re.search(r"url\((?!#)", text), f"{name}: a url() that is not a fragment"


def test_figures_have_alt_text_and_unique_ids(demo: Written) -> None:
    for name, text in pages(demo).items():
        page = Page(text)
        svgs = [a for tag, a in page.tags if tag == "svg"]
        assert svgs, name
        ids = [a["id"] for _, a in page.tags if "id" in a]
        assert len(ids) == len(set(ids)), f"{name}: duplicate ids"
        titles = {a["id"] for tag, a in page.tags if tag == "title" and "id" in a}
        for a in svgs:
            assert a.get("role") == "img", name
            assert a.get("aria-labelledby") in titles, name
    report = Page((demo.out / "report.html").read_text())
    assert sum(1 for tag, a in report.tags if tag == "svg" and "fig" in a.get("class", "")) >= 7


def test_patient_ids_never_appear(demo: Written) -> None:
    patients = set(demo.result.data.sessions["patient"].astype(str))
    assert not demo.result.config.report.show_patient_ids
    for name, text in pages(demo).items():
        found = patients & set(re.findall(r"[\w-]+", text))
        assert not found, f"{name} shows patient ids {sorted(found)[:3]}"
    csv = (demo.out / "tables" / "therapist_profiles.csv").read_text()
    assert not any(p in csv for p in patients)


def test_hostile_values_are_escaped(hostile: Written) -> None:
    texts = pages(hostile)
    assert len([n for n in texts if n.startswith("therapists/")]) == 42
    for name, text in texts.items():
        for raw in ("<img", "<script", "<b>", "<i onclick", "onerror=alert(1)>", "T&\"quote'"):
            assert raw not in text, f"{name} contains raw {raw!r}"
        tags = {tag for tag, _ in Page(text).tags}
        assert not tags & {"img", "script", "b", "i"}, f"{name}: injected tags {tags & {'img', 'script', 'b', 'i'}}"
    report = texts["report.html"]
    assert "&lt;img src=x onerror=alert(1)&gt;" in report
    assert "T&amp;&quot;quote&#x27;" in report
    assert html_text(report).count(HOSTILE_PROCESS) >= 5
    assert HOSTILE_MODERATOR in html_text(report)
    for tid in HOSTILE_IDS.values():
        name = profile_filename(tid)
        assert re.fullmatch(r"[A-Za-z0-9_-]+\.html", name)
        page = hostile.out / "therapists" / name
        assert page.exists()
        assert f"Therapist profile: {tid}" in html_text(page.read_text())
    # nothing was written outside the output folder
    assert all(hostile.out in p.resolve().parents for p in hostile.written)


def html_text(markup: str) -> str:
    return Page(markup).text


def test_session_design_report(tmp_path: Path) -> None:
    from theralens.data.config import config_from_dict
    from theralens.datasets import load_demo
    from theralens.study.analysis import analyze

    sessions, _ = load_demo()
    cfg = config_from_dict({"design": {"level": "session"}})
    result = analyze(sessions, None, cfg)
    result.write(tmp_path)
    write_report(result, tmp_path)
    text = html_text((tmp_path / "report.html").read_text())
    assert "within-patient association" in text
    assert "between-patient (within-therapist) association" in text
    assert "session-level (lagged) design" in text
    assert "No therapist characteristics were given" in text
    doc = json.loads((tmp_path / "results.json").read_text())
    flat = flatten_results(doc)
    for k, value, _ in Page((tmp_path / "report.html").read_text()).keys:
        assert k in flat and (json.loads(value) == flat[k] or flat[k] is None), k


def test_cli_demo_writes_the_report(demo: Written, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``theralens demo`` writes results.json, the report and every profile, and removes profile
    pages of an earlier run but no other file (the analysis itself is replaced by the demo
    fixture's result to keep this fast)."""
    import theralens.study.analysis as analysis
    from theralens.cli import main

    out = tmp_path / "d"
    (out / "therapists").mkdir(parents=True)
    stale = out / "therapists" / "gone-0123456789.html"
    stale.write_text("old")
    mine = out / "therapists" / "my notes.html"
    mine.write_text("keep")
    monkeypatch.setattr(analysis, "analyze", lambda *a, **k: demo.result)
    assert main(["demo", "--out", str(out)]) == 0
    assert (out / "results.json").exists()
    assert (out / "report.html").exists()
    assert len(list((out / "therapists").glob("*-??????????.html"))) == 42
    assert not stale.exists()
    assert mine.read_text() == "keep"
