"""The report's stability and training sections (issue #14) on the demo: every number marked in
them equals results.json, the contents list them, every profile page has its stability card
and training lines, and the wording follows the intervals."""

from __future__ import annotations

import json
from typing import Any

import pytest
from studies import Written
from test_report import Page, pages, shown_number

from theralens.profiles.stability import half_labels
from theralens.report.profile_page import profile_filename


def flatten_loop(doc: dict[str, Any]) -> dict[str, Any]:
    """The stability and training sections as {data-key: value}."""
    flat: dict[str, Any] = {}
    for r in doc["stability"]["rows"]:
        for f, v in r.items():
            flat[f"stability.{r['process']}.{f}"] = v
    sec = doc["training"]
    for r in sec["rows"]:
        for f, v in r.items():
            flat[f"training.{r['process']}.{r['term']}.{f}"] = v
    for r in sec["variance"]:
        for f, v in r.items():
            flat[f"training.variance.{r['process']}.{f}"] = v
    for r in sec["therapists"]:
        for f, v in r.items():
            flat[f"training.therapists.{r['process']}.{r['therapist']}.{f}"] = v
    return flat


@pytest.fixture(scope="module")
def loop_doc(loop: Written) -> dict[str, Any]:
    return json.loads((loop.out / "results.json").read_text())


def test_loop_numbers_equal_results_json(loop: Written, loop_doc: dict[str, Any]) -> None:
    flat = flatten_loop(loop_doc)
    checked = 0
    for name, text in pages(loop).items():
        for k, value, shown in Page(text).keys:
            if not k.startswith(("stability.", "training.")):
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
    assert checked > 300
    report_keys = {k for k, _, _ in Page((loop.out / "report.html").read_text()).keys}
    for r in loop_doc["stability"]["rows"]:
        for f in ("correlation", "ci_low", "ci_high"):
            assert f"stability.{r['process']}.{f}" in report_keys
    for r in loop_doc["training"]["rows"]:
        for f in ("estimate", "se", "df", "p", "ci_low", "ci_high"):
            assert f"training.{r['process']}.{r['term']}.{f}" in report_keys


def test_contents_verdicts_and_wording(loop: Written, loop_doc: dict[str, Any]) -> None:
    html = (loop.out / "report.html").read_text()
    toc = html[html.index('<nav class="toc"'):html.index("</nav>")]
    assert toc.index('href="#profiles"') < toc.index('href="#stability"') < toc.index('href="#training"') < \
        toc.index('href="#diagnostics"')
    text = " ".join(Page(html).text_parts)
    for r in loop_doc["stability"]["rows"]:
        assert " ".join(r["verdict_text"].split()) in " ".join(text.split())
    assert html.count('class="training-verdict"') == 2
    # the demo's outcomes carry no training effect: the wording must not claim one it cannot show
    for r in loop_doc["training"]["rows"]:
        lo, hi = r["benefit_ci_low"], r["benefit_ci_high"]
        assert r["words"] == ("stronger" if lo > 0 else "weaker" if hi < 0 else "no detectable change")


def test_every_profile_page_has_its_stability_card_and_training_lines(loop: Written,
                                                                      loop_doc: dict[str, Any]) -> None:
    labels = half_labels(loop_doc)
    sched = {s["therapist"]: s for s in loop_doc["training"]["schedule"]}
    for t in loop_doc["therapists"]:
        tid = t["therapist"]
        page = (loop.out / "therapists" / profile_filename(tid)).read_text()
        assert 'href="../report.html#stability"' in page
        mine = labels[labels["therapist"] == tid]
        assert page.count("earlier half") == len(mine) == 2
        assert page.count('class="training-line"') == 2
        if sched[tid]["trained"]:
            assert "slope after training (trained)" in page and f"Trained on {sched[tid]['targets']}" in page
        else:
            assert "No training recorded" in page
    csv = (loop.out / "tables" / "stability_labels.csv").read_text().splitlines()
    assert len(csv) == 1 + 2 * len(loop_doc["therapists"])
