"""The R fixtures of the latent decomposition (tests/fixtures/latent) hold together, without R.

Each JSON's derived numbers follow from its Sigma_B / Sigma_W and fixed effects; a direct
multivariate-normal log-likelihood of the committed CSV at the JSON's parameters equals the
JSON's logLik (so JSON and CSV belong together); the parameters are the ML estimates (fixed
effects are the GLS solution, the covariance gradient vanishes); and lme4 and nlme agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

LATENT = Path(__file__).resolve().parents[1] / "fixtures" / "latent"
NAMES = ("latent_demo", "latent_sim1", "latent_sim2")


def _load(name: str) -> tuple[dict, pd.DataFrame]:
    ref = json.loads((LATENT / f"{name}.json").read_text())
    data = pd.read_csv(LATENT / ref["csv"], dtype={"therapist": str, "patient": str})
    return ref, data


def _matrix(block: dict, names: list[str]) -> np.ndarray:
    assert block["names"] == names
    return np.array(block["matrix"], dtype=float)


def _blocks(ref: dict, data: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per therapist: (values n x d, mean design n x d x k) with k fixed effects in the JSON's order."""
    xs, names = ref["processes"], list(ref["fixed_effects"])
    out = []
    for _, g in data.groupby("therapist", sort=False):
        n, d = len(g), len(xs) + 1
        z = g[[*xs, "y"]].to_numpy(float)
        design = np.zeros((n, d, len(names)))
        for k, name in enumerate(names):
            if name == "dy":
                design[:, -1, k] = 1.0
            elif name == "dy:baseline":
                design[:, -1, k] = g["baseline"].to_numpy(float)
            else:
                design[:, xs.index(name[1:]), k] = 1.0
        out.append((z, design))
    return out


def _loglik(blocks: list[tuple[np.ndarray, np.ndarray]], beta: np.ndarray, sb: np.ndarray, sw: np.ndarray) -> float:
    """Gaussian log-likelihood; per therapist the stacked (patient-major) vector has cov I(x)Sigma_W + J(x)Sigma_B."""
    total = 0.0
    for z, design in blocks:
        n, d = z.shape
        v = np.kron(np.eye(n), sw) + np.kron(np.ones((n, n)), sb)
        r = (z - design @ beta).reshape(-1)
        chol = np.linalg.cholesky(v)
        u = np.linalg.solve(chol, r)
        total -= 0.5 * (n * d * np.log(2 * np.pi) + 2 * np.log(np.diag(chol)).sum() + u @ u)
    return total


def _gls(blocks: list[tuple[np.ndarray, np.ndarray]], sb: np.ndarray, sw: np.ndarray) -> np.ndarray:
    k = blocks[0][1].shape[2]
    xtx, xty = np.zeros((k, k)), np.zeros(k)
    for z, design in blocks:
        n, d = z.shape
        vinv = np.linalg.inv(np.kron(np.eye(n), sw) + np.kron(np.ones((n, n)), sb))
        x = design.reshape(n * d, k)
        xtx += x.T @ vinv @ x
        xty += x.T @ vinv @ z.reshape(-1)
    return np.linalg.solve(xtx, xty)


def _derive(fixed: dict, sb: np.ndarray, sw: np.ndarray, xs: list[str]) -> dict[str, np.ndarray]:
    p = len(xs)
    bw = np.linalg.solve(sw[:p, :p], sw[:p, p])
    bb = np.linalg.solve(sb[:p, :p], sb[:p, p])
    out = {"kappa": np.array([fixed[f"d{x}"] for x in xs]), "g00": np.array(fixed["dy"]),
           "b_within": bw, "b_between": bb, "contextual": bb - bw, "tau_x2": sb[:p, :p], "sigma_x2": sw[:p, :p],
           "tau_u2": np.array(sb[p, p] - sb[p, :p] @ bb), "sigma_e2": np.array(sw[p, p] - sw[p, :p] @ bw)}
    if "dy:baseline" in fixed:
        out["g"] = np.array(fixed["dy:baseline"])
    return out


def _estimates(block: dict, p: int) -> dict[str, np.ndarray]:
    """The JSON's estimates as arrays; with one process every entry is a scalar."""
    out = {k: np.asarray(v, dtype=float) for k, v in block.items()}
    if p == 1:
        assert all(a.ndim == 0 for a in out.values())
    else:
        assert out["kappa"].shape == (p,) and out["tau_x2"].shape == (p, p) and out["tau_u2"].ndim == 0
    return out


def _fits(ref: dict) -> dict[str, tuple[dict, np.ndarray, np.ndarray, float, dict]]:
    names = ref["variables"]
    nl = ref["nlme"]
    return {
        "lme4": (ref["fixed_effects"], _matrix(ref["Sigma_B"], names), _matrix(ref["Sigma_W"], names), ref["loglik"],
                 ref["estimates"]),
        "nlme": (nl["fixed_effects"], _matrix(nl["Sigma_B"], names), _matrix(nl["Sigma_W"], names), nl["loglik"],
                 nl["estimates"]),
    }


@pytest.fixture(scope="module", params=NAMES)
def fixture(request: pytest.FixtureRequest) -> tuple[dict, pd.DataFrame, list]:
    ref, data = _load(request.param)
    return ref, data, _blocks(ref, data)


def test_counts_and_layout_match_the_csv(fixture: tuple) -> None:
    ref, data, _ = fixture
    assert ref["variables"] == [*ref["processes"], "y"]
    assert ref["nobs"] == len(data) and ref["nobs_long"] == len(data) * len(ref["variables"])
    assert ref["n_therapists"] == data["therapist"].nunique()
    assert not data.duplicated(["therapist", "patient"]).any()
    assert ("baseline" in data.columns) == ("dy:baseline" in ref["fixed_effects"]) == ("g" in ref["estimates"])
    p = len(ref["processes"])
    assert ref["n_parameters"] == len(ref["fixed_effects"]) + (p + 1) * (p + 2)
    assert ref["provenance"]["command"] == "Rscript tests/fixtures/make_latent_fixtures.R"


def test_derived_numbers_follow_from_the_covariances(fixture: tuple) -> None:
    ref, _, _ = fixture
    xs = ref["processes"]
    for fit, (fixed, sb, sw, _, est) in _fits(ref).items():
        assert np.allclose(sb, sb.T, rtol=0, atol=0) and np.allclose(sw, sw.T, rtol=0, atol=0), fit
        assert np.linalg.eigvalsh(sb).min() > 0 and np.linalg.eigvalsh(sw).min() > 0, fit
        got, want = _estimates(est, len(xs)), _derive(fixed, sb, sw, xs)
        assert got.keys() == want.keys(), fit
        for key, value in want.items():
            np.testing.assert_allclose(got[key], value, rtol=1e-12, atol=1e-14, err_msg=f"{fit} {key}")


def test_lme4_covariances_are_its_variance_components(fixture: tuple) -> None:
    ref, _, _ = fixture
    names, lm = ref["variables"], ref["lme4"]
    sb, sw = _matrix(ref["Sigma_B"], names), _matrix(ref["Sigma_W"], names)
    assert np.array_equal(_matrix(lm["Psi_therapist"], names), sb)
    np.testing.assert_allclose(_matrix(lm["Psi_patient"], names) + lm["sigma2"] * np.eye(len(names)), sw,
                               rtol=1e-14, atol=1e-15)
    assert lm["sigma"] ** 2 == pytest.approx(lm["sigma2"], rel=1e-14)
    assert lm["loglik"] == ref["loglik"] and ref["deviance"] == pytest.approx(-2 * ref["loglik"], rel=1e-15)


def test_loglik_of_the_csv_at_the_json_parameters(fixture: tuple) -> None:
    ref, _, blocks = fixture
    for fit, (fixed, sb, sw, loglik, _) in _fits(ref).items():
        got = _loglik(blocks, np.array(list(fixed.values())), sb, sw)
        assert abs(got - loglik) < 1e-8, (fit, got, loglik)


def test_parameters_are_the_ml_estimates(fixture: tuple) -> None:
    """Fixed effects are GLS at the covariances; the log-likelihood is flat in, and falls along, every covariance entry.

    Central differences with step 1e-6 (at 1e-4 the truncation error of the small-variance demo fit is ~8e-4);
    a 0.1% change of Sigma_B moves these derivatives by 0.04 to 0.08.
    """
    ref, _, blocks = fixture
    fixed, sb, sw, loglik, _ = _fits(ref)["lme4"]
    beta = np.array(list(fixed.values()))
    np.testing.assert_allclose(_gls(blocks, sb, sw), beta, rtol=0, atol=1e-9)
    d = sb.shape[0]
    for which in ("B", "W"):
        for i in range(d):
            for j in range(i + 1):
                e = np.zeros((d, d))
                e[i, j] = e[j, i] = 1.0

                def at(step: float, which: str = which, e: np.ndarray = e) -> float:
                    return _loglik(blocks, beta, sb + step * e if which == "B" else sb,
                                   sw + step * e if which == "W" else sw)

                assert abs(at(1e-6) - at(-1e-6)) / 2e-6 < 1e-3, (which, i, j)
                assert max(at(1e-3), at(-1e-3)) < loglik, (which, i, j)


def test_lme4_and_nlme_agree(fixture: tuple) -> None:
    ref, _, _ = fixture
    fits = _fits(ref)
    p = len(ref["processes"])
    a, b = _estimates(fits["lme4"][4], p), _estimates(fits["nlme"][4], p)
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    worst = max(worst, float(np.max(np.abs(fits["lme4"][1] - fits["nlme"][1]))),
                float(np.max(np.abs(fits["lme4"][2] - fits["nlme"][2]))))
    assert worst < 1e-5
    assert worst == pytest.approx(ref["agreement"]["max_abs_diff"], rel=1e-9)
    assert abs(fits["lme4"][3] - fits["nlme"][3]) < 1e-8
