"""Regenerate the demo CSV files in this folder: ``python -m theralens.datasets``."""

from __future__ import annotations

from pathlib import Path

from theralens.datasets import SESSIONS_FILE, THERAPISTS_FILE, demo_from_simulator


def main() -> None:
    """Write coyne2022_sessions.csv and coyne2022_therapists.csv next to this file."""
    here = Path(__file__).parent
    sessions, therapists = demo_from_simulator()
    sessions.to_csv(here / SESSIONS_FILE, index=False, lineterminator="\n")
    therapists.to_csv(here / THERAPISTS_FILE, index=False, lineterminator="\n")
    print(f"wrote {len(sessions)} session rows and {len(therapists)} therapists to {here}")


if __name__ == "__main__":
    main()
