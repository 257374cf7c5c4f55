"""Regenerate the demo CSV files in this folder: ``python -m theralens.datasets``."""

from __future__ import annotations

from pathlib import Path

from theralens.datasets import SESSIONS_FILE, THERAPISTS_FILE, TRAINING_FILE, demo_from_simulator


def main() -> None:
    """Write coyne2022_sessions.csv, coyne2022_therapists.csv and coyne2022_training.csv next to
    this file."""
    here = Path(__file__).parent
    sessions, therapists, training = demo_from_simulator(with_training=True)
    sessions.to_csv(here / SESSIONS_FILE, index=False, lineterminator="\n")
    therapists.to_csv(here / THERAPISTS_FILE, index=False, lineterminator="\n")
    training.to_csv(here / TRAINING_FILE, index=False, lineterminator="\n")
    print(f"wrote {len(sessions)} session rows and {len(therapists)} therapists to {here}")


if __name__ == "__main__":
    main()
