"""Dataset files -> validated conversations, with errors that name the file, line and field.

Four formats are understood and detected automatically:

- ``alpaca``   JSON array or JSONL of ``{"instruction", "input"?, "output", "system"?}``
- ``chat``     JSONL/JSON of ``{"messages": [{"role": "system|user|assistant", "content": ...}]}`` (OpenAI style)
- ``sharegpt`` JSONL/JSON of ``{"conversations": [{"from": "system|human|gpt", "value": ...}]}``
- ``text``     a ``.txt``/``.md`` file, or JSONL of ``{"text": ...}`` records (continued pretraining)

Records come from JSONL, a JSON array, a ``.csv`` with a header row (columns named like the keys above;
``messages``/``conversations`` cells hold JSON) or a ``.parquet`` file (needs pyarrow): the formats HF datasets
exports. Problems name the line (JSON, JSONL), the row and its line (CSV) or the row (Parquet).

Everything except ``text`` is normalised to a list of chat messages, so rendering and loss masking
(``finetune/render.py``) only deal with one shape.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("alpaca", "chat", "sharegpt", "text")
TEXT_SUFFIXES = {".txt", ".md", ".text", ".markdown"}
JSON_SUFFIXES = {".json", ".jsonl", ".ndjson"}
TABLE_SUFFIXES = {".csv", ".parquet"}
JSON_COLUMNS = ("messages", "conversations")  # table cells holding a list of turns as JSON
CHAT_ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "chatgpt": "assistant"}
MAX_ISSUES = 50  # stop collecting after this many problems; the first ones are what users fix first


@dataclass
class DatasetIssue:
    """One problem in a dataset file: where it is and what is wrong."""

    file: str
    line: int | None
    field: str | None
    message: str
    row: int | None = None  # tables: 1 = the first data row (CSV also keeps the line where the row starts)

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f", row {self.row}" + (f" (line {self.line})" if self.line is not None else "")
        elif self.line is not None:
            where += f", line {self.line}"
        if self.field:
            where += f", field '{self.field}'"
        return f"{where}: {self.message}"


class DatasetError(ValueError):
    """Raised with every problem found (up to MAX_ISSUES), so users can fix a file in one pass."""

    def __init__(self, issues: list[DatasetIssue]):
        self.issues = issues
        if len(issues) == 1:
            msg = str(issues[0])
        else:
            shown = "\n".join(f"  - {i}" for i in issues[:10])
            more = f"\n  ... and {len(issues) - 10} more" if len(issues) > 10 else ""
            msg = f"{len(issues)} problems in {issues[0].file}:\n{shown}{more}"
        super().__init__(msg)


@dataclass
class Example:
    """One training conversation (roles: system/user/assistant) and the line it came from."""

    messages: list[dict[str, str]]
    line: int


@dataclass
class Dataset:
    path: str
    format: str
    examples: list[Example] = field(default_factory=list)  # chat-like formats
    texts: list[tuple[str, int]] = field(default_factory=list)  # format "text": (document, line)

    def __len__(self) -> int:
        return len(self.examples) if self.format != "text" else len(self.texts)


# ---- reading raw records -----------------------------------------------------------------------------------------
def _read_text(path: Path, issues: list[DatasetIssue]) -> str | None:
    if not path.exists():
        issues.append(DatasetIssue(str(path), None, None, "file not found"))
        return None
    if path.is_dir():
        issues.append(DatasetIssue(str(path), None, None, "is a folder; expected a .json, .jsonl or .txt file"))
        return None
    from llm_core.textfile import TextFileError, read_text_file

    try:  # the project's one decoder; JSON must be UTF-8, so no guessed encodings here
        text, _ = read_text_file(path, utf8_only=True)
    except TextFileError as e:
        issues.append(DatasetIssue(str(path), e.line, None, e.reason))
        return None
    return text


def _json_array_records(text: str, file: str, issues: list[DatasetIssue]) -> list[tuple[Any, int]]:
    """Parse a JSON array element by element so every record keeps its line number."""
    dec = json.JSONDecoder()
    out: list[tuple[Any, int]] = []
    i = text.index("[") + 1
    n = len(text)

    def skip_ws(j: int) -> int:
        while j < n and text[j] in " \t\r\n":
            j += 1
        return j

    i = skip_ws(i)
    if i < n and text[i] == "]":
        return out
    while True:
        i = skip_ws(i)
        line = text.count("\n", 0, i) + 1
        try:
            obj, i = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            issues.append(DatasetIssue(file, e.lineno, None, f"bad JSON: {e.msg} (column {e.colno})"))
            return out
        out.append((obj, line))
        i = skip_ws(i)
        if i < n and text[i] == ",":
            i += 1
            continue
        if i < n and text[i] == "]":
            rest = text[i + 1:].strip()
            if rest:
                issues.append(DatasetIssue(file, text.count("\n", 0, i + 1) + 1, None,
                                           "bad JSON: extra data after the closing ']'"))
            return out
        issues.append(DatasetIssue(file, text.count("\n", 0, i) + 1, None,
                                   "bad JSON: expected ',' or ']' between records"))
        return out


def _jsonl_records(text: str, file: str, issues: list[DatasetIssue]) -> list[tuple[Any, int]]:
    out: list[tuple[Any, int]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((json.loads(line), lineno))
        except json.JSONDecodeError as e:
            issues.append(DatasetIssue(file, lineno, None, f"bad JSON: {e.msg} (column {e.colno})"))
            if len(issues) >= MAX_ISSUES:
                break
    return out


def _csv_records(text: str, file: str, issues: list[DatasetIssue]) -> tuple[list[tuple[Any, int]], dict[int, int]]:
    """CSV with a header row -> (records keyed by column, line where each starts); {line: row number}."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except csv.Error as e:
        issues.append(DatasetIssue(file, 1, None, f"bad CSV header: {e}"))
        return [], {}
    header = [h.strip() for h in header]
    if not any(header) or len(set(header)) != len(header):
        issues.append(DatasetIssue(file, 1, None, "the first line must name each column once (e.g. "
                                   "instruction,input,output)"))
        return [], {}
    out: list[tuple[Any, int]] = []
    rows: dict[int, int] = {}
    row = 0
    while len(issues) < MAX_ISSUES:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            row += 1
            rows[start] = row
            issues.append(DatasetIssue(file, start, None, f"bad CSV: {e}", row=row))
            break
        if not any(c.strip() for c in cells):
            continue
        row += 1
        rows[start] = row
        if len(cells) != len(header):
            issues.append(DatasetIssue(file, start, None, f"has {len(cells)} cells but the header names "
                                       f"{len(header)} columns (quote cells that contain commas)", row=row))
            continue
        rec: dict[str, Any] = {}
        for key, cell in zip(header, cells):
            rec[key] = _json_cell(cell, key, file, start, issues, row) if key in JSON_COLUMNS else cell
        out.append((rec, start))
    return out, rows


def _json_cell(cell: Any, key: str, file: str, line: int | None, issues: list[DatasetIssue], row: int) -> Any:
    """A ``messages``/``conversations`` table cell: JSON text (CSV, Parquet strings) or already a list."""
    if not isinstance(cell, str):
        return cell
    try:
        return json.loads(cell)
    except json.JSONDecodeError as e:
        issues.append(DatasetIssue(file, line, key, f"must hold a JSON list of turns: {e.msg}", row=row))
        return None


def _parquet_records(path: Path, file: str, issues: list[DatasetIssue]) -> list[tuple[Any, int]]:
    """Parquet rows as records (numbered from 1); pyarrow reads the file."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        issues.append(DatasetIssue(file, None, None, "reading .parquet files needs the pyarrow package "
                                   "(pip install pyarrow); or save the dataset as .jsonl or .csv"))
        return []
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow's own errors: a damaged or non-parquet file
        issues.append(DatasetIssue(file, None, None, f"not a readable Parquet file ({e})"))
        return []
    out = []
    for k, rec in enumerate(rows, start=1):
        for key in JSON_COLUMNS:
            if key in rec:
                rec[key] = _json_cell(rec[key], key, file, None, issues, k)
        out.append((rec, k))
    return out


def _detect_record_format(rec: dict) -> str | None:
    if "messages" in rec:
        return "chat"
    if "conversations" in rec:
        return "sharegpt"
    if "instruction" in rec or "output" in rec:
        return "alpaca"
    if "text" in rec:
        return "text"
    return None


# ---- per-format validation -----------------------------------------------------------------------------------
def _str_field(rec: dict, key: str, file: str, line: int, issues: list[DatasetIssue], *, required: bool,
               nonempty: bool, what: str = "") -> str | None:
    if key not in rec:
        if required:
            issues.append(DatasetIssue(file, line, key, f"missing key '{key}'{what}"))
        return None
    v = rec[key]
    if v is None and not required:
        return None
    if v is None:  # JSON null, an empty Parquet cell
        issues.append(DatasetIssue(file, line, key, "is empty (null)"))
        return None
    if not isinstance(v, str):
        issues.append(DatasetIssue(file, line, key, f"must be a string, got {type(v).__name__}"))
        return None
    if nonempty and not v.strip():
        issues.append(DatasetIssue(file, line, key, "is empty" + (" (an empty answer teaches nothing)"
                                                                    if key == "output" else "")))
        return None
    return v


def _alpaca(rec: dict, file: str, line: int, issues: list[DatasetIssue]) -> Example | None:
    hint = " (Alpaca records need 'instruction' and 'output')"
    n0 = len(issues)
    instr = _str_field(rec, "instruction", file, line, issues, required=True, nonempty=False, what=hint)
    inp = _str_field(rec, "input", file, line, issues, required=False, nonempty=False)
    out = _str_field(rec, "output", file, line, issues, required=True, nonempty=True, what=hint)
    system = _str_field(rec, "system", file, line, issues, required=False, nonempty=False)
    if len(issues) > n0:
        return None
    if not (instr or "").strip() and not (inp or "").strip():
        issues.append(DatasetIssue(file, line, "instruction", "is empty (and there is no 'input' either)"))
        return None
    user = instr or ""
    if inp and inp.strip():
        user = f"{user}\n\n{inp}" if user.strip() else inp
    msgs = [{"role": "system", "content": system}] if system and system.strip() else []
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": out or ""}]
    return Example(msgs, line)


def _turns(rec: dict, file: str, line: int, issues: list[DatasetIssue], *, list_key: str, role_key: str,
           content_key: str, roles: dict[str, str]) -> Example | None:
    """Shared checks for ``chat`` (messages/role/content) and ``sharegpt`` (conversations/from/value)."""
    if list_key not in rec:
        issues.append(DatasetIssue(file, line, list_key, f"missing key '{list_key}'"))
        return None
    turns = rec[list_key]
    if not isinstance(turns, list) or not turns:
        issues.append(DatasetIssue(file, line, list_key, "must be a non-empty list of turns"))
        return None
    n0 = len(issues)
    msgs: list[dict[str, str]] = []
    for k, t in enumerate(turns):
        where = f"{list_key}[{k}]"
        if not isinstance(t, dict):
            issues.append(DatasetIssue(file, line, where, f"must be an object with '{role_key}' and '{content_key}'"))
            continue
        role = t.get(role_key)
        if role_key not in t:
            issues.append(DatasetIssue(file, line, f"{where}.{role_key}", f"missing key '{role_key}'"))
        elif not isinstance(role, str) or role.lower() not in roles:
            issues.append(DatasetIssue(file, line, f"{where}.{role_key}",
                                       f"unknown role {role!r}; expected one of {sorted(set(roles))}"))
        content = t.get(content_key)
        if content_key not in t:
            issues.append(DatasetIssue(file, line, f"{where}.{content_key}", f"missing key '{content_key}'"))
            continue
        if not isinstance(content, str):
            issues.append(DatasetIssue(file, line, f"{where}.{content_key}",
                                       f"must be a string, got {type(content).__name__}"))
            continue
        if isinstance(role, str) and role.lower() in roles:
            norm = roles[role.lower()]
            if norm == "assistant" and not content.strip():
                issues.append(DatasetIssue(file, line, f"{where}.{content_key}", "empty assistant answer"))
                continue
            msgs.append({"role": norm, "content": content})
    if len(issues) > n0:
        return None
    if not any(m["role"] == "assistant" for m in msgs):
        issues.append(DatasetIssue(file, line, list_key, "no assistant turn: nothing for the model to learn"))
        return None
    return Example(msgs, line)


def _json_records(text: str, suffix: str, file: str, issues: list[DatasetIssue]) -> list[tuple[Any, int]]:
    """A JSON array, one (pretty-printed) object in a .json file, or JSONL."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        return _json_array_records(text, file, issues)
    if suffix == ".json":
        try:
            return [(json.loads(text), text[: len(text) - len(stripped)].count("\n") + 1)]
        except json.JSONDecodeError:
            pass
    return _jsonl_records(text, file, issues)  # one record per line (also accepted in a .json file)


def _check_format(fmt: str) -> str:
    if fmt not in ("auto", *FORMATS):
        raise ValueError(f"unknown dataset format {fmt!r}; choose auto or one of {FORMATS}")
    return fmt


def load_dataset(path: str | Path, format: str = "auto") -> Dataset:
    """Read and validate a dataset file; raise DatasetError listing every problem found."""
    fmt = _check_format(format)
    path = Path(path)
    file, suffix = str(path), path.suffix.lower()
    issues: list[DatasetIssue] = []
    read = _read_records(path, fmt, issues)
    if isinstance(read, Dataset):  # plain text
        return read
    records, rows = read
    if not records and not issues:
        what = {".csv": "a header row but no data rows", ".parquet": "no rows"}.get(suffix, "an empty list")
        issues.append(DatasetIssue(file, None, None, f"no records found (the file holds {what})"))
    fmt = _detect_format(records, fmt, file, issues)
    if fmt == "auto":  # nothing usable to detect from
        if not issues:
            issues.append(DatasetIssue(file, records[0][1] if records else None, None,
                                       "records must be JSON objects"))
        raise DatasetError(_table_rows(issues, rows, suffix == ".parquet"))
    if rows is not None and records and not issues:
        _check_columns(records, fmt, file, suffix, issues)
        if issues:
            raise DatasetError(issues)
    ds = _examples(records, fmt, file, issues)
    if issues:
        raise DatasetError(_table_rows(issues[:MAX_ISSUES], rows, suffix == ".parquet"))
    return ds


def _read_records(path: Path, fmt: str, issues: list[DatasetIssue]
                  ) -> Dataset | tuple[list[tuple[Any, int]], dict[int, int] | None]:
    """(records with their line numbers, how a table's lines map to rows), or the Dataset of a plain text file."""
    file, suffix = str(path), path.suffix.lower()
    if suffix not in TEXT_SUFFIXES | JSON_SUFFIXES | TABLE_SUFFIXES:
        raise DatasetError([DatasetIssue(file, None, None, f"unsupported file type '{suffix or path.name}': use "
                                         ".json/.jsonl/.csv/.parquet (Alpaca, chat or ShareGPT records) or .txt "
                                         "(plain text)")])
    if suffix == ".parquet":
        if not path.is_file():
            raise DatasetError([DatasetIssue(file, None, None, "file not found")])
        return _parquet_records(path, file, issues), {}
    text = _read_text(path, issues)
    if text is None:
        raise DatasetError(issues)
    if suffix in TEXT_SUFFIXES:
        if fmt not in ("auto", "text"):
            raise DatasetError([DatasetIssue(file, None, None, f"a {suffix} file is plain text, not {fmt} records")])
        return Dataset(file, "text", texts=[(text, 1)])
    if suffix == ".csv":
        return _csv_records(text, file, issues)
    return _json_records(text, suffix, file, issues), None


def _detect_format(records: list[tuple[Any, int]], fmt: str, file: str, issues: list[DatasetIssue]) -> str:
    """``fmt``, or for "auto" the format of the first record that is an object ("auto" when none tells)."""
    if fmt != "auto":
        return fmt
    for rec, line in records:
        if isinstance(rec, dict):
            fmt = _detect_record_format(rec) or "auto"
            if fmt == "auto":
                issues.append(DatasetIssue(
                    file, line, None, f"unrecognised record with keys {sorted(rec)}: expected Alpaca "
                    "('instruction','output'), chat ('messages'), ShareGPT ('conversations') or 'text'"))
            break
    return fmt


def _examples(records: list[tuple[Any, int]], fmt: str, file: str, issues: list[DatasetIssue]) -> Dataset:
    """Each record validated and turned into an Example (or a text), problems collected in ``issues``."""
    ds = Dataset(file, fmt)
    for rec, line in records:
        if len(issues) >= MAX_ISSUES:
            break
        if not isinstance(rec, dict):
            issues.append(DatasetIssue(file, line, None, f"record must be a JSON object, got {type(rec).__name__}"))
            continue
        if fmt == "alpaca":
            ex = _alpaca(rec, file, line, issues)
        elif fmt == "chat":
            ex = _turns(rec, file, line, issues, list_key="messages", role_key="role", content_key="content",
                        roles={r: r for r in CHAT_ROLES})
        elif fmt == "sharegpt":
            ex = _turns(rec, file, line, issues, list_key="conversations", role_key="from", content_key="value",
                        roles=SHAREGPT_ROLES)
        else:
            doc = _str_field(rec, "text", file, line, issues, required=True, nonempty=True)
            if doc is not None:
                ds.texts.append((doc, line))
            continue
        if ex is not None:
            ds.examples.append(ex)
    return ds


TABLE_COLUMNS = {"alpaca": ("instruction", "output"), "chat": ("messages",), "sharegpt": ("conversations",),
                 "text": ("text",)}


def _check_columns(records: list[tuple[Any, int]], fmt: str, file: str, suffix: str,
                   issues: list[DatasetIssue]) -> None:
    """A table missing a needed column is one problem (named once), not the same one on every row."""
    cols = list(records[0][0])
    for need in TABLE_COLUMNS[fmt]:
        if need not in cols:
            issues.append(DatasetIssue(file, 1 if suffix == ".csv" else None, need,
                                       f"no '{need}' column ({fmt} records need {list(TABLE_COLUMNS[fmt])}); the "
                                       f"columns are {cols}"))


def _table_rows(issues: list[DatasetIssue], rows: dict[int, int] | None, parquet: bool) -> list[DatasetIssue]:
    """Record checks know a record's "line"; in a table that is the CSV line where the row starts (shown with
    its row number) or, in Parquet, the row number itself."""
    if rows is None:
        return issues
    for i in issues:
        if i.row is None and i.line is not None:
            if parquet:
                i.row, i.line = i.line, None
            else:
                i.row = rows.get(i.line)
    return sorted(issues, key=lambda i: (i.row is None, i.row or 0))  # parse and record problems in row order
