"""More data in: the same records as JSONL, a JSON array, CSV and Parquet (what HF datasets exports) load to the
same conversations, and bad rows, missing columns and empty files are named by line or row."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from finetune.data import DatasetError, load_dataset

ROWS = [{"instruction": "Add", "input": "1, 2", "output": "3"},
        {"instruction": "Say\nhi", "input": "", "output": "hello"},
        {"instruction": "Quote", "input": 'He said "no"', "output": "no"}]
CHAT = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello"}],
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]]


def write_as(path: Path, rows: list[dict]) -> Path:
    """``rows`` in the format named by the suffix, the way HF datasets' to_json/to_csv/to_parquet write them."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    elif path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


SUFFIXES = [".jsonl", ".json", ".csv", ".parquet"]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_every_format_gives_the_same_conversations(tmp_path: Path, suffix: str) -> None:
    ref = load_dataset(write_as(tmp_path / "ref.jsonl", ROWS))
    ds = load_dataset(write_as(tmp_path / f"a{suffix}", ROWS))
    assert ds.format == "alpaca" and [e.messages for e in ds.examples] == [e.messages for e in ref.examples]
    assert ds.examples[0].messages[0]["content"] == "Add\n\n1, 2"  # a comma inside a CSV cell stays in the cell
    assert ds.examples[1].messages[0]["content"] == "Say\nhi"  # and so does a line break
    chat = load_dataset(write_as(tmp_path / f"c{suffix}", [{"messages": m} for m in CHAT]))
    assert chat.format == "chat" and [e.messages for e in chat.examples] == CHAT  # Parquet: a list<struct> column


@pytest.mark.parametrize("suffix,where", [(".jsonl", "line 2"), (".json", "line 7"), (".csv", "row 2 (line 4)"),
                                          (".parquet", "row 2")])
def test_bad_row_is_named_with_its_field(tmp_path: Path, suffix: str, where: str) -> None:
    rows = [ROWS[1], {"instruction": "x", "input": "", "output": ""}, ROWS[0]]
    p = write_as(tmp_path / f"bad{suffix}", rows)
    with pytest.raises(DatasetError) as ei:
        load_dataset(p)
    assert [i.field for i in ei.value.issues] == ["output"]
    assert str(ei.value) == f"{p}, {where}, field 'output': is empty (an empty answer teaches nothing)"


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_null_answer_and_wrong_type(tmp_path: Path, suffix: str) -> None:
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "a", "output": None},
            {"instruction": "a", "output": "c"}]
    with pytest.raises(DatasetError) as ei:
        load_dataset(write_as(tmp_path / f"n{suffix}", rows))
    (issue,) = ei.value.issues
    assert issue.field == "output" and issue.message == "is empty (null)"
    assert (issue.row, issue.line) == ((2, None) if suffix == ".parquet" else (None, 6))
    p = tmp_path / "t.json"
    p.write_text(json.dumps([{"instruction": "a", "output": 5}]))
    with pytest.raises(DatasetError, match=r"line 1, field 'output': must be a string, got int"):
        load_dataset(p)


@pytest.mark.parametrize("suffix,where", [(".csv", ", line 1"), (".parquet", "")])
def test_missing_column_is_one_problem(tmp_path: Path, suffix: str, where: str) -> None:
    p = write_as(tmp_path / f"m{suffix}", [{"instruction": f"q{i}", "answer": "a"} for i in range(20)])
    with pytest.raises(DatasetError) as ei:
        load_dataset(p)
    assert len(ei.value.issues) == 1  # not the same complaint on each of the 20 rows
    assert str(ei.value) == (f"{p}{where}, field 'output': no 'output' column (alpaca records need ['instruction', "
                             "'output']); the columns are ['instruction', 'answer']")


def test_bad_chat_cell_in_parquet_names_turn(tmp_path: Path) -> None:
    rows = [{"messages": CHAT[1]}, {"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}]
    with pytest.raises(DatasetError, match=r"bad.parquet, row 2, field 'messages\[1\].role': unknown role 'bot'"):
        load_dataset(write_as(tmp_path / "bad.parquet", rows))
    p = tmp_path / "s.parquet"  # a JSON string cell (as CSV holds it) works in Parquet too
    pq.write_table(pa.table({"messages": [json.dumps(CHAT[1]), "[{oops"]}), p)
    with pytest.raises(DatasetError, match=r"s.parquet, row 2, field 'messages': must hold a JSON list of turns"):
        load_dataset(p)


@pytest.mark.parametrize("name,make,fragment", [
    ("empty.csv", lambda p: p.write_text(""), "file is empty"),
    ("header_only.csv", lambda p: p.write_text("instruction,output\n"), "the file holds a header row but no data"),
    ("empty.json", lambda p: p.write_text("  \n"), "file is empty"),
    ("empty_array.json", lambda p: p.write_text("[\n]\n"), "the file holds an empty list"),
    ("empty.parquet", lambda p: pq.write_table(pa.table({"instruction": pa.array([], pa.string()),
                                                         "output": pa.array([], pa.string())}), p),
     "the file holds no rows"),
    ("zero_bytes.parquet", lambda p: p.write_bytes(b""), "not a readable Parquet file"),
    ("text.parquet", lambda p: p.write_text("instruction,output\na,b\n"), "not a readable Parquet file"),
    ("absent.parquet", lambda p: None, "file not found"),
])
def test_empty_and_unreadable_files(tmp_path: Path, name: str, make, fragment: str) -> None:
    p = tmp_path / name
    make(p)
    with pytest.raises(DatasetError, match=fragment) as ei:
        load_dataset(p)
    assert str(ei.value).startswith(str(p))


def test_pandas_style_csv_index_column_is_ignored(tmp_path: Path) -> None:
    p = tmp_path / "pd.csv"  # pandas' to_csv writes an unnamed index column first
    p.write_text(",instruction,output\n0,Add,3\n1,Sub,1\n")
    ds = load_dataset(p)
    assert [e.messages[-1]["content"] for e in ds.examples] == ["3", "1"] and [e.line for e in ds.examples] == [2, 3]
