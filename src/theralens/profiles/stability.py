"""Does a therapist's profile label hold across the two halves of their caseload?
(docs/stability_training.md; the ``stability`` section of ``results.json``.)

For each therapist, process and half h (earlier, later), the slope deviation u1j^(h) with its
conditional SD is turned into the benefit direction and classified by the rule of the profiles
(:func:`theralens.profiles.language.classify_interval`: strength, growth area, or not
distinguishable from the average); the labels of the two halves *agree* when they are the same.
A half with fewer than two patients has no slope of its own: its label is "too uncertain to
interpret" and the agreement is not judged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
from scipy import stats

from theralens.profiles.language import UNCERTAIN, classify_interval

__all__ = ["AGREE", "DIFFER", "NOT_JUDGED", "half_labels", "label_agreement"]

Z975 = float(stats.norm.ppf(0.975))
AGREE = "agrees"
DIFFER = "differs"
NOT_JUDGED = "not judged (fewer than two patients in a half)"


def _label(n: int, dev: Any, sd: Any, sign: int) -> str:
    if n < 2 or dev is None or sd is None:
        return UNCERTAIN
    lo, hi = sign * (float(dev) - Z975 * float(sd)), sign * (float(dev) + Z975 * float(sd))
    return classify_interval(lo, hi)


def half_labels(doc: Mapping[str, Any]) -> pd.DataFrame:
    """One row per therapist and process of the document's ``stability`` section: therapist,
    process, n_earlier, n_later, label_earlier, label_later, agreement (:data:`AGREE`,
    :data:`DIFFER` or :data:`NOT_JUDGED`). Empty without a ``stability`` section."""
    cols = ["therapist", "process", "n_earlier", "n_later", "label_earlier", "label_later", "agreement"]
    section = doc.get("stability")
    if not section:
        return pd.DataFrame(columns=cols)
    sign = int(doc["benefit_sign"])
    rows = []
    for r in section["therapists"]:
        early = _label(int(r["n_earlier"]), r["deviation_earlier"], r["sd_earlier"], sign)
        late = _label(int(r["n_later"]), r["deviation_later"], r["sd_later"], sign)
        agreement = NOT_JUDGED if UNCERTAIN in (early, late) else (AGREE if early == late else DIFFER)
        rows.append({"therapist": str(r["therapist"]), "process": r["process"], "n_earlier": int(r["n_earlier"]),
                     "n_later": int(r["n_later"]), "label_earlier": early, "label_later": late, "agreement": agreement})
    return pd.DataFrame(rows, columns=cols)


def label_agreement(labels: pd.DataFrame) -> pd.DataFrame:
    """Per process: therapists judged, agreeing, differing, and among those labelled a strength
    or growth area in either half, how many kept the same label (``kept_strength_growth``)."""
    rows = []
    for p, d in labels.groupby("process", sort=False):
        judged = d[d["agreement"] != NOT_JUDGED]
        flagged = judged[(judged["label_earlier"].isin(["strength", "growth area"]))
                         | (judged["label_later"].isin(["strength", "growth area"]))]
        rows.append({"process": p, "therapists": len(d), "judged": len(judged),
                     "agree": int((judged["agreement"] == AGREE).sum()),
                     "differ": int((judged["agreement"] == DIFFER).sum()),
                     "strength_or_growth": len(flagged),
                     "kept_strength_growth": int((flagged["agreement"] == AGREE).sum())})
    return pd.DataFrame(rows, columns=["process", "therapists", "judged", "agree", "differ", "strength_or_growth",
                                       "kept_strength_growth"])
