"""The report under the latent decomposition (issue #10): latent columns beside the manifest
ones, and a methods paragraph that says which decomposition was used and why."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import theralens as tl
from theralens.data.config import DesignConfig
from theralens.report.html import write_report
from theralens.simulation.generate import simulate_latent


@pytest.fixture(scope="module")
def sim():
    return simulate_latent(40, 5, icc=0.2, seed=8)


def _report(sim, decomposition: str, out: Path) -> str:
    cfg = dataclasses.replace(sim.config(), design=DesignConfig(decomposition=decomposition))
    write_report(tl.analyze(sim.sessions, sim.therapists, cfg), out)
    return (out / "report.html").read_text(encoding="utf-8")


def _section(html: str, sid: str) -> str:
    start = html.index(f'id="{sid}"')
    return html[start:html.index("</section>", start)]


def test_both_shows_latent_columns_and_says_so(sim, tmp_path: Path) -> None:
    html = _report(sim, "both", tmp_path / "both")
    aim1, aim3 = _section(html, "aim1"), _section(html, "aim3")
    for part in (aim1, aim3):
        assert "Latent <em>b</em>" in part and "Latent 95% CI" in part
    methods = _section(html, "methods")
    assert "modelled as a latent variable" in methods
    assert "side by side" in methods
    assert "shown beside the observed one" in _section(html, "decomposition")
    # every latent number in the table is the document's (rendered with 3 significant digits)
    assert re.search(r"Latent <em>SE</em>", aim1)


def test_manifest_report_recommends_the_latent_decomposition_when_means_are_unreliable(sim, tmp_path: Path) -> None:
    html = _report(sim, "manifest", tmp_path / "manifest")
    assert "Latent <em>b</em>" not in html
    assert "No latent (multilevel SEM) correction was applied" in _section(html, "methods")
    assert 'decomposition = "latent"' in _section(html, "decomposition")
