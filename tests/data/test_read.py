"""Reading every supported format, and one-line errors for unreadable input (data/read.py)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd
import pyreadstat
import pytest

from theralens.data.read import read_table
from theralens.errors import InputError


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "therapist": ["T1", "T1", "T2", "T2"],
            "patient": ["P1", "P1", "P2", "P2"],
            "session": [1, 2, 1, 2],
            "outcome": [1.5, np.nan, 0.25, 0.75],
            "alliance": [5.0, 5.5, 6.0, 4.5],
        }
    )


def same(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(got.columns) == list(expected.columns)
    assert len(got) == len(expected)
    for c in expected:
        if pd.api.types.is_numeric_dtype(expected[c]):
            np.testing.assert_allclose(got[c].to_numpy(float), expected[c].to_numpy(float))
        else:
            assert list(got[c].astype(str)) == list(expected[c].astype(str))


def test_csv_roundtrip(tmp_path, frame):
    path = tmp_path / "s.csv"
    frame.to_csv(path, index=False)
    df = read_table(path)
    same(df, frame)
    assert df.attrs["first_data_row"] == 2
    assert df.attrs["format"] == "text"


def test_tsv_and_semicolon_txt(tmp_path, frame):
    tsv = tmp_path / "s.tsv"
    frame.to_csv(tsv, index=False, sep="\t")
    same(read_table(tsv), frame)
    txt = tmp_path / "s.txt"
    frame.to_csv(txt, index=False, sep=";")
    same(read_table(txt), frame)


def test_csv_windows_encoding_and_bom(tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes("therapist,note\nT1,caf\xe9\nT2,x\n".encode("cp1252"))
    df = read_table(path)
    assert df["note"][0] == "caf\xe9"
    assert any("cp1252" in n for n in df.attrs["notes"])
    bom = tmp_path / "b.csv"
    bom.write_bytes("\ufefftherapist,x\nT1,1\n".encode())
    assert list(read_table(bom).columns) == ["therapist", "x"]


def test_blank_lines_keep_row_numbers(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("a,b\n1,2\n\n3,4\n", encoding="utf-8")
    df = read_table(path)
    assert len(df) == 3  # line 3 is blank: kept as an empty row so row k+2 is line k+2
    assert df["a"].isna().tolist() == [False, True, False]


def test_parquet_roundtrip(tmp_path, frame):
    path = tmp_path / "s.parquet"
    frame.to_parquet(path)
    df = read_table(path)
    same(df, frame)
    assert df.attrs["first_data_row"] == 1


def test_xlsx_single_sheet(tmp_path, frame):
    path = tmp_path / "s.xlsx"
    frame.to_excel(path, index=False)
    df = read_table(path)
    same(df, frame)
    assert df.attrs["first_data_row"] == 2


def test_xlsx_several_sheets(tmp_path, frame):
    path = tmp_path / "book.xlsx"
    with pd.ExcelWriter(path) as xw:
        pd.DataFrame({"note": ["read me"]}).to_excel(xw, sheet_name="Info", index=False)
        frame.to_excel(xw, sheet_name="Sessions", index=False)
    with pytest.raises(InputError) as err:
        read_table(path)
    msg = str(err.value)
    assert "book.xlsx" in msg and '"Info"' in msg and '"Sessions"' in msg and "sheet" in msg
    same(read_table(path, sheet="Sessions"), frame)
    same(read_table(path, sheet=1), frame)
    with pytest.raises(InputError, match='did you mean "Sessions"'):
        read_table(path, sheet="sessions ")
    with pytest.raises(InputError, match="no sheet number 5"):
        read_table(path, sheet=5)


def test_sav_roundtrip_with_value_labels(tmp_path):
    df = pd.DataFrame(
        {
            "therapist": [1.0, 1.0, 2.0, 2.0],
            "alliance": [1.0, 5.0, 7.0, 4.0],
            "orientation": [1.0, 2.0, 1.0, 3.0],
        }
    )
    path = tmp_path / "s.sav"
    pyreadstat.write_sav(
        df,
        str(path),
        variable_value_labels={
            "alliance": {1.0: "not at all", 7.0: "completely"},
            "orientation": {1.0: "CBT", 2.0: "psychodynamic", 3.0: "integrative"},
        },
        variable_measure={"alliance": "scale", "orientation": "nominal", "therapist": "nominal"},
    )
    before = path.read_bytes()
    out = read_table(path)
    assert path.read_bytes() == before
    assert out["alliance"].tolist() == [1.0, 5.0, 7.0, 4.0]  # scale: codes kept
    assert out["orientation"].tolist() == ["CBT", "psychodynamic", "CBT", "integrative"]
    assert out.attrs["labels_applied"] == ["orientation"]
    assert out.attrs["value_labels"]["alliance"][7.0] == "completely"
    assert out.attrs["first_data_row"] == 1
    assert any("orientation" in n and "labels are used" in n for n in out.attrs["notes"])
    assert any("alliance" in n and "codes are used" in n for n in out.attrs["notes"])


def test_dta_roundtrip(tmp_path, frame):
    data = frame.copy()
    data["orientation"] = pd.Categorical(["CBT", "CBT", "other", "other"])
    path = tmp_path / "s.dta"
    data.to_stata(path, write_index=False)
    out = read_table(path)
    same(out[list(frame.columns)], frame)
    assert out["orientation"].tolist() == ["CBT", "CBT", "other", "other"]  # fully labelled
    assert out.attrs["format"] == "stata"


def test_input_is_not_modified(tmp_path, frame):
    path = tmp_path / "s.csv"
    frame.to_csv(path, index=False)
    stat, before = os.stat(path), path.read_bytes()
    read_table(path)
    assert path.read_bytes() == before
    assert os.stat(path).st_mtime_ns == stat.st_mtime_ns


def one_line(exc: pytest.ExceptionInfo, *parts: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg
    for part in parts:
        assert part in msg, msg


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError) as err:
        read_table(tmp_path / "none.csv")
    one_line(err, "none.csv", "does not exist")
    with pytest.raises(InputError) as err:
        read_table(tmp_path)
    one_line(err, "folder")


def test_empty_and_header_only(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(InputError) as err:
        read_table(empty)
    one_line(err, "empty.csv", "empty")
    blank = tmp_path / "blank.csv"
    blank.write_text("\n\n  \n")
    with pytest.raises(InputError) as err:
        read_table(blank)
    one_line(err, "blank.csv")
    header = tmp_path / "header.csv"
    header.write_text("therapist,patient\n")
    with pytest.raises(InputError) as err:
        read_table(header, what="therapists")
    one_line(err, "therapists file", "header.csv", "no data rows")


def test_garbled_files(tmp_path, frame):
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"a,b\n\x00\x01\x02\xff\xfe\n")
    with pytest.raises(InputError) as err:
        read_table(binary)
    one_line(err, "bin.csv", "binary")
    xlsx_as_csv = tmp_path / "really.csv"
    frame.to_excel(tmp_path / "x.xlsx", index=False)
    xlsx_as_csv.write_bytes((tmp_path / "x.xlsx").read_bytes())
    with pytest.raises(InputError) as err:
        read_table(xlsx_as_csv)
    one_line(err, "really.csv", ".xlsx")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b\n1,2\n3,4,5,6\n")
    with pytest.raises(InputError) as err:
        read_table(ragged)
    one_line(err, "ragged.csv", "same number")


@pytest.mark.parametrize("ext", [".xlsx", ".parquet", ".sav", ".dta"])
def test_corrupt_binary_formats(tmp_path, ext):
    path = tmp_path / f"bad{ext}"
    path.write_text("this is not a real file\n")
    with pytest.raises(InputError) as err:
        read_table(path)
    one_line(err, f"bad{ext}")


def test_unknown_extension_and_xls(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("{}")
    with pytest.raises(InputError) as err:
        read_table(path)
    one_line(err, "data.json", ".json", ".csv")


def test_duplicate_column_names(tmp_path):
    path = tmp_path / "dup.xlsx"
    pd.DataFrame([[1, 2]], columns=["a", "b"]).to_excel(path, index=False)
    df = read_table(path)
    assert list(df.columns) == ["a", "b"]


@pytest.mark.parametrize(("ext", "module", "extra"), [(".xlsx", "openpyxl", "excel"), (".sav", "pyreadstat", "spss"),
                                                      (".dta", "pyreadstat", "spss")])
def test_missing_optional_reader_names_the_extra(tmp_path, frame, monkeypatch, ext, module, extra):
    """Without openpyxl / pyreadstat (optional extras) the file is refused in one line naming the extra."""
    path = tmp_path / f"s{ext}"
    numeric = frame.assign(therapist=[1, 1, 2, 2], patient=[1, 1, 2, 2])
    if ext == ".xlsx":
        numeric.to_excel(path, index=False)
    elif ext == ".sav":
        pyreadstat.write_sav(numeric, str(path))
    else:
        pyreadstat.write_dta(numeric, str(path))
    monkeypatch.setitem(sys.modules, module, None)  # the import now raises ImportError
    with pytest.raises(InputError) as err:
        read_table(path)
    one_line(err, f"s{ext}", module, f"pip install 'theralens[{extra}]'")
    monkeypatch.undo()
    same(read_table(path), numeric)
