"""Plain-language classification of a therapist's slope, and the training suggestion that goes
with it (models.md "Profiles": language must follow the uncertainty).

The rule, applied to the 95% interval of the therapist's deviation from the average slope,
turned into the benefit direction (positive = more benefit than average):

- the whole interval above 0: **strength**;
- the whole interval below 0: **growth area**;
- otherwise: **not distinguishable from the average** (never called a weakness);
- too few patients, or no slope of their own: **too uncertain to interpret**, with the reason.

Suggestions know the two processes of the study (the alliance and outcome expectation,
Coyne et al. 2022) and use generic wording for any other process.
"""

from __future__ import annotations

import math
import re

__all__ = [
    "AVERAGE",
    "CATEGORIES",
    "GROWTH",
    "STRENGTH",
    "UNCERTAIN",
    "classify_interval",
    "outcome_statement",
    "process_kind",
    "process_statement",
    "training_suggestion",
]

STRENGTH = "strength"
GROWTH = "growth area"
AVERAGE = "not distinguishable from the average"
UNCERTAIN = "too uncertain to interpret"
#: Every classification a profile can carry.
CATEGORIES = (STRENGTH, GROWTH, AVERAGE, UNCERTAIN)


def classify_interval(benefit_low: float | None, benefit_high: float | None) -> str:
    """Classification of a 95% interval expressed in the benefit direction (0 = the average).

    A missing or non-finite bound gives :data:`UNCERTAIN`; an interval that touches 0 is
    :data:`AVERAGE`.
    """
    if benefit_low is None or benefit_high is None:
        return UNCERTAIN
    lo, hi = float(benefit_low), float(benefit_high)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return UNCERTAIN
    lo, hi = min(lo, hi), max(lo, hi)
    if lo > 0:
        return STRENGTH
    if hi < 0:
        return GROWTH
    return AVERAGE


def process_kind(process: str) -> str:
    """``"alliance"``, ``"expectancy"`` or ``"other"``, recognised from the process name."""
    name = process.lower()
    tokens = set(re.split(r"[^a-z0-9]+", name))
    if "alliance" in name or tokens & {"wai", "calpas", "srs", "hat"}:
        return "alliance"
    if any(k in name for k in ("expectan", "expectation", "hope", "credib")) or tokens & {"oe", "ceq"}:
        return "expectancy"
    return "other"


def _association(process: str, design: str) -> str:
    if design == "session":
        return (f"sessions in which a patient rated {process} higher than usual for that patient were followed by "
                "more improvement")
    return f"patients who rated {process} higher than this therapist's other patients improved more"


def process_statement(process: str, category: str, design: str = "patient", reason: str = "") -> str:
    """One or two plain sentences describing the classification of ``process``."""
    assoc = _association(process, design)
    if category == STRENGTH:
        return (f"A relative strength. For this therapist, {assoc}, and this link is stronger than for the average "
                "therapist: the whole 95% interval lies on the side of more benefit.")
    if category == GROWTH:
        return (f"A growth area. The link between {process} and improvement is weaker for this therapist than for "
                "the average therapist: the whole 95% interval lies on the side of less benefit.")
    if category == AVERAGE:
        return (f"Not distinguishable from the average. The 95% interval includes the average therapist's slope, "
                f"so these data cannot tell whether {process} works better or worse for this therapist than for "
                "peers. This is not a weakness.")
    why = f": {reason}" if reason else ""
    return f"Too uncertain to interpret{why}."


_SUGGESTIONS = {
    "alliance": {
        STRENGTH: ("Play to this strength: keep attending to the alliance (agreement on goals and tasks, the bond) "
                   "and consider sharing how you build it, for example as a peer model in supervision."),
        GROWTH: ("Consider alliance-focused training: deliberate practice of alliance-fostering and rupture-repair "
                 "skills, and asking patients routinely for feedback on the alliance."),
        AVERAGE: ("No alliance-specific training is indicated by these data; continue routine alliance monitoring. "
                  "A larger caseload would sharpen this estimate."),
    },
    "expectancy": {
        STRENGTH: ("Play to this strength: keep fostering patients' hope and outcome expectations (a credible "
                   "treatment rationale, pointing out early progress) and consider sharing how you do it with "
                   "peers."),
        GROWTH: ("Consider training in outcome-expectation strategies: presenting a credible treatment rationale, "
                 "discussing and monitoring patients' expectations, and responding when hope is low or falling."),
        AVERAGE: ("No expectation-specific training is indicated by these data; continue monitoring patients' "
                  "outcome expectations. A larger caseload would sharpen this estimate."),
    },
}


def training_suggestion(process: str, category: str) -> str:
    """The training suggestion matching ``category`` for ``process``."""
    if category == UNCERTAIN:
        return ("No suggestion can be made from these data; revisit this profile when more patients have been "
                "seen.")
    kind = process_kind(process)
    if kind in _SUGGESTIONS:
        return _SUGGESTIONS[kind][category]
    if category == STRENGTH:
        return (f"Play to this strength: keep using what fosters {process} with your patients and consider sharing "
                "it with peers.")
    if category == GROWTH:
        return (f"Consider training focused on fostering {process} and on responding when patients' {process} "
                "ratings are low.")
    return (f"No {process}-specific training is indicated by these data; continue monitoring it. A larger caseload "
            "would sharpen this estimate.")


def outcome_statement(category: str, reason: str = "") -> str:
    """Plain sentence for the therapist's overall outcome effect u0j."""
    if category == STRENGTH:
        return ("Patients of this therapist improved more than those of the average therapist (the whole 95% "
                "interval lies on the side of more benefit).")
    if category == GROWTH:
        return ("Patients of this therapist improved less than those of the average therapist (the whole 95% "
                "interval lies on the side of less benefit).")
    if category == AVERAGE:
        return ("Overall outcomes are not distinguishable from those of the average therapist (the 95% interval "
                "includes the average).")
    why = f": {reason}" if reason else ""
    return f"Too uncertain to interpret{why}."
