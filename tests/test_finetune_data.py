"""Dataset formats, validation errors (file/line/field), rendering with loss masking, split and collate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.data import DatasetError, load_dataset
from finetune.demo import demo_splits, exact_match, parse_answer, write_demo
from finetune.paths import DEMO_ASSETS
from finetune.render import (
    IGNORE_INDEX,
    collate,
    format_preview,
    prepare,
    preview,
    render_example,
    train_val_split,
)
from tests.test_finetune_utils import SPECIALS, ByteChatTokenizer

TOK = ByteChatTokenizer()


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


def jsonl(rows: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


# ---- formats -------------------------------------------------------------------------------------------------
def test_alpaca_json_array_and_jsonl(tmp_path: Path) -> None:
    rows = [{"instruction": "Add", "input": "2+2", "output": "4"}, {"instruction": "Say hi", "output": "hi"}]
    for name, text in (("a.json", json.dumps(rows, indent=2)), ("a.jsonl", jsonl(rows))):
        ds = load_dataset(write(tmp_path, name, text))
        assert ds.format == "alpaca" and len(ds) == 2
        assert ds.examples[0].messages == [{"role": "user", "content": "Add\n\n2+2"},
                                           {"role": "assistant", "content": "4"}]
        assert ds.examples[1].messages[0] == {"role": "user", "content": "Say hi"}
    # line numbers in a pretty-printed array point at each record's opening brace
    ds = load_dataset(tmp_path / "a.json")
    lines = (tmp_path / "a.json").read_text().splitlines()
    assert [lines[e.line - 1].strip() for e in ds.examples] == ["{", "{"]
    assert [e.line for e in load_dataset(tmp_path / "a.jsonl").examples] == [1, 2]


def test_chat_sharegpt_and_text(tmp_path: Path) -> None:
    chat = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello"}]}]
    ds = load_dataset(write(tmp_path, "c.jsonl", jsonl(chat)))
    assert ds.format == "chat" and ds.examples[0].messages == chat[0]["messages"]

    sg = [{"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                             {"from": "gpt", "value": "A"}]}]
    ds = load_dataset(write(tmp_path, "s.json", json.dumps(sg)))
    assert ds.format == "sharegpt"
    assert [m["role"] for m in ds.examples[0].messages] == ["system", "user", "assistant"]

    ds = load_dataset(write(tmp_path, "t.txt", "Once upon a time.\n\nThe end.\n"))
    assert ds.format == "text" and ds.texts[0][0].startswith("Once")
    ds = load_dataset(write(tmp_path, "t.jsonl", jsonl([{"text": "doc one"}, {"text": "doc two"}])))
    assert ds.format == "text" and [t for t, _ in ds.texts] == ["doc one", "doc two"]


# ---- validation: every bad case names file, line and field ------------------------------------------------------
BAD_CASES = [
    # (file name, content, expected line, expected field, message fragment)
    ("bad_json.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": }\n', 2, None, "bad JSON"),
    ("missing.jsonl", jsonl([{"instruction": "a", "output": "b"}, {"instruction": "a"}]), 2, "output",
     "missing key 'output'"),
    ("empty_answer.jsonl", jsonl([{"instruction": "a", "output": "b"}, {"instruction": "a", "output": "  "}]), 2,
     "output", "is empty"),
    ("empty_chat_answer.jsonl", jsonl([{"messages": [{"role": "user", "content": "q"},
                                                     {"role": "assistant", "content": ""}]}]), 1,
     "messages[1].content", "empty assistant answer"),
    ("role.jsonl", jsonl([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
                          {"messages": [{"role": "bot", "content": "q"}, {"role": "assistant", "content": "a"}]}]),
     2, "messages[0].role", "unknown role 'bot'"),
    ("sg_role.jsonl", jsonl([{"conversations": [{"from": "robot", "value": "q"}, {"from": "gpt", "value": "a"}]}]),
     1, "conversations[0].from", "unknown role 'robot'"),
    ("no_assistant.jsonl", jsonl([{"messages": [{"role": "user", "content": "q"}]}]), 1, "messages",
     "no assistant turn"),
    ("type.jsonl", jsonl([{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]}]),
     1, "messages[0].content", "must be a string"),
    ("not_obj.jsonl", jsonl([{"instruction": "a", "output": "b"}, [1, 2]]), 2, None, "must be a JSON object"),
    ("unknown.jsonl", jsonl([{"question": "a", "answer": "b"}]), 1, None, "unrecognised record"),
    ("array.json", '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "a", "output": "b",}\n]\n', 3, None,
     "bad JSON"),
    ("no_messages.jsonl", jsonl([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant",
                                                                                    "content": "a"}]},
                                 {"instruction": "x", "output": "y"}]), 2, "messages", "missing key 'messages'"),
]


@pytest.mark.parametrize("name,content,line,field,fragment", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_dataset_errors(tmp_path: Path, name, content, line, field, fragment) -> None:
    p = write(tmp_path, name, content)
    with pytest.raises(DatasetError) as ei:
        load_dataset(p)
    issue = ei.value.issues[0]
    assert issue.file == str(p) and issue.line == line and issue.field == field
    assert fragment in issue.message
    text = str(ei.value)
    assert str(p) in text and f"line {line}" in text and (field is None or f"field '{field}'" in text)


@pytest.mark.parametrize("name,content,fragment", [
    ("empty.jsonl", "  \n\n", "file is empty"),
    ("empty_list.json", "[]", "no records found"),
    ("data.xlsx", "a,b\n1,2\n", "unsupported file type '.xlsx'"),
    ("latin1.txt", "caf\xe9".encode("latin-1"), "not valid UTF-8"),
    ("missing_file.jsonl", None, "file not found"),
])
def test_bad_files(tmp_path: Path, name, content, fragment) -> None:
    p = tmp_path / name if content is None else write(tmp_path, name, content)
    with pytest.raises(DatasetError, match=fragment) as ei:
        load_dataset(p)
    assert str(p) in str(ei.value)


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    rows = [{"instruction": "a", "output": ""}, {"instruction": "a", "output": "ok"}, {"output": "b"}]
    with pytest.raises(DatasetError) as ei:
        load_dataset(write(tmp_path, "multi.jsonl", jsonl(rows)))
    assert [(i.line, i.field) for i in ei.value.issues] == [(1, "output"), (3, "instruction")]
    assert "2 problems" in str(ei.value)


def test_wrong_explicit_format(tmp_path: Path) -> None:
    p = write(tmp_path, "a.jsonl", jsonl([{"instruction": "a", "output": "b"}]))
    with pytest.raises(DatasetError, match="missing key 'messages'"):
        load_dataset(p, format="chat")
    with pytest.raises(ValueError, match="unknown dataset format"):
        load_dataset(p, format="csv")


# ---- rendering and label masking ---------------------------------------------------------------------------------
def test_prompt_tokens_masked_exactly(tmp_path: Path) -> None:
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"},
            {"role": "assistant", "content": "A2"}]
    ds = load_dataset(write(tmp_path, "c.jsonl", jsonl([{"messages": msgs}])))
    r, n = render_example(TOK, ds.examples[0], max_length=1000)
    # what chat sends before the first answer, then the answer + end-of-turn, then the next prompt, ...
    p1 = TOK.encode(TOK.apply_chat_template(msgs[:2], add_generation_prompt=True))
    a1 = TOK.encode("A1<|im_end|>\n")
    p2 = TOK.encode("<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n")
    a2 = TOK.encode("A2<|im_end|>\n")
    assert r.input_ids == p1 + a1 + p2 + a2 == TOK.encode(TOK.apply_chat_template(msgs, False))
    assert r.labels == [IGNORE_INDEX] * len(p1) + a1 + [IGNORE_INDEX] * len(p2) + a2
    assert n == len(r.input_ids) and not r.truncated
    # the end-of-turn token is learned (so the model stops), the turn opener is not
    trained = [i for i, lab in zip(r.input_ids, r.labels) if lab != IGNORE_INDEX]
    assert trained.count(SPECIALS["<|im_end|>"]) == 2 and SPECIALS["<|im_start|>"] not in trained


def test_truncation_counted_and_collate_shift(tmp_path: Path) -> None:
    rows = [{"instruction": "short", "output": "ok"},
            {"instruction": "x" * 50, "output": "long answer " * 5},
            {"instruction": "y" * 200, "output": "never seen"}]
    ds = load_dataset(write(tmp_path, "a.jsonl", jsonl(rows)))
    seqs, st = prepare(ds, TOK, max_length=80)
    assert st.n_sequences == 2 and st.n_truncated == 1 and st.n_dropped == 1 and st.longest > 200
    assert "1 truncated" in st.summary() and "1 dropped" in st.summary()
    assert all(len(s.input_ids) <= 80 for s in seqs)
    idx, tgt = collate(seqs, pad_id=TOK.pad_token_id)
    assert idx.shape == tgt.shape == (2, max(len(s.input_ids) for s in seqs) - 1)
    s0 = seqs[0]
    n0 = len(s0.input_ids) - 1
    assert idx[0, :n0].tolist() == s0.input_ids[:-1] and tgt[0, :n0].tolist() == s0.labels[1:]
    assert (tgt[0, n0:] == IGNORE_INDEX).all() and (idx[0, n0:] == TOK.pad_token_id).all()


def test_text_chunks_cover_every_token_once(tmp_path: Path) -> None:
    ds = load_dataset(write(tmp_path, "t.txt", "abcdefghij" * 10))
    seqs, st = prepare(ds, TOK, max_length=16)
    ids = TOK.encode("abcdefghij" * 10, allowed_special=set()) + [TOK.eos_token_id]
    predicted = [t for s in seqs for t in s.labels[1:]]
    assert predicted == ids[1:]
    assert st.n_trained_tokens == len(ids) - 1


def test_split_is_seeded_and_disjoint() -> None:
    items = list(range(50))
    tr, va = train_val_split(items, 0.1, seed=3)
    assert len(va) == 5 and sorted(tr + va) == items
    assert train_val_split(items, 0.1, seed=3) == (tr, va) and train_val_split(items, 0.1, seed=4) != (tr, va)
    assert train_val_split([1, 2], 0.1, 0)[1] != []


def test_preview_marks_trained_text(tmp_path: Path) -> None:
    ds = load_dataset(write(tmp_path, "a.jsonl", jsonl([{"instruction": "Add", "input": "2+2", "output": "4"}])))
    items = preview(ds, TOK, n=3)
    assert len(items) == 1 and items[0].n_trained == len("4<|im_end|>\n") - len("<|im_end|>") + 1
    text = format_preview(items)
    assert "⟦4<|im_end|>\n⟧" in text and "<|im_start|>user\nAdd\n\n2+2" in text


# ---- demo dataset ---------------------------------------------------------------------------------------------
def test_demo_dataset_deterministic_and_valid(tmp_path: Path) -> None:
    paths = write_demo(tmp_path / "demo")
    ds = load_dataset(paths["train"])
    assert ds.format == "alpaca" and len(ds) >= 200
    test = load_dataset(paths["test"])
    assert not {e.messages[0]["content"] for e in ds.examples} & {e.messages[0]["content"] for e in test.examples}
    # the committed copy is exactly what the script generates
    for split in ("train", "test"):
        assert (DEMO_ASSETS / f"{split}.jsonl").read_text() == paths[split].read_text()
    train, _ = demo_splits()
    for ex in train[:50]:  # every field value really is in the sentence
        assert all(str(v) in ex.sentence for v in ex.fields.values())


def test_exact_match_scoring() -> None:
    gold = {"name": "Maria Lopez", "age": 34, "city": "Lisbon", "job": "nurse"}
    assert exact_match(json.dumps(gold) + "<|im_end|>", gold)
    assert exact_match("```json\n" + json.dumps(gold) + "\n```", gold)
    assert not exact_match(json.dumps({**gold, "age": "34"}), gold)
    assert not exact_match(json.dumps({**gold, "extra": 1}), gold)
    assert not exact_match("Maria Lopez is 34", gold)
    assert parse_answer('noise {"a": 1} more') == {"a": 1}


# ---- tables: CSV and Parquet (the formats HF datasets exports) ------------------------------------------------
def test_csv_alpaca_and_chat_records(tmp_path: Path) -> None:
    p = write(tmp_path, "a.csv", 'instruction,input,output\nAdd,"1, 2",3\n"Say\nhi",,hello\n')
    ds = load_dataset(p)
    assert ds.format == "alpaca" and [e.line for e in ds.examples] == [2, 3]
    assert ds.examples[0].messages[0]["content"] == "Add\n\n1, 2" and ds.examples[1].messages[1]["content"] == "hello"
    msgs = json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    c = tmp_path / "c.csv"
    import csv

    with c.open("w", newline="") as f:
        csv.writer(f).writerows([["messages"], [msgs]])
    ds = load_dataset(c)
    assert ds.format == "chat" and ds.examples[0].messages[-1] == {"role": "assistant", "content": "yo"}


def test_bad_csv_rows_are_named(tmp_path: Path) -> None:
    p = write(tmp_path, "bad.csv", 'instruction,input,output\nok,,fine\n"two\nlines",,\nshort,row\nx,,y\n')
    with pytest.raises(DatasetError) as ei:
        load_dataset(p)
    got = {(i.row, i.line, i.field) for i in ei.value.issues}
    assert got == {(2, 3, "output"), (3, 5, None)}  # row 2 starts on line 3 (a quoted line break), row 3 is short
    text = str(ei.value)
    assert "bad.csv, row 2 (line 3), field 'output': is empty" in text and "row 3 (line 5): has 2 cells" in text
    bad_json = write(tmp_path, "m.csv", 'messages\n"[{""role"": ""user"""\n')
    with pytest.raises(DatasetError, match=r"row 1 \(line 2\), field 'messages': must hold a JSON list"):
        load_dataset(bad_json)
    with pytest.raises(DatasetError, match="first line must name each column once"):
        load_dataset(write(tmp_path, "dup.csv", "output,output\na,b\n"))


def test_parquet_rows(tmp_path: Path) -> None:
    p = tmp_path / "d.parquet"
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # not installed here: the file is refused with what to do
        p.write_bytes(b"PAR1")
        with pytest.raises(DatasetError, match="needs the pyarrow package"):
            load_dataset(p)
        return
    pq.write_table(pa.table({"instruction": ["a", "b"], "output": ["x", ""]}), p)
    with pytest.raises(DatasetError, match=r"d.parquet, row 2, field 'output': is empty"):
        load_dataset(p)
