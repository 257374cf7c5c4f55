"""Power estimates with their Monte Carlo error, per design cell and test.

For a cell and a test with ``n_usable`` replicates whose models were fitted (the others
failed: an error, non-convergence, or, with ``exclude_singular``, a singular fit) and
``rejections`` of them with p < alpha,

    power = rejections / n_usable,      MC SE = sqrt(power (1 - power) / n_usable),

the binomial standard error of a proportion, and the 95% Wilson score interval (Wilson 1927,
JASA 22:209; docs/power.md), with z = 1.96 and n = n_usable,

    (power + z^2 / (2n) +- z sqrt(power (1 - power) / n + z^2 / (4 n^2))) / (1 + z^2 / n),

which, unlike power +- z MC SE, stays inside [0, 1] and has width above zero when no
replicate, or every replicate, rejects (at power 0 it is [0, z^2 / (n + z^2)]). The
interval is drawn as the band in the figure and printed in the summary. A failed replicate
is left out of the denominator, never counted as a non-rejection, and every failure is
counted by reason (``n_errors``, ``n_nonconverged``, ``n_singular_excluded``) beside the
share of usable replicates (``usable_share``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from theralens.atomic import prepare_dir, write_bytes, write_text
from theralens.display import Summary
from theralens.planning.replicate import ERROR, NONCONVERGED, OK, SINGULAR, ChunkOutcome, PowerSpec, TestSpec
from theralens.planning.settings import Cell

__all__ = ["PowerResult", "mc_se", "summarise", "wilson_interval"]

Z = 1.959963984540054
TABLE_COLUMNS = [
    "n_therapists", "patients_per_therapist", "n_patients", "test", "process", "term", "label", "method",
    "true_value", "alpha", "nsim", "n_usable", "usable_share", "n_failed", "n_errors", "n_nonconverged",
    "n_singular_excluded", "n_singular", "rejections", "power", "mc_se", "power_low", "power_high", "mean_estimate",
]


def mc_se(power: float | np.ndarray, n_usable: int | np.ndarray) -> float | np.ndarray:
    """Monte Carlo SE of an estimated rejection rate: sqrt(p (1 - p) / n_usable) (NaN for n = 0)."""
    p = np.asarray(power, dtype=float)
    n = np.asarray(n_usable, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(n > 0, np.sqrt(p * (1.0 - p) / np.where(n > 0, n, 1.0)), np.nan)
    return float(out) if out.ndim == 0 else out


def wilson_interval(rejections: int | np.ndarray, n_usable: int | np.ndarray,
                    z: float = Z) -> tuple[float | np.ndarray, float | np.ndarray]:
    """Wilson score interval (low, high) of the rejection rate ``rejections / n_usable``
    (module docstring; 95% with the default z; NaN for n = 0). At 0 rejections the low end is
    exactly 0, at ``n_usable`` rejections the high end exactly 1."""
    k = np.asarray(rejections, dtype=float)
    n = np.asarray(n_usable, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(n > 0, n, np.nan)
        p, z2 = k / m, z * z
        centre = (p + z2 / (2 * m)) / (1 + z2 / m)
        half = z / (1 + z2 / m) * np.sqrt(p * (1 - p) / m + z2 / (4 * m * m))
    low = np.where(k == 0, 0.0, np.clip(centre - half, 0.0, 1.0))
    high = np.where(k == n, 1.0, np.clip(centre + half, 0.0, 1.0))
    low, high = np.where(n > 0, low, np.nan), np.where(n > 0, high, np.nan)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


def summarise(chunks: list[ChunkOutcome], cells: list[Cell], tests: tuple[TestSpec, ...], spec: Any,
              nsim: int, truths: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(table, replicates, failures) from the chunks (see :class:`PowerResult`); ``spec`` (a
    :class:`~theralens.planning.replicate.PowerSpec` or :class:`~theralens.planning.loop.LoopSpec`)
    gives each test's true value and method."""
    m = len(tests)
    p = np.full((len(cells), nsim, m), np.nan)
    est = np.full_like(p, np.nan)
    ses = np.full_like(p, np.nan)
    status = np.full((len(cells), nsim, m), -1, dtype=np.int8)
    sing = np.zeros((len(cells), nsim, m), dtype=bool)
    reject = np.zeros((len(cells), nsim, m), dtype=bool)
    fails = []
    for ch in chunks:
        sl = slice(ch.start, ch.start + len(ch.p))
        p[ch.cell, sl], est[ch.cell, sl], ses[ch.cell, sl] = ch.p, ch.estimate, ch.se
        status[ch.cell, sl], sing[ch.cell, sl], reject[ch.cell, sl] = ch.status, ch.singular, ch.reject
        for r, role, text in ch.messages:
            c = cells[ch.cell]
            fails.append({"n_therapists": c.n_therapists, "n_patients": c.n_patients, "replicate": r,
                          "model": role, "error": text})
    if (status < 0).any():
        raise RuntimeError("some replicates did not come back from the workers")
    rows, reps = [], []
    for ci, c in enumerate(cells):
        for ti, t in enumerate(tests):
            s, pv = status[ci, :, ti], p[ci, :, ti]
            usable = s == OK
            n_ok = int(usable.sum())
            rej = int(reject[ci, usable, ti].sum())
            pw = rej / n_ok if n_ok else float("nan")
            se = mc_se(pw, n_ok)
            low, high = wilson_interval(rej, n_ok)
            rows.append({
                "n_therapists": c.n_therapists, "patients_per_therapist": c.patients_per_therapist,
                "n_patients": c.n_patients, "test": t.kind, "process": t.process, "term": t.term, "label": t.label,
                "method": spec.method(t),
                "true_value": spec.true_value(t, truths[ci]), "alpha": spec.alpha, "nsim": nsim,
                "n_usable": n_ok, "usable_share": n_ok / nsim, "n_failed": nsim - n_ok,
                "n_errors": int((s == ERROR).sum()), "n_nonconverged": int((s == NONCONVERGED).sum()),
                "n_singular_excluded": int((s == SINGULAR).sum()), "n_singular": int(sing[ci, :, ti].sum()),
                "rejections": rej, "power": pw, "mc_se": se,
                "power_low": low, "power_high": high,
                "mean_estimate": float(np.mean(est[ci, usable, ti])) if n_ok else float("nan"),
            })
            reps.append(pd.DataFrame({
                "n_therapists": c.n_therapists, "n_patients": c.n_patients, "replicate": np.arange(nsim),
                "test": t.kind, "process": t.process, "p": pv, "reject": reject[ci, :, ti],
                "estimate": est[ci, :, ti], "se": ses[ci, :, ti],
                "status": pd.Categorical.from_codes(np.maximum(s, 0), ["ok", "nonconverged", "error", "singular"]),
                "singular": sing[ci, :, ti],
            }))
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    replicates = pd.concat(reps, ignore_index=True)
    failures = pd.DataFrame(fails, columns=["n_therapists", "n_patients", "replicate", "model", "error"])
    return table, replicates, failures


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {(":".join(k) if isinstance(k, tuple) else str(k)): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, np.generic):
        return _plain(v.item())
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _plain(dataclasses.asdict(v))
    return v


@dataclass
class PowerResult:
    """Result of :func:`theralens.planning.power`.

    Fields:
        table: tidy DataFrame, one row per design cell and test: ``n_therapists``,
            ``patients_per_therapist``, ``n_patients``, ``test`` (slope_variance, within,
            between, moderator), ``process``, ``term``, ``label``, ``method`` (how it is tested:
            the likelihood ratio, or the t test with its ddf method), ``true_value`` (the
            simulated value of what is tested; for slope variances the SD of the therapist
            slopes the main model sees), ``alpha``, ``nsim``, ``n_usable``,
            ``usable_share``, ``n_failed`` (= ``n_errors`` + ``n_nonconverged`` +
            ``n_singular_excluded``), ``n_singular`` (usable or not), ``rejections``,
            ``power``, ``mc_se``, ``power_low``/``power_high`` (the 95% Wilson score
            interval, :func:`wilson_interval`) and ``mean_estimate`` (mean over usable replicates; slope SD for slope
            variances).
        replicates: one row per replicate and test: p, estimate, se (fixed effects),
            status (ok, nonconverged, error, singular), singular.
        failures: one row per failed model: cell, replicate, model, error.
        cells, tests, spec: the design cells, the tests and the shared settings.
        nsim, seconds, execution (executor, workers or scheduler, chunks), notes (what a power study
        from a fitted study assumed), search (a :class:`~theralens.planning.search.SampleSizeSearch`
        when the run searched for a sample size, else None), created (UTC).
    """

    table: pd.DataFrame
    replicates: pd.DataFrame
    failures: pd.DataFrame
    cells: list[Cell]
    tests: tuple[TestSpec, ...]
    spec: PowerSpec | Any
    nsim: int
    seconds: float
    execution: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    search: Any = None
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def meta(self) -> dict[str, Any]:
        """Settings and provenance as a JSON-ready dictionary."""
        from theralens import __version__

        s = self.spec
        return _plain({
            "theralens": __version__, "created": self.created, **s.meta(), "notes": list(self.notes),
            "alpha": s.alpha, "seed": s.seed, "nsim": self.nsim,
            "cells": [{"n_therapists": c.n_therapists, "patients_per_therapist": c.patients_per_therapist,
                       "n_patients": c.n_patients} for c in self.cells],
            "seconds": round(self.seconds, 3), "execution": self.execution,
        })

    def to_json(self) -> str:
        """Settings, table and failures as JSON."""
        doc = {"meta": self.meta(), "table": _plain(self.table.to_dict(orient="records")),
               "failures": _plain(self.failures.to_dict(orient="records"))}
        if self.search is not None:
            doc["search"] = _plain(self.search.to_dict())
        return json.dumps(doc, indent=2, allow_nan=False)

    def summary(self) -> Summary:
        """Power per test (rows) and design cell (columns): power with its 95% Wilson interval,
        usable share. ``print()`` gives the text, ``.tables`` the power, interval and usable-share
        tables (tests x cells) and the long ``table``, ``as_html()`` the notebook view
        (:class:`~theralens.display.Summary`)."""
        s = self.spec
        lines = [
            f"Simulation-based power: {s.origin}, {self.nsim} replicates per design cell, alpha = {s.alpha:g}, "
            f"seed {s.seed} ({self.seconds:.1f} s, {self.execution.get('executor', '')})",
        ]
        if s.source:
            lines.append(f"Truth: the estimates of {s.source} (every simulated parameter is in power.json, "
                         "meta.overrides)")
            lines += self.notes
        elif s.overrides:
            lines.append("Settings: " + ", ".join(f"{k}={v}" for k, v in _plain(s.overrides).items()))
        lines.append(s.design_line())
        lines.append("Cells: therapists x patients per therapist; each entry: power [95% Wilson interval] "
                     "{usable share when below 100%}")
        t = self.table
        cell_names = [f"{c.n_therapists}x{c.patients_per_therapist:.3g}" for c in self.cells]
        width = max(12, *(len(n) for n in cell_names))
        rows = []
        for x in self.tests:
            sub = t[(t["test"] == x.kind) & (t["process"] == x.process)]
            entries = []
            for _, row in sub.iterrows():
                if row["n_usable"] == 0:
                    txt = "no usable"
                else:
                    txt = f"{row['power']:.2f} [{row['power_low']:.2f}, {row['power_high']:.2f}]"
                    if row["usable_share"] < 1:
                        txt += f" {{{row['usable_share']:.0%}}}"
                entries.append(txt)
            rows.append((f"{x.label} ({sub['true_value'].iloc[0]:g})", entries))
        width = max(width, *(len(e) for _, es in rows for e in es))
        label_w = max(len("test (true value)"), *(len(h) for h, _ in rows)) + 2
        lines.append(f"{'test (true value)':<{label_w}}" + "".join(f"{n:>{width + 2}}" for n in cell_names))
        for head, entries in rows:
            lines.append(f"{head:<{label_w}}" + "".join(f"{e:>{width + 2}}" for e in entries))
        n_fail = int(t["n_failed"].sum())
        if n_fail:
            reasons = {k: int(t[k].sum()) for k in ("n_errors", "n_nonconverged", "n_singular_excluded")}
            lines.append(f"Failed tests: {n_fail} ({reasons['n_errors']} errors, {reasons['n_nonconverged']} not "
                         f"converged, {reasons['n_singular_excluded']} singular fits excluded); they are left out of "
                         "the denominator, not counted as non-rejections.")
        if len(self.failures):
            top = self.failures["error"].value_counts().head(3)
            lines.append("Most frequent errors: " + "; ".join(f"{e} ({n}x)" for e, n in top.items()))
        if self.search is not None:
            lines.append(self.search.summary())
        low = t.loc[t["test"].isin(["slope_variance", "moderator"]) & (t["n_therapists"] < 60)]
        if len(low):
            lines.append("With fewer than about 60 therapists, slope variances and cross-level moderators have "
                         "low power (Mathieu et al. 2012; Arend & Schaefer 2019).")
        first, *rest = self._status_lines()
        return Summary("Simulation-based power", "\n".join(lines), {**self._view_tables(), "table": self.table},
                       [first.removeprefix("<PowerResult: ").removesuffix(">"), *rest], index={"table": False})

    def __str__(self) -> str:
        return str(self.summary())

    # -- notebook views ---------------------------------------------------------------------
    def _status_lines(self) -> list[str]:
        """What the simulation is, in a few lines (no tables): the repr and the notebook header."""
        s, t = self.spec, self.table
        cells = ", ".join(f"{c.n_therapists}x{c.patients_per_therapist:.3g}" for c in self.cells)
        usable = t["n_usable"].sum() / max(int(t["nsim"].sum()), 1)
        lines = [f"<PowerResult: {s.origin}, {len(self.cells)} design cell(s) x {len(self.tests)} tests, "
                 f"{self.nsim} replicates per cell, alpha {s.alpha:g}, seed {s.seed}>",
                 f"Cells (therapists x patients per therapist): {cells}",
                 f"Power {t['power'].min():.2f} to {t['power'].max():.2f}; usable replicates {usable:.1%} "
                 f"({int(t['n_failed'].sum())} failed tests, left out of the denominators)"]
        if s.overrides and not s.source:
            lines.append("Settings: " + ", ".join(f"{k}={v}" for k, v in _plain(s.overrides).items()))
        return lines

    def _wide(self, column: str) -> pd.DataFrame:
        """``column`` of the table with one row per test and one column per design cell."""
        t = self.table.assign(cell=[f"{a}x{b:.3g}" for a, b in zip(self.table["n_therapists"],
                                                                    self.table["patients_per_therapist"])])
        wide = t.pivot(index="label", columns="cell", values=column)
        return wide.reindex(index=list(dict.fromkeys(t["label"])), columns=list(dict.fromkeys(t["cell"])))

    def __repr__(self) -> str:
        return "\n".join(self._status_lines())

    def _view_tables(self) -> dict[str, pd.DataFrame]:
        """Power, its 95% Wilson interval and the usable share, tests x design cells."""
        low, high = self._wide("power_low"), self._wide("power_high")
        interval = pd.DataFrame([[f"[{x:.2f}, {y:.2f}]" if x == x else "" for x, y in zip(a, b)]
                                 for a, b in zip(low.to_numpy(), high.to_numpy())],
                                index=low.index, columns=low.columns)
        return {"power": self._wide("power"), "95% Wilson interval": interval,
                "usable share": self._wide("usable_share")}

    def _repr_html_(self) -> str:
        from theralens.display import html_view

        first, *rest = self._status_lines()
        head = [first.removeprefix("<PowerResult: ").removesuffix(">"), *rest]
        return html_view("Simulation-based power", head, self._view_tables())

    def plot(self) -> Any:
        """The power-curve figure (:func:`theralens.planning.plot.power_curves`)."""
        from theralens.planning.plot import power_curves

        return power_curves(self)

    def write(self, out: str | Path) -> list[Path]:
        """Write ``power.csv``, ``power.json``, ``power.png`` and ``power.svg`` into ``out``
        (each file atomically); returns the paths."""
        folder = prepare_dir(out)
        written = [write_text(folder / "power.csv", self.table.to_csv(index=False)),
                   write_text(folder / "power.json", self.to_json())]
        import matplotlib

        fig = self.plot()
        with matplotlib.rc_context({"svg.hashsalt": "theralens"}):
            for ext in ("png", "svg"):
                buf = io.BytesIO()
                fig.savefig(buf, format=ext, dpi=150, bbox_inches="tight", metadata=_figure_metadata(ext))
                written.append(write_bytes(folder / f"power.{ext}", buf.getvalue()))
        return written


def _figure_metadata(ext: str) -> dict[str, Any]:
    # no creation dates in the files: the same run gives the same bytes
    return {"Software": "theralens"} if ext == "png" else {"Date": None, "Creator": "theralens"}
