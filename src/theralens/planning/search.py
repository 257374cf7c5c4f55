"""Sample-size search: the smallest number of therapists (at a given caseload) for which one
test reaches a target power, with the Monte Carlo uncertainty of the answer.

The power of a test rises with the number of therapists J. Every evaluated design cell (J
therapists, ``nsim`` replicates, caseload fixed) gives k rejections among n usable
replicates; all of them enter one binomial regression (docs/power.md, "Sample-size search")

    logit power(J) = a + b log J,

fitted by maximum likelihood (Newton-Raphson), so that replicates of every cell inform the
answer, not only those of the cell closest to it. The required J solves power(J) = target:

    log J* = (logit(target) - a) / b,

with its delta-method standard error sqrt(g' V g), g = (-1/b, -(logit(target) - a)/b^2), V the
inverse information of (a, b): the 95% interval exp(log J* +- 1.96 SE) is the Monte Carlo
uncertainty of J* (how much another set of replicates could move it). The search starts from
the two ends and the geometric middle of the range, then evaluates ceil(J*) of the current
fit until it has been evaluated (or ``max_cells`` cells were run); the answer is
``n_required`` = ceil(J*), and the directly simulated power there, with its Wilson interval,
is reported beside the fitted curve. If even the largest J of the range falls short (or the
smallest already reaches the target) the answer says so instead of extrapolating.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from theralens.errors import InputError
from theralens.planning.replicate import TestSpec

__all__ = ["SampleSizeSearch", "SearchGoal", "fit_power_curve", "parse_search", "run_search"]

Z = 1.959963984540054


@dataclass(frozen=True)
class SearchGoal:
    """What to search for: ``test`` ("moderator", "within.alliance", ...: a test kind, with
    its process where there is more than one), ``target`` power, the range of therapists
    ``low``..``high`` and at most ``max_cells`` evaluated cells."""

    test: str
    target: float = 0.8
    low: int = 10
    high: int = 300
    max_cells: int = 7

    def __post_init__(self) -> None:
        if not 0.0 < self.target < 1.0:
            raise InputError(f"--search target {self.target}: a power strictly between 0 and 1, e.g. 0.8")
        if not 3 <= self.low < self.high:
            raise InputError(f"--search range {self.low}..{self.high}: give 3 <= low < high therapists")
        if self.max_cells < 3:
            raise InputError("--search: max_cells must be 3 or more")

    def pick(self, tests: Sequence[TestSpec]) -> TestSpec:
        """The test named by ``test`` among ``tests``."""
        kind, _, process = self.test.partition(".")
        found = [t for t in tests if t.kind == kind and (not process or t.process == process)]
        names = sorted({t.kind if sum(u.kind == t.kind for u in tests) == 1 else f"{t.kind}.{t.process}"
                        for t in tests})
        if len(found) != 1:
            why = "names more than one test" if found else "is not a test of this study"
            raise InputError(f"--search {self.test}: {why}; one of {', '.join(names)}")
        return found[0]


def parse_search(text: str | SearchGoal | dict[str, Any], therapists: Sequence[int] | None) -> SearchGoal:
    """``"moderator"`` or ``"within.alliance:0.9"`` (test[:target]), a mapping of
    :class:`SearchGoal` fields, or a goal; the range from ``therapists`` (two numbers) when given."""
    if isinstance(text, SearchGoal):
        return text
    rng = {}
    if therapists is not None:
        js = list(therapists)
        if len(js) != 2:
            raise InputError("--search: give the range of therapists to search as --therapists LOW,HIGH")
        rng = {"low": int(min(js)), "high": int(max(js))}
    if isinstance(text, dict):
        return SearchGoal(**{**rng, **text})
    test, _, target = str(text).partition(":")
    try:
        value = float(target) if target else 0.8
    except ValueError:
        raise InputError(f"--search {text}: write TEST or TEST:TARGET, e.g. moderator:0.8") from None
    return SearchGoal(test=test.strip(), target=value, **rng)


def fit_power_curve(j: np.ndarray, k: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ML fit of logit p = a + b log J to k rejections of n (module docstring): ((a, b), V),
    V the inverse Fisher information. With rejection rates all 0 or all 1 the MLE is infinite:
    a half rejection is then added to every cell's count of the missing outcome (Haldane)."""
    x = np.log(np.asarray(j, dtype=float))
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    if (k == 0).all() or (k == n).all() or len(np.unique(x)) < 2:
        k, n = k + 0.5, n + 1.0
    X = np.column_stack([np.ones_like(x), x])
    beta = np.zeros(2)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(X @ beta)))
        w = n * p * (1 - p)
        info = X.T @ (X * w[:, None])
        step = np.linalg.solve(info + 1e-12 * np.eye(2), X.T @ (k - n * p))
        beta = beta + step
        if np.max(np.abs(step)) < 1e-10:
            break
    p = 1.0 / (1.0 + np.exp(-(X @ beta)))
    info = X.T @ (X * (n * p * (1 - p))[:, None])
    return beta, np.linalg.inv(info + 1e-12 * np.eye(2))


@dataclass
class SampleSizeSearch:
    """The answer of a sample-size search.

    Fields: ``goal``, ``test`` (the searched test), ``patients_per_therapist``, ``cells``
    (one row per evaluated number of therapists: n_therapists, rejections, n_usable, power,
    power_low, power_high, fitted), ``coef`` (a, b) and ``cov`` of the power curve,
    ``j_star`` (the fitted J at the target, NaN when not bracketed) with ``j_low``/``j_high``
    (its 95% Monte Carlo interval), ``n_required`` (ceil(J*), or None), ``status``
    ("found", "above range", "below range", "no fit").
    """

    goal: SearchGoal
    test: TestSpec
    patients_per_therapist: float
    cells: pd.DataFrame
    coef: np.ndarray
    cov: np.ndarray
    j_star: float
    j_low: float
    j_high: float
    n_required: int | None
    status: str
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        g = self.goal
        head = (f"Sample-size search: smallest number of therapists ({self.patients_per_therapist:g} patients each) "
                f"with {g.target:.0%} power for the {self.test.label}")
        lines = [head]
        if self.status == "found":
            lines.append(f"  answer: {self.n_required} therapists (fitted J* = {self.j_star:.1f}; 95% Monte Carlo "
                         f"interval {self.j_low:.0f} to {self.j_high:.0f})")
            row = self.cells[self.cells["n_therapists"] == self.n_required]
            if len(row):
                r = row.iloc[0]
                lines.append(f"  simulated power at {self.n_required}: {r['power']:.2f} [{r['power_low']:.2f}, "
                             f"{r['power_high']:.2f}] ({int(r['n_usable'])} usable replicates)")
        elif self.status == "above range":
            lines.append(f"  not reached within {g.low}..{g.high} therapists: power at {g.high} is "
                         f"{self.cells['power'].iloc[-1]:.2f}; widen the range (--therapists LOW,HIGH)")
        elif self.status == "below range":
            lines.append(f"  already reached at {g.low} therapists (the smallest of the range)")
        else:
            lines.append("  no power curve could be fitted (no usable replicates)")
        lines.append("  cells: " + ", ".join(f"{int(r.n_therapists)}: {r.power:.2f}" for r in
                                             self.cells.itertuples()))
        lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"test": self.test.kind, "process": self.test.process, "label": self.test.label,
                "target": self.goal.target, "range": [self.goal.low, self.goal.high],
                "patients_per_therapist": self.patients_per_therapist, "status": self.status,
                "n_required": self.n_required, "j_star": _num(self.j_star), "j_low": _num(self.j_low),
                "j_high": _num(self.j_high), "coef": [float(x) for x in self.coef],
                "cells": self.cells.to_dict(orient="records")}


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _initial(goal: SearchGoal) -> list[int]:
    mid = int(round(math.sqrt(goal.low * goal.high)))
    return sorted({goal.low, mid, goal.high})


def run_search(goal: SearchGoal, test: TestSpec, patients_per_therapist: float,
               evaluate: Callable[[list[int]], pd.DataFrame]) -> SampleSizeSearch:
    """Search (module docstring). ``evaluate(js)`` runs the cells with those numbers of
    therapists and returns their table rows (``n_therapists``, ``rejections``, ``n_usable``,
    ``power``, ``power_low``, ``power_high``) for ``test``."""
    seen: dict[int, dict[str, Any]] = {}

    def run(js: list[int]) -> None:
        new = [j for j in js if j not in seen]
        if new:
            for r in evaluate(new).to_dict(orient="records"):
                seen[int(r["n_therapists"])] = r

    run(_initial(goal))
    notes: list[str] = []
    target_logit = math.log(goal.target / (1 - goal.target))
    while True:
        cells = pd.DataFrame([seen[j] for j in sorted(seen)])
        ok = cells["n_usable"] > 0
        if not ok.any():
            return SampleSizeSearch(goal, test, patients_per_therapist, cells, np.full(2, np.nan),
                                    np.full((2, 2), np.nan), math.nan, math.nan, math.nan, None, "no fit")
        coef, cov = fit_power_curve(cells.loc[ok, "n_therapists"], cells.loc[ok, "rejections"],
                                    cells.loc[ok, "n_usable"])
        a, b = coef
        top, bottom = cells.iloc[-1], cells.iloc[0]

        def fitted(j: float, a: float = a, b: float = b) -> float:
            return 1.0 / (1.0 + math.exp(-(a + b * math.log(j))))

        if top["n_therapists"] == goal.high and top["power"] < goal.target and (b <= 0 or fitted(goal.high)
                                                                                 < goal.target):
            status = "above range"
            break
        if bottom["n_therapists"] == goal.low and bottom["power"] >= goal.target and (b <= 0 or fitted(goal.low)
                                                                                       >= goal.target):
            status = "below range"
            break
        if b <= 0:
            status = "no fit"
            notes.append("the fitted power does not rise with the number of therapists")
            break
        log_j = (target_logit - a) / b
        candidate = int(min(max(math.ceil(math.exp(log_j)), goal.low), goal.high))
        if candidate in seen or len(seen) >= goal.max_cells:
            status = "found"
            break
        run([candidate])
    cells = pd.DataFrame([seen[j] for j in sorted(seen)])
    cells["fitted"] = 1.0 / (1.0 + np.exp(-(a + b * np.log(cells["n_therapists"].to_numpy(dtype=float)))))
    if status != "found":
        return SampleSizeSearch(goal, test, patients_per_therapist, cells, coef, cov, math.nan, math.nan, math.nan,
                                None, status, notes)
    g = np.array([-1.0 / b, -(target_logit - a) / b**2])
    se = float(math.sqrt(max(g @ cov @ g, 0.0)))
    j_star = math.exp(log_j)
    n_required = int(min(max(math.ceil(j_star), goal.low), goal.high))
    if len(seen) >= goal.max_cells and n_required not in seen:
        notes.append(f"stopped after {goal.max_cells} cells before evaluating {n_required} itself")
    return SampleSizeSearch(goal, test, patients_per_therapist, cells, coef, cov, j_star,
                            math.exp(log_j - Z * se), math.exp(log_j + Z * se), n_required, "found", notes)
