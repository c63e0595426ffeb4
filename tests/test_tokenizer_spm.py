"""SentencePiece-style BPE (Gemma's tokenizer type): ids equal to HF ``tokenizers`` on a tiny Gemma-shaped
vocabulary built here (no download), from its tokenizer.json and from GGUF metadata (pieces + scores, merges
rebuilt), plus the Gemma 3 chat template against transformers."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast
from transformers.tokenization_utils_base import generate_merges as hf_generate_merges

from llm_core.tokenizer import SentencePieceTokenizer, load_gguf_vocab, load_hf_tokenizer
from llm_core.tokenizer import Tokenizer as OurTokenizer
from llm_core.tokenizer.chat_template import GEMMA_TEMPLATE, render_chat
from llm_core.tokenizer.spm_format import generate_merges

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
CORPUS = [
    "Once upon a time, 12 cafés in Zürich served 3,456 crêpes. Don't you think they'll say it's fine?",
    "def f(x):\n    return x ** 2  # squares\n\nThe quick brown fox jumps over the lazy dog.",
    "the theory of the thesis: then there was the other thing, and then another one.",
    "    indented    with   runs  of spaces\t\tand tabs\n\n\n",
]
TRICKY = [
    "", " ", "  ", "a", "Hello world", "the  theory", "  leading\n\n\ttabs\r\nx", "trailing   ",
    "emoji 👩\u200d👩\u200d👧 family 🙂!", "数字 中文 日本語", "café vs cafe\u0301 naïve Ωmega", "\x00\x01\x7f ctl\x1b[0m",
    "literal ▁ and ▁▁ pieces", "<start_of_turn>user\nhi there<end_of_turn>\n<start_of_turn>model\n",
    "<bos>the thesis<eos>", "unknown ÿ bytes ǅ and 𝔘", "x" * 300 + " the" * 50,
]


def _hf_trained_vocab(prefix_pieces: bool = False) -> list[str]:
    """Pieces a BPE learns on the corpus with spaces as '▁' and no pre-tokenizer (Gemma's setting): characters
    then merge results, in learning order. Many hold a '▁' inside ('e▁', 'd▁the'). ``prefix_pieces``: learned on
    words cut before each '▁' instead, so '▁' only starts a piece ('▁the'), as in a SentencePiece vocabulary."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "▁")
    if prefix_pieces:
        tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=220, show_progress=False, special_tokens=[])
    tok.train_from_iterator(CORPUS * 3, trainer)
    vocab = tok.get_vocab()
    return [p for p, _ in sorted(vocab.items(), key=lambda kv: kv[1])]


def gemma_like_pieces(prefix_pieces: bool = False) -> tuple[list[str], list[float]]:
    """Gemma's layout: control tokens, 256 ``<0xNN>`` byte pieces, then learned pieces with falling scores."""
    learned = [p for p in _hf_trained_vocab(prefix_pieces) if p not in SPECIALS]
    pieces = SPECIALS + [f"<0x{b:02X}>" for b in range(256)] + learned
    scores = [0.0] * (len(SPECIALS) + 256) + [-float(k) for k in range(len(learned))]
    return pieces, scores


def write_tokenizer_json(folder: Path, *, byte_fallback: bool = True, prefix: bool = False,
                         normalized_token: bool = False, bos: bool = False, prefix_pieces: bool = False) -> Tokenizer:
    """A Gemma-style tokenizer.json as transformers' converter writes it: merges from the piece scores; ``bos``:
    the post-processor that puts <bos> in front of plain text (as Gemma's published tokenizer.json has)."""
    pieces, scores = gemma_like_pieces(prefix_pieces)
    if not byte_fallback:  # drop the byte pieces: unknown characters become (fused) <unk>
        keep = [k for k, p in enumerate(pieces) if not p.startswith("<0x")]
        pieces, scores = [pieces[k] for k in keep], [scores[k] for k in keep]
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = hf_generate_merges(vocab, list(zip(pieces, scores)))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True,
                               byte_fallback=byte_fallback, dropout=None))
    replace = normalizers.Replace(" ", "▁")
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), replace]) if prefix else replace
    if not prefix:
        tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in SPECIALS])
    if normalized_token:
        tok.add_tokens([AddedToken("<a b>", normalized=True, special=False)])
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                           special_tokens=[("<bos>", 2)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
         "chat_template": GEMMA_TEMPLATE}))
    return tok


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gemma_tok")
    write_tokenizer_json(path)
    return path


def _ref(folder: Path) -> Tokenizer:
    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def test_vocabulary_exercises_merges_and_byte_fallback(gemma_dir: Path) -> None:
    """The fixture is not trivial: multi-character pieces exist and CJK falls back to bytes in the reference."""
    ref = _ref(gemma_dir)
    toks = ref.encode("the theory 中", add_special_tokens=False).tokens
    assert any(len(t) > 2 and not t.startswith("<0x") for t in toks), toks
    assert "<0xE4>" in toks  # 中 = E4 B8 AD


def test_ids_match_hf_tokenizers(gemma_dir: Path) -> None:
    ref = _ref(gemma_dir)
    ours = SentencePieceTokenizer.from_tokenizer_json(gemma_dir / "tokenizer.json")
    assert not ours.add_dummy_prefix and ours.byte_fallback and ours.unk_token_id == 3
    for text in TRICKY:
        want = ref.encode(text, add_special_tokens=False).ids
        assert ours.encode(text) == want, repr(text)
        if not any(s in text for s in SPECIALS):
            assert ours.decode(want) == ref.decode(want, skip_special_tokens=False), repr(text)
    assert ours.bos_token_id == 2 and ours.eos_token_id == 1 and ours.pad_token_id == 0
    assert ours.chat_template == "gemma"
    # specials not allowed are ordinary text
    assert ours.encode("<eos>", allowed_special="none") != [1]


@pytest.mark.parametrize("variant", ["no_byte_fallback", "dummy_prefix", "normalized_token"])
def test_variants_match_hf_tokenizers(tmp_path: Path, variant: str) -> None:
    """<unk> fusing without byte pieces, Llama-2's Prepend('▁') normalizer, and an added token matched after
    normalization (its own ' ' becomes '▁' too)."""
    write_tokenizer_json(tmp_path, byte_fallback=variant != "no_byte_fallback", prefix=variant == "dummy_prefix",
                         normalized_token=variant == "normalized_token")
    ref = _ref(tmp_path)
    ours = load_hf_tokenizer(tmp_path)
    assert isinstance(ours, SentencePieceTokenizer)
    for text in TRICKY + ["x <a b> y", "<a b><a b>", "<a▁b>"]:
        assert ours.encode(text) == ref.encode(text, add_special_tokens=False).ids, (variant, repr(text))
    if variant == "no_byte_fallback":
        assert ours.encode("中文字 x")[:1] == [3]  # three unknown characters fuse into one <unk>


def test_merge_generation_equals_transformers() -> None:
    pieces, scores = gemma_like_pieces()
    want = hf_generate_merges({p: i for i, p in enumerate(pieces)}, list(zip(pieces, scores)))
    assert generate_merges(pieces, scores) == [tuple(m) for m in want]
    want_by_id = hf_generate_merges({p: i for i, p in enumerate(pieces)})
    assert generate_merges(pieces) == [tuple(m) for m in want_by_id]


def write_gguf(path: Path, folder: Path, add_bos: bool | None = None) -> None:
    """Gemma's GGUF vocabulary as llama.cpp writes it: model 'llama', pieces, scores, token types, no merges."""
    pieces, scores = gemma_like_pieces()
    types = [3] * len(SPECIALS) + [6] * 256 + [1] * (len(pieces) - len(SPECIALS) - 256)
    types[3] = 2  # <unk>
    w = gguf.GGUFWriter(str(path), arch="gemma3")
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_pad_token_id(0)
    w.add_unk_token_id(3)
    w.add_add_space_prefix(False)
    if add_bos is not None:
        w.add_add_bos_token(add_bos)
    w.add_chat_template(GEMMA_TEMPLATE)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_vocabulary_matches_hf_tokenizers(gemma_dir: Path, tmp_path: Path) -> None:
    write_gguf(tmp_path / "v.gguf", gemma_dir)
    ours = load_gguf_vocab(tmp_path / "v.gguf")
    assert isinstance(ours, SentencePieceTokenizer)
    assert (ours.bos_token_id, ours.eos_token_id, ours.unk_token_id) == (2, 1, 3) and ours.chat_template == "gemma"
    ref = _ref(gemma_dir)
    for text in TRICKY:
        assert ours.encode(text) == ref.encode(text, add_special_tokens=False).ids, repr(text)


def test_save_load_and_hf_export_round_trip(gemma_dir: Path, tmp_path: Path) -> None:
    ours = OurTokenizer.load(gemma_dir)  # a folder with only HF files picks the SentencePiece type
    assert isinstance(ours, SentencePieceTokenizer)
    ours.save(tmp_path / "scratch")
    back = OurTokenizer.load(tmp_path / "scratch")
    assert isinstance(back, SentencePieceTokenizer) and back.to_state() == ours.to_state()
    ours.save_hf(tmp_path / "hf")
    ref = _ref(tmp_path / "hf")
    fast = PreTrainedTokenizerFast.from_pretrained(tmp_path / "hf")
    for text in TRICKY:
        want = ours.encode(text)
        assert back.encode(text) == want and ref.encode(text, add_special_tokens=False).ids == want, repr(text)
    msgs = [{"role": "user", "content": "hi"}]
    assert fast.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == ours.apply_chat_template(msgs)


def test_byte_level_reader_points_to_the_sentencepiece_type(gemma_dir: Path) -> None:
    from llm_core.tokenizer import BPETokenizer

    with pytest.raises(ValueError, match="SentencePiece-style"):
        BPETokenizer.from_tokenizer_json(gemma_dir / "tokenizer.json")


CHATS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  2+2?\n"},
     {"role": "assistant", "content": " 4 "}, {"role": "user", "content": "And 3+3?"}],
    [{"role": "system", "content": "Only a system prompt."}],
]


def test_gemma_chat_template_matches_transformers(gemma_dir: Path) -> None:
    ref = PreTrainedTokenizerFast.from_pretrained(gemma_dir)
    ours = load_hf_tokenizer(gemma_dir)
    for messages in CHATS:
        for gen in (True, False):
            want = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert ours.apply_chat_template(messages, add_generation_prompt=gen) == want
    ids = ours.encode(ours.apply_chat_template(CHATS[1]))
    assert ids[0] == 2 and ids.count(5) == 4  # <bos>, then one <start_of_turn> per turn + the generation prompt
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(Exception, match="alternate"):
        ref.apply_chat_template(bad, tokenize=False)
    with pytest.raises(ValueError, match="alternate"):
        ours.apply_chat_template(bad)


def test_render_chat_truncates_gemma_history(gemma_dir: Path) -> None:
    ours = load_hf_tokenizer(gemma_dir)
    msgs = [{"role": "system", "content": "Be brief."}]
    for k in range(6):
        msgs += [{"role": "user", "content": f"question {k} about the theory"},
                 {"role": "assistant", "content": f"answer {k}"}]
    msgs.append({"role": "user", "content": "last one"})
    full = ours.encode(ours.apply_chat_template(msgs))
    ids = render_chat(ours, msgs, max_tokens=len(full) // 2)
    assert len(ids) <= len(full) // 2
    text = ours.decode(ids)
    assert text.startswith("<bos><start_of_turn>user\nBe brief.\n\n") and text.endswith("last one<end_of_turn>\n"
                                                                                       "<start_of_turn>model\n")


# ---- BOS in front of plain prompts -------------------------------------------------------------------------------


@pytest.mark.parametrize("bos", [True, False])
def test_plain_prompt_bos_follows_the_hf_post_processor(tmp_path: Path, bos: bool) -> None:
    """transformers' ``tokenizer(text)`` puts <bos> in front when tokenizer.json's post-processor says so (Gemma's
    does); ``encode_prompt`` does the same, and the choice survives our save format and the HF export."""
    write_tokenizer_json(tmp_path / "src", bos=bos)
    ours = load_hf_tokenizer(tmp_path / "src")
    assert ours.add_bos_token is bos
    fast = PreTrainedTokenizerFast.from_pretrained(tmp_path / "src")
    for text in TRICKY[:-3] + ["the theory"]:
        assert ours.encode_prompt(text) == fast(text)["input_ids"], repr(text)
    assert ours.encode_prompt("the theory")[0] == (2 if bos else ours.encode("the theory")[0])
    assert ours.encode_prompt("<bos>the theory").count(2) == 1  # a prompt that starts with BOS gets no second one
    ours.save(tmp_path / "scratch")
    assert OurTokenizer.load(tmp_path / "scratch").add_bos_token is bos
    ours.save_hf(tmp_path / "hf")
    back = PreTrainedTokenizerFast.from_pretrained(tmp_path / "hf")
    assert back("the theory")["input_ids"] == ours.encode_prompt("the theory")
    assert load_hf_tokenizer(tmp_path / "hf").add_bos_token is bos


@pytest.mark.parametrize("flag", [None, True, False])
def test_gguf_add_bos_token(gemma_dir: Path, tmp_path: Path, flag: bool | None) -> None:
    """``tokenizer.ggml.add_bos_token`` decides; absent, llama.cpp's default for a SentencePiece vocabulary: BOS."""
    write_gguf(tmp_path / "v.gguf", gemma_dir, add_bos=flag)
    ours = load_gguf_vocab(tmp_path / "v.gguf")
    want = flag is not False
    assert ours.add_bos_token is want
    assert ours.encode_prompt("the theory") == [2] * want + ours.encode("the theory")


def test_smollm2_plain_prompt_is_unchanged() -> None:
    """SmolLM2's GGUF says add_bos_token false: a plain prompt's ids are exactly ``encode``'s (no BOS)."""
    from llm_core.tokenizer.gguf_vocab import bundled_gguf_path

    tok = load_gguf_vocab(bundled_gguf_path())
    assert tok.add_bos_token is False and tok.bos_token_id is not None
    text = "Once upon a time, 12 cafés"
    assert tok.encode_prompt(text) == tok.encode(text) and tok.encode_prompt(text)[0] != tok.bos_token_id


# ---- the chunked encoder: cut where no merge can cross, cached per chunk ----------------------------------------

MORE_TRICKY = [
    "the 中", "the 中 the", "中", "the 中 the", "x 🙂", "x 🙂 x", "  the   theory  ", "the" * 40, " the" * 80,
    "supercalifragilisticexpialidocious antidisestablishmentarianism", "\n\n\n    \n\t the", "▁the ▁ the▁",
    "a" * 70 + " " + "b" * 3, "日本語のテキスト、そして English mixed 123 456", "👩‍👩‍👧👩‍👩‍👧 👩‍👩‍👧", "é" * 40,
]


@pytest.mark.parametrize("prefix_pieces", [False, True], ids=["inner_space_pieces", "sentencepiece_style"])
def test_chunked_encoder_matches_hf_tokenizers(tmp_path: Path, prefix_pieces: bool) -> None:
    """Both kinds of vocabulary: pieces with a '▁' inside ('e▁'), where the text must stay glued at those
    characters, and SentencePiece-style ones ('▁the'), where it is cut before every '▁'. One tokenizer encodes
    every string in turn, so cached chunks from earlier strings are reused (a text ending in a character that
    must stay glued must not leave a chunk in the cache that a longer text would misuse)."""
    ref = write_tokenizer_json(tmp_path, prefix_pieces=prefix_pieces)
    ours = load_hf_tokenizer(tmp_path)
    assert isinstance(ours, SentencePieceTokenizer)
    assert ours._may_cut_after("e") is prefix_pieces and not ours._may_cut_after("中")  # 中: byte fallback
    for text in TRICKY + MORE_TRICKY + CORPUS:
        assert ours.encode(text) == ref.encode(text, add_special_tokens=False).ids, repr(text)
    assert len(ours._cache) > 0


@pytest.mark.parametrize("prefix_pieces", [False, True], ids=["inner_space_pieces", "sentencepiece_style"])
def test_chunked_encoder_random_text(tmp_path: Path, prefix_pieces: bool) -> None:
    """Random text over letters, spaces, punctuation, newlines, '▁', unknown CJK and emoji: same ids as HF."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    ref = write_tokenizer_json(tmp_path, prefix_pieces=prefix_pieces)
    ours = load_hf_tokenizer(tmp_path)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.text(alphabet="theoryabcd  ,.'\n▁中🙂é", max_size=60))
    def check(text: str) -> None:
        assert ours.encode(text) == ref.encode(text, add_special_tokens=False).ids

    check()


def test_adds_bos_reads_the_post_processor_as_transformers_does(tmp_path: Path) -> None:
    """Llama 3 keeps its TemplateProcessing inside a Sequence after ByteLevel; tokenizer_config's add_bos_token
    alone changes nothing in transformers 5 (checked here), so only the post-processor counts."""
    from llm_core.tokenizer.hf_format import adds_bos, bos_template

    llama3 = {"post_processor": {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        bos_template("<|begin_of_text|>", 128000)]}}
    assert adds_bos(llama3, "<|begin_of_text|>") and not adds_bos(llama3, "<s>")
    assert not adds_bos({"post_processor": {"type": "ByteLevel"}}, "<|endoftext|>")  # SmolLM2, GPT-2
    assert not adds_bos({"post_processor": None}, "<bos>")
    write_tokenizer_json(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(dict(cfg, add_bos_token=True)))
    assert PreTrainedTokenizerFast.from_pretrained(tmp_path)("the")["input_ids"][0] != 2
    assert load_hf_tokenizer(tmp_path).add_bos_token is False
