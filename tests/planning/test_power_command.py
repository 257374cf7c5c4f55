"""theralens power: writes table and figure, exit 0; bad input: exit 2 and one line."""

from __future__ import annotations

import json

import pytest

from theralens.cli import main


def test_writes_files(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan"
    code = main(["power", "--therapists", "8,12", "--patients-per-therapist", "3", "--nsim", "4", "--workers", "1",
                 "--seed", "3", "--out", str(out), "--set", "within.alliance=-0.2"])
    assert code == 0
    for name in ("power.csv", "power.json", "power.png", "power.svg"):
        assert (out / name).stat().st_size > 0
    doc = json.loads((out / "power.json").read_text())
    assert doc["meta"]["nsim"] == 4 and len(doc["table"]) == 2 * 7
    assert doc["meta"]["overrides"]["within"] == {"alliance": -0.2}
    assert (out / "power.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (out / "power.svg").read_text()[:500]
    assert "wrote 4 files" in capsys.readouterr().out


@pytest.mark.parametrize("args", [
    ["--set", "within.aliance=-0.2"],
    ["--set", "within.alliance"],
    ["--set", "slope_sd.alliance=big"],
    ["--set", "n_therapists=80"],
    ["--therapists", "42,abc"],
    ["--therapists", "0"],
    ["--patients-per-therapist", "5,"],
    ["--nsim", "0"],
    ["--alpha", "2"],
    ["--preset", "coyne"],
])
def test_bad_input_one_line_exit_2(tmp_path, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    code = main(["power", "--nsim", "2", "--therapists", "8", "--out", str(tmp_path / "x"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("theralens: ")
