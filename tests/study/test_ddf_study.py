"""The study's ``[inference] ddf``: passed to every fit, recorded in results.json, named in the
tables and the methods paragraph; a wrong value is a one-line config error."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pandas as pd
import pytest

import theralens as tl
from theralens.data.config import config_from_dict, load_config
from theralens.datasets import load_demo
from theralens.errors import InputError
from theralens.report.methods import methods_paragraphs
from theralens.study.analysis import analyze
from theralens.study.document import schema

MODS = ["cbt"]


@pytest.fixture(scope="module")
def kr_study() -> tl.StudyResult:
    s, t = load_demo()
    cfg = config_from_dict({"therapist_moderators": {"columns": MODS}, "inference": {"ddf": "kenward-roger"}})
    return analyze(s, t, cfg)


@pytest.fixture(scope="module")
def kr_doc(kr_study) -> dict:
    return json.loads(kr_study.to_json())


def _frame(result: tl.StudyResult) -> pd.DataFrame:
    f = result.table.table.copy()
    f["therapist"] = f["therapist"].astype(str)
    f["patient"] = f["patient"].astype(str)
    return f


def test_results_json_records_the_ddf_and_validates(kr_doc: dict) -> None:
    assert kr_doc["inference"] == {"ddf": "kenward-roger", "label": "Kenward-Roger",
                                   "reference": "Kenward-Roger (Kenward & Roger, 1997)"}
    assert kr_doc["options"]["inference"] == {"ddf": "kenward-roger", "latent_bias_correction": "none"}
    error = next(jsonschema.Draft202012Validator(schema()).iter_errors(kr_doc), None)
    assert error is None, error.message


def test_every_fit_of_the_study_uses_the_ddf(kr_study) -> None:
    for spec in [kr_study.main, *kr_study.aim2.reduced, *kr_study.aim3.models, kr_study.ancillary_model]:
        assert spec.fit.ddf == "kenward-roger", spec.role


def test_aim_tables_are_the_kenward_roger_tests_of_a_direct_fit(kr_study, kr_doc: dict) -> None:
    """aim 1 and the ancillary rows equal fit_mixed(..., ddf="kenward-roger") on the same design."""
    f = _frame(kr_study)
    main = next(m["formula"] for m in kr_doc["models"] if m["role"] == "main")
    fit = tl.fit_mixed(main, f, ddf="kenward-roger")
    sat = fit.with_ddf("satterthwaite")
    for row in kr_doc["aim1"]:
        name = row["term"]
        assert row["df"] == pytest.approx(float(fit.df[name]), rel=1e-10)
        assert row["se"] == pytest.approx(float(fit.std_errors[name]), rel=1e-10)
        assert row["p"] == pytest.approx(float(fit.p_values[name]), rel=1e-8)
        assert row["df"] != pytest.approx(float(sat.df[name]), rel=1e-3)  # not Satterthwaite's
    anc = next(m["formula"] for m in kr_doc["models"] if m["role"] == "ancillary")
    afit = tl.fit_mixed(anc, f, ddf="kenward-roger")
    for row in kr_doc["ancillary"]:
        assert row["df"] == pytest.approx(float(afit.df[row["term"]]), rel=1e-10)
    # the models' SEs are the adjusted ones too
    entry = next(m for m in kr_doc["models"] if m["role"] == "main")
    se = {r["term"]: r["se"] for r in entry["fixed_effects"]}
    assert np.allclose([se[n] for n in fit.fixed_names], fit.std_errors.to_numpy(), rtol=1e-10)


def test_summary_and_methods_name_the_ddf(kr_study, kr_doc: dict) -> None:
    text = kr_study.summary()
    assert "Aim 1 - process-outcome associations (Kenward-Roger df)" in text
    assert "Ancillary - within x between interaction (Kenward-Roger df)" in text
    paras = " ".join(methods_paragraphs(kr_doc, ["alliance", "expectancy"], MODS, 5, 100, 1))
    assert "Degrees of freedom: Kenward-Roger (Kenward &amp; Roger, 1997)" in paras
    assert "Satterthwaite" not in paras


def test_default_is_satterthwaite_and_named() -> None:
    s, t = load_demo()
    doc = json.loads(analyze(s, None, config_from_dict({})).to_json())
    assert doc["inference"]["ddf"] == "satterthwaite"
    paras = " ".join(methods_paragraphs(doc, ["alliance", "expectancy"], [], 5, 100, 1))
    assert "Degrees of freedom: Satterthwaite (Kuznetsova et al., 2017)" in paras


def test_a_wrong_ddf_in_the_config_is_one_line(tmp_path) -> None:
    path = tmp_path / "study.toml"
    path.write_text('[inference]\nddf = "kenward"\n')
    with pytest.raises(InputError) as err:
        load_config(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert "[inference] ddf" in msg and str(path) in msg and 'did you mean "kenward-roger"' in msg
    assert '"satterthwaite", "kenward-roger", "residual", "asymptotic"' in msg
    path.write_text("[inference]\nddf = 3\n")
    with pytest.raises(InputError, match="not a degrees-of-freedom method"):
        load_config(path)
    path.write_text('[inference]\nddf = "Kenward-Roger"\n')
    assert load_config(path).inference.ddf == "kenward-roger"


def test_report_tables_name_the_ddf(kr_doc: dict, tmp_path) -> None:
    from theralens.report.html import write_report

    written = write_report(kr_doc, tmp_path)
    page = next(p for p in written if p.name == "report.html").read_text(encoding="utf-8")
    note = "Degrees of freedom (<em>df</em>): Kenward-Roger (Kenward &amp; Roger, 1997)."
    assert page.count(note) >= 2  # aim 1 and the ancillary table (aim 3 too with moderators)
    assert "Satterthwaite's method" not in page
    assert "Kenward, M. G., &amp; Roger, J. H. (1997)" in page or "Kenward, M. G., & Roger, J. H. (1997)" in page
