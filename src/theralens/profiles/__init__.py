"""Therapist profiles (models.md "Profiles"): per therapist and process, the slope relative to
the average with its interval, the probability of being stronger than average, the rank among
peers with its uncertainty, caseload means against peers, the overall outcome effect u0j,
moderators, and plain language that follows the uncertainty.

Pure computation: :func:`profiles_from_document` turns a results document (``results.json``)
into :class:`Profiles` (:func:`build_profiles` a :class:`~theralens.study.result.StudyResult`);
the report draws them (``theralens.report``).
"""

from theralens.profiles.language import AVERAGE, CATEGORIES, GROWTH, STRENGTH, UNCERTAIN, classify_interval
from theralens.profiles.profile import (
    OutcomeProfile,
    ProcessProfile,
    Profiles,
    TherapistProfile,
    build_profiles,
    profiles_from_document,
    profiles_from_tables,
)
from theralens.profiles.ranks import rank_intervals

__all__ = [
    "AVERAGE",
    "CATEGORIES",
    "GROWTH",
    "STRENGTH",
    "UNCERTAIN",
    "OutcomeProfile",
    "ProcessProfile",
    "Profiles",
    "TherapistProfile",
    "build_profiles",
    "classify_interval",
    "profiles_from_document",
    "profiles_from_tables",
    "rank_intervals",
]
