"""Property-based checks (hypothesis, 200 examples each) of FITTING with ``fit_mixed``.

On random small nested data sets (4-8 groups, 2-5 observations each, some split into
sub-groups):

- robustness: on arbitrary values (ties, zeros, constant columns, missing values) a fit
  either returns a result or raises a documented error (InputError / ModelSpecError);
- invariance to the order of the rows and to relabelling the group ids;
- scale equivariance: the outcome times c gives fixed effects times c, random-effect and
  residual SDs times |c|, the same correlations, and a criterion shifted by a known amount.
  The profiled criterion (Bates et al. 2015, eq. 34 and 41) is
  d(theta) = log|L|^2 + N (1 + log(2 pi r^2 / N)) for ML and, for REML,
  log|L|^2 + log|R_X|^2 + (n - p)(1 + log(2 pi r^2 / (n - p))); theta is scale free, L and
  R_X do not involve y, and the penalised residual sum of squares r^2 scales by c^2, so the
  ML deviance moves by 2 n log|c| and the REML criterion by 2 (n - p) log|c| (p = rank X).

The data layer's properties (reading, validation, decomposition) live in
``tests/data/test_data_properties.py``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import theralens as tl
from theralens.errors import InputError

# degenerate random data make numpy warn (sqrt of a negative variance estimate, ...): expected here
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FORMULAS = [
    "y ~ x + (1 | g)",
    "y ~ x + (1 + x | g)",
    "y ~ x + (x || g)",
    "y ~ x + (0 + x | g)",
    "y ~ 1 + (1 | g/p)",
    "y ~ x + (1 + x | g) + (1 | g:p)",
]


def _structure(draw, min_size: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Group and sub-group (patient) codes: 4-8 groups of 2-5 rows, each group split in 1-2."""
    sizes = draw(st.lists(st.integers(min_size, 5), min_size=4, max_size=8))
    g = np.repeat(np.arange(len(sizes)), sizes)
    p = np.concatenate([k * 10 + (np.arange(s) >= draw(st.integers(1, s))) for k, s in enumerate(sizes)])
    return g, p


@st.composite
def messy_data(draw):
    """Arbitrary values: small integers (ties, constant columns) or floats, some missing."""
    g, p = _structure(draw)
    n = len(g)
    value = st.one_of(st.integers(-3, 3).map(float), st.floats(-1e3, 1e3, allow_nan=False, width=32),
                      st.just(np.nan))
    y = draw(st.lists(value, min_size=n, max_size=n))
    x = draw(st.lists(value, min_size=n, max_size=n))
    return pd.DataFrame({"g": g, "p": p, "x": x, "y": y}), draw(st.sampled_from(FORMULAS))


def _rank_of_model(data: pd.DataFrame, formula: str) -> int:
    """Rank of [X Z]: with n at or below it the model interpolates the data, the residual
    variance goes to zero and the parameters are not identified (lme4 refuses such fits:
    "number of observations <= number of random effects")."""
    dg = pd.get_dummies(data["g"]).to_numpy(float)
    dp = pd.get_dummies(data["g"].astype(str) + ":" + data["p"].astype(str)).to_numpy(float)
    x = data["x"].to_numpy(float)[:, None]
    rhs = formula.split("~")[1]
    blocks = [np.ones((len(data), 1))] + ([x] if rhs.strip().startswith("x") else [])
    if "(1 | g" in rhs or "(1 + x | g)" in rhs or "(x || g)" in rhs:
        blocks.append(dg)
    if "x | g)" in rhs or "x || g)" in rhs:
        blocks.append(dg * x)
    if "g/p" in rhs or "g:p" in rhs:
        blocks.append(dp)
    return int(np.linalg.matrix_rank(np.hstack(blocks)))


@st.composite
def model_data(draw):
    """Data from a random-slope model with drawn variances (zero included: singular fits),
    identified (more rows than the rank of [X Z])."""
    formula = draw(st.sampled_from(FORMULAS))
    g, p = _structure(draw, min_size=3 if "x |" in formula or "x ||" in formula else 2)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    G, n = int(g.max()) + 1, len(g)
    sd_u0, sd_u1, sd_p = (draw(st.sampled_from([0.0, 0.3, 1.0, 3.0])) for _ in range(3))
    x = rng.normal(size=n) * draw(st.sampled_from([0.1, 1.0, 10.0]))
    _, pcode = np.unique(p, return_inverse=True)
    y = (1.0 + 0.5 * x + rng.normal(scale=sd_u0, size=G)[g] + rng.normal(scale=sd_u1, size=G)[g] * x
         + rng.normal(scale=sd_p, size=pcode.max() + 1)[pcode] + rng.normal(size=n))
    data = pd.DataFrame({"g": g, "p": p, "x": x, "y": y})
    assume(n > _rank_of_model(data, formula))
    return data, formula


def _fit(formula: str, data: pd.DataFrame, reml: bool = True) -> tl.MixedResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's line search may warn on flat criteria
        return tl.fit_mixed(formula, data, reml=reml)


def _crit(m: tl.MixedResult) -> float:
    return float(m.reml_criterion if m.reml else m.deviance)


def _close(a: float, b: float, rel: float = 1e-6) -> bool:
    return abs(a - b) <= rel * max(1.0, abs(a), abs(b))


def _assert_same_fit(a: tl.MixedResult, b: tl.MixedResult) -> None:
    """Equal criterion (1e-6 relative); fixed effects equal within their precision."""
    assert _close(_crit(a), _crit(b)), (_crit(a), _crit(b))
    assert list(a.fixed_names) == list(b.fixed_names)
    # a flat criterion lets the optimizer stop at slightly different theta: compare the
    # fixed effects on the scale of their standard errors
    tol = 1e-3 * np.maximum(a.std_errors.to_numpy(), 1e-8) + 1e-6 * np.abs(a.fixed_effects.to_numpy())
    assert np.all(np.abs(a.fixed_effects.to_numpy() - b.fixed_effects.to_numpy()) <= tol)


def _usable(m: tl.MixedResult) -> bool:
    return bool(np.isfinite(_crit(m)) and m.converged and np.all(np.isfinite(m.std_errors)))


@SETTINGS
@given(messy_data())
def test_fit_returns_or_raises_documented_errors(args):
    data, formula = args
    complete = data[["x", "y"]].notna().all(axis=1).sum() if "x" in formula.split("~")[1] else data["y"].notna().sum()
    try:
        m = _fit(formula, data)
    except InputError as exc:  # ModelSpecError is an InputError
        assert "\n" not in str(exc) and str(exc)
        return
    assert m.nobs == complete
    assert len(m.fixed_effects) == len(m.std_errors) >= 1
    assert m.optimizer.evaluations >= 1
    assert m.varcorr["grp"].iloc[-1] == "Residual"
    assert isinstance(m.converged, bool) and isinstance(m.singular, bool)
    # (Satterthwaite df and summary() are left out: about 0.2 s each even on these data,
    # and see test_satterthwaite_on_a_degenerate_fit)


def test_fewer_rows_than_fixed_effects():
    data = pd.DataFrame({"g": [0, 1], "x": [0.0, 1.0], "y": [1.0, 3.0]})
    with pytest.raises(InputError):
        tl.fit_mixed("y ~ x + (1 | g)", data)


def test_satterthwaite_on_a_degenerate_fit():
    nan = np.nan
    data = pd.DataFrame({"g": [0, 0, 1, 1, 2, 2, 2, 3, 3, 3], "x": [0, 0, nan, 0, 0, 0, 0, nan, nan, 2.0],
                         "y": [0, 0, 0, 0, nan, nan, 1, 0, 0, 0.0]})
    m = _fit("y ~ x + (x || g)", data)
    assert m.df.notna().all() or m.df.isna().all()


@SETTINGS
@given(model_data(), st.randoms(use_true_random=False))
def test_invariant_to_row_order_and_id_labels(args, rnd):
    data, formula = args
    base = _fit(formula, data)
    assume(_usable(base))
    order = list(range(len(data)))
    rnd.shuffle(order)
    groups = sorted(data["g"].unique())
    new = [f"t{k}" for k in range(len(groups))]
    rnd.shuffle(new)
    relabel = dict(zip(groups, new))
    other = data.iloc[order].reset_index(drop=True).assign(g=lambda d: d["g"].map(relabel),
                                                           p=lambda d: "q" + (d["p"] * 7 + 3).astype(str))
    m = _fit(formula, other)
    _assert_same_fit(base, m)
    assert m.nobs == base.nobs and sorted(m.ngroups.values()) == sorted(base.ngroups.values())


@SETTINGS
@given(model_data(), st.sampled_from([-3.0, -0.5, 0.01, 0.2, 2.5, 40.0, 1e3]), st.booleans())
def test_scale_equivariance(args, c, reml):
    data, formula = args
    base = _fit(formula, data, reml)
    assume(_usable(base))
    m = _fit(formula, data.assign(y=data["y"] * c), reml)
    n, p = base.nobs, len(base.fixed_names)
    shift = 2 * (n - p if reml else n) * np.log(abs(c))
    assert _close(_crit(m), _crit(base) + shift), (_crit(m), _crit(base), shift)
    tol = 1e-3 * np.maximum(base.std_errors.to_numpy(), 1e-8) * abs(c) + 1e-6 * abs(c) * np.abs(
        base.fixed_effects.to_numpy())
    assert np.all(np.abs(m.fixed_effects.to_numpy() - c * base.fixed_effects.to_numpy()) <= tol)
    np.testing.assert_allclose(m.std_errors.to_numpy(), abs(c) * base.std_errors.to_numpy(), rtol=2e-3)
    assert m.sigma == pytest.approx(abs(c) * base.sigma, rel=2e-3)
    vb, vm = base.varcorr, m.varcorr
    sd_rows = vb["var2"].isna().to_numpy()
    big = vb["sdcor"].to_numpy()[sd_rows] > 1e-2 * base.sigma  # SDs not at the boundary
    np.testing.assert_allclose(vm["sdcor"].to_numpy()[sd_rows][big], abs(c) * vb["sdcor"].to_numpy()[sd_rows][big],
                               rtol=2e-3)
    # theta is scale-free; a diagonal entry within 1e-2 of zero in both fits is a relative SD
    # at the boundary (the SDs above leave those out too): the criterion is flat there to
    # ~1e-9, so where the optimizer stops in that valley is not a property of the model
    tb, tm = base.theta.to_numpy(), m.theta.to_numpy()
    flat = np.isfinite(base.design.theta_lower_bounds()) & (tb < 1e-2) & (tm < 1e-2)  # diagonal entries near 0
    np.testing.assert_allclose(tm[~flat], tb[~flat], rtol=2e-3, atol=1e-3)


# Found by test_invariant_to_row_order_and_id_labels (HYPOTHESIS_PROFILE=explore, seed 784):
# 13 rows, 4 groups, 5 nested clusters. The likelihood has two local optima (the x slope
# variance against the cluster intercept variance) 1e-3 apart; with the ids relabelled the
# optimizer ends in the worse one (68.46076 against 68.45975, both with small gradients).
_BIMODAL = """g,p,x,y
0,0,-7.0604246447189016,24.282204487501215
0,0,15.685584434747984,-35.080474401181519
0,0,9.9741984591291857,-18.889960601182786
1,10,-3.7481007531064958,3.2709415566574629
1,10,0.7157747009946912,6.2601506185645261
1,10,11.895696336577666,13.013823565815649
1,11,6.3018819027316306,6.4730104524154637
2,20,-8.9389709286284162,-18.146856289518993
2,20,1.7061255430708713,7.0727644262159588
2,20,11.502879021162173,30.225285276675383
3,30,7.9188076612836458,-24.558316459054286
3,30,-4.8467845124111371,16.8991382228233
3,30,-18.128419818675209,61.971805114996236
"""


@pytest.mark.xfail(strict=False, reason="known: BFGS from lme4's start can end in the worse of two local optima "
                   "of a bimodal likelihood (13 rows); no multi-start yet. Which optimum it reaches depends on "
                   "the floating-point path: it failed with the numpy/scipy of 2026-11-26 and passes with "
                   "numpy 2.4.6 / scipy 1.17.1, so the marker cannot be strict")
def test_relabelled_bimodal_example_known_local_optimum() -> None:
    import io

    data = pd.read_csv(io.StringIO(_BIMODAL))
    relabelled = data.assign(g=data["g"].map({0: "t2", 1: "t1", 2: "t0", 3: "t3"}),
                             p=data["p"].map({0: "q3", 10: "q73", 11: "q80", 20: "q143", 30: "q213"}))
    a = _fit("y ~ x + (1 + x | g) + (1 | g:p)", data)
    b = _fit("y ~ x + (1 + x | g) + (1 | g:p)", relabelled)
    assert _close(_crit(a), _crit(b))
