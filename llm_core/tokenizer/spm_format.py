"""Read and write SentencePiece-style BPE vocabularies: HF ``tokenizer.json`` (Gemma's layout) and GGUF metadata.

The readers return plain data (``SentencePieceTokenizer(**kwargs)`` arguments plus attributes to set), so this
module never imports :mod:`.spm`: the imports inside the package point one way (spm -> spm_format).

A GGUF (``tokenizer.ggml.model == "llama"``) carries pieces with scores but no merge list; the merges are rebuilt
the way transformers converts a SentencePiece model (``generate_merges``): every split ``(left, right)`` of a piece
into two pieces, ordered by the merged piece's score (highest first), so both sources give the same ids.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_core.atomic import write_text

from .chat_template import parse_chat_template, to_jinja
from .gguf_vocab import gguf_field, gguf_token_attrs, open_gguf
from .hf_format import adds_bos, bos_template, token_name

if TYPE_CHECKING:
    from .spm import SentencePieceTokenizer

SPACE = "▁"
_REPLACE_SPACE = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
_PREPEND = {"type": "Prepend", "prepend": SPACE}
# llama.cpp token types (tokenizer.ggml.token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def _load(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {path}")
    try:
        return path, json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _is_spm(data: dict[str, Any]) -> bool:
    model = data.get("model") or {}
    norm = data.get("normalizer") or {}
    steps = norm.get("normalizers", [norm]) if norm.get("type") == "Sequence" else [norm]
    pre = data.get("pre_tokenizer") or {}
    return model.get("type") == "BPE" and (bool(model.get("byte_fallback")) or _REPLACE_SPACE in steps
                                           or pre.get("type") == "Metaspace")


def is_sentencepiece_json(path: str | os.PathLike) -> bool:
    """Is this ``tokenizer.json`` a SentencePiece-style BPE (byte fallback / ``▁`` spaces), not byte-level?"""
    return _is_spm(_load(path)[1])


def _dummy_prefix(path: Path, data: dict[str, Any]) -> bool:
    """Gemma: Replace(' ', '▁') and no (or a no-op) pre-tokenizer -> False; Llama 2: Prepend('▁') first -> True;
    Metaspace(split=False) with no normalizer -> its prepend scheme ("always" / "never")."""
    norm = data.get("normalizer")
    pre = data.get("pre_tokenizer")
    if norm is None and isinstance(pre, dict) and pre.get("type") == "Metaspace":
        scheme = pre.get("prepend_scheme", "always" if pre.get("add_prefix_space", True) else "never")
        if pre.get("replacement", SPACE) != SPACE or pre.get("split", True) or scheme not in ("always", "never"):
            raise ValueError(f"{path}: Metaspace pre-tokenizer {pre} is not supported "
                             "(only replacement '▁', split false, prepend_scheme always/never)")
        return scheme == "always"
    steps = [] if norm is None else (norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm])
    if steps == [_REPLACE_SPACE]:
        prefix = False
    elif steps == [_PREPEND, _REPLACE_SPACE]:
        prefix = True
    else:
        raise ValueError(f"{path}: normalizer {norm} is not supported (Gemma's Replace(' ', '▁'), or "
                         "Prepend('▁') + Replace as in Llama 2)")
    split_space = {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": False}
    if pre is not None and pre != split_space:  # splitting on ' ' after every ' ' became '▁' does nothing
        raise ValueError(f"{path}: pre_tokenizer {pre.get('type')!r} is not supported with a SentencePiece-style "
                         "vocabulary (none, or Split(' ') as Gemma's)")
    return prefix


def _special_id(cfg: dict[str, Any], key: str, specials: dict[str, int], vocab: dict[str, int]) -> int | None:
    v = token_name(cfg, key)
    return None if v is None else specials.get(v, vocab.get(v))


def read_tokenizer_json(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(SentencePieceTokenizer kwargs, attributes) from a HF ``tokenizer.json`` (file or folder), reading
    ``tokenizer_config.json`` (and ``chat_template.jinja``) beside it for bos/eos/pad and the chat template."""
    path, data = _load(path)
    model = data.get("model") or {}
    if not _is_spm(data):
        raise ValueError(f"{path}: not a SentencePiece-style BPE (model {model.get('type')!r}, "
                         f"byte_fallback {model.get('byte_fallback')!r})")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") or model.get("dropout"):
        raise ValueError(f"{path}: subword prefixes/suffixes and BPE dropout are not supported")
    prefix = _dummy_prefix(path, data)
    vocab: dict[str, int] = {str(k): int(v) for k, v in model["vocab"].items()}
    pieces: list[str | None] = [None] * (max(vocab.values()) + 1 if vocab else 0)
    for s, i in vocab.items():
        pieces[i] = s
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    bad = [m for m in merges if len(m) != 2]
    if bad:
        raise ValueError(f"{path}: merge {bad[0]!r} does not have exactly two pieces")
    specials: dict[str, int] = {}
    normalized: list[str] = []
    for t in data.get("added_tokens", []):
        if t.get("lstrip") or t.get("rstrip") or t.get("single_word"):
            raise ValueError(f"{path}: added token {t['content']!r} uses lstrip/rstrip/single_word, not supported")
        specials[t["content"]] = int(t["id"])
        if t.get("normalized"):
            normalized.append(t["content"])
    unk = model.get("unk_token")
    kwargs = dict(pieces=pieces, merges=merges, special_tokens=specials,
                  unk_token_id=vocab.get(unk) if isinstance(unk, str) else None,
                  byte_fallback=bool(model.get("byte_fallback")), fuse_unk=bool(model.get("fuse_unk")),
                  add_dummy_prefix=prefix, ignore_merges=bool(model.get("ignore_merges")),
                  normalized_tokens=normalized)
    cfg_path = path.parent / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    jinja = path.parent / "chat_template.jinja"  # where transformers >= 4.50 saves the template
    if not isinstance(cfg.get("chat_template"), str) and jinja.is_file():
        cfg["chat_template"] = jinja.read_text(encoding="utf-8")
    attrs: dict[str, Any] = {f"{k}_token_id": _special_id(cfg, f"{k}_token", specials, vocab)
                             for k in ("bos", "eos", "pad")}
    attrs["add_bos_token"] = attrs["bos_token_id"] is not None and adds_bos(
        data, token_name(cfg, "bos_token"))  # transformers: the post-processor decides
    if isinstance(cfg.get("chat_template"), str):
        attrs["chat_template"], attrs["default_system_prompt"] = parse_chat_template(cfg["chat_template"])
    return kwargs, attrs


def generate_merges(pieces: list[str | None], scores: list[float] | None = None) -> list[tuple[str, str]]:
    """Merge list of a SentencePiece BPE vocabulary: each split of a piece into two pieces, ordered by the merged
    piece's score (highest first; by id when ``scores`` is None), then longer left, then longer right parts.
    The same list as ``transformers.convert_slow_tokenizer``'s ``generate_merges`` gives."""
    vocab: dict[str, int] = {}
    for i, p in enumerate(pieces):
        if p is not None:
            vocab[p] = i  # a repeated piece keeps its last id, as a Python dict comprehension does
    keyed: list[tuple[str, str, float]] = []
    for piece, i in vocab.items():
        score = scores[i] if scores is not None else i
        local = [(piece[:k], piece[k:], score) for k in range(1, len(piece))
                 if piece[:k] in vocab and piece[k:] in vocab]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        keyed.extend(local)
    keyed.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=scores is not None)
    return [(a, b) for a, b, _ in keyed]


def read_gguf(path: str | os.PathLike | Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(SentencePieceTokenizer kwargs, attributes) from GGUF ``tokenizer.ggml.{tokens,scores,token_type,...}``
    with ``tokenizer.ggml.model == "llama"`` (Gemma 3's GGUFs). Control, user-defined and unknown pieces are
    added tokens (as transformers' converter makes them); ``<0xNN>`` byte pieces give byte fallback."""
    reader, path = open_gguf(path)
    kind = gguf_field(reader, "tokenizer.ggml.model")
    if kind != "llama":
        raise ValueError(f"{path}: tokenizer.ggml.model is {kind!r}; a SentencePiece-style vocabulary is 'llama'")
    tokens = gguf_field(reader, "tokenizer.ggml.tokens")
    if not tokens:
        raise ValueError(f"{path}: GGUF metadata lacks tokenizer.ggml.tokens")
    n = len(tokens)
    scores = gguf_field(reader, "tokenizer.ggml.scores")
    types = gguf_field(reader, "tokenizer.ggml.token_type") or [NORMAL] * n
    if scores is None or len(scores) != n or len(types) != n:
        raise ValueError(f"{path}: tokenizer.ggml.scores/token_type must have one entry per token ({n})")
    pieces: list[str | None] = list(tokens)
    specials = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (CONTROL, USER_DEFINED, UNKNOWN)}
    unk = gguf_field(reader, "tokenizer.ggml.unknown_token_id")
    if unk is None:
        unk = next((i for i, ty in enumerate(types) if ty == UNKNOWN), None)
    prefix = gguf_field(reader, "tokenizer.ggml.add_space_prefix")
    kwargs = dict(pieces=pieces, merges=generate_merges(pieces, [float(s) for s in scores]), special_tokens=specials,
                  unk_token_id=None if unk is None else int(unk), byte_fallback=BYTE in types, fuse_unk=True,
                  add_dummy_prefix=True if prefix is None else bool(prefix))  # llama.cpp's default is True
    return kwargs, gguf_token_attrs(reader, add_bos_default=True)  # llama.cpp adds BOS for SentencePiece vocabularies


def _piece_name(tok: SentencePieceTokenizer, i: int) -> str:
    return next((s for s, j in tok.special_tokens.items() if j == i), None) or str(tok.pieces[i])


def to_tokenizer_json(tok: SentencePieceTokenizer) -> dict[str, Any]:
    """The HF ``tokenizer.json`` dict for ``tok`` (Gemma's layout; Prepend + Replace with a dummy prefix)."""
    vocab = {p: i for i, p in enumerate(tok.pieces) if p is not None}
    norm = (_REPLACE_SPACE if not tok.add_dummy_prefix
            else {"type": "Sequence", "normalizers": [_PREPEND, _REPLACE_SPACE]})
    unk = tok.pieces[tok.unk_token_id] if tok.unk_token_id is not None else None
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [
            {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": s in tok.normalized_tokens, "special": True}
            for s, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
        ],
        "normalizer": dict(norm), "pre_tokenizer": None,
        "post_processor": (bos_template(_piece_name(tok, tok.bos_token_id), tok.bos_token_id)
                           if tok.add_bos_token and tok.bos_token_id is not None else None),
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": tok.fuse_unk, "byte_fallback": tok.byte_fallback,
                  "ignore_merges": tok.ignore_merges, "vocab": vocab, "merges": [[a, b] for a, b in tok.merges]},
    }


def save_hf(tok: SentencePieceTokenizer, folder: str | os.PathLike) -> None:
    """Write ``tokenizer.json`` + ``tokenizer_config.json`` that transformers loads with our ids and template."""
    folder = Path(folder)
    id_to_special = {i: s for s, i in tok.special_tokens.items()}

    def name(i: int | None) -> str | None:
        return None if i is None else id_to_special.get(i, tok.pieces[i] if i < len(tok.pieces) else None)

    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name(tok.bos_token_id), "eos_token": name(tok.eos_token_id),
        "pad_token": name(tok.pad_token_id), "unk_token": name(tok.unk_token_id),
        "add_bos_token": tok.add_bos_token, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000,
    }
    jinja = to_jinja(tok)
    if jinja is not None:
        config["chat_template"] = jinja
    write_text(folder / "tokenizer.json", json.dumps(to_tokenizer_json(tok), ensure_ascii=False))
    write_text(folder / "tokenizer_config.json", json.dumps(config, ensure_ascii=False, indent=2))
