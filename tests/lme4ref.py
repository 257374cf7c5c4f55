"""Loading the lme4 reference fixtures of tests/fixtures (importable as `lme4ref`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

FIXTURES = Path(__file__).parent / "fixtures"


def load_fixture(name: str) -> tuple[dict, pd.DataFrame]:
    """The fixture's JSON and its data, read with the column types R used."""
    ref = json.loads((FIXTURES / f"{name}.json").read_text())
    read_as = ref.get("dataset", {}).get("read_as", "") if isinstance(ref.get("dataset"), dict) else ""
    chars = re.findall(r"(\w+) = 'character'", read_as)
    data = pd.read_csv(FIXTURES / ref.get("csv", f"{name}.csv"), dtype={c: str for c in chars})
    return ref, data
