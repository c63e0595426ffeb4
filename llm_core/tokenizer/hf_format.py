"""Interchange with Hugging Face files: tokenizer.json, GPT-2 vocab.json + merges.txt, and HF export.

HF stores byte-level tokens as strings through GPT-2's byte -> unicode map ('Ġthe' = b' the').
The readers return plain data (``BPETokenizer(**kwargs)`` arguments), so this module never imports
:mod:`.bpe`: the imports inside the package point one way (bpe -> hf_format, never back).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_core.atomic import write_text

from .chat_template import parse_chat_template, to_jinja
from .patterns import GPT2_PATTERN, SMOLLM_PATTERN, bytes_to_token_str, bytes_to_unicode, token_str_to_bytes

if TYPE_CHECKING:
    from .bpe import BPETokenizer

_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def build_from_vocab(
    vocab: dict[str, int], merges: list[tuple[str, str]], special_tokens: dict[str, int], pattern: str,
    ignore_merges: bool = False,
) -> dict[str, Any]:
    """Byte-level string vocab + merge list -> ``BPETokenizer(**kwargs)`` arguments (ids kept exactly as given)."""
    b2u = bytes_to_unicode()
    special_ids = set(special_tokens.values())
    byte_ids: list[int | None] = []
    for b in range(256):
        i = vocab.get(b2u[b])
        byte_ids.append(i if i is not None and i not in special_ids else None)
    triples: list[tuple[int, int, int]] = []
    for k, (a, b) in enumerate(merges):
        try:
            triples.append((vocab[a], vocab[b], vocab[a + b]))
        except KeyError as e:
            raise ValueError(f"merge #{k} ({a!r}, {b!r}): token {e.args[0]!r} is not in the vocabulary") from None
    reached = {i for i in byte_ids if i is not None} | {t[2] for t in triples} | special_ids
    extra: dict[int, bytes] = {}
    for s, i in vocab.items():
        if i not in reached:
            try:
                extra[i] = token_str_to_bytes(s)
            except ValueError:
                extra[i] = s.encode("utf-8")
    return dict(pattern=pattern, byte_ids=byte_ids, merges=triples, special_tokens=special_tokens,
                extra_tokens=extra, ignore_merges=ignore_merges)


def _pattern_from_pre_tokenizer(pre: dict[str, Any] | None) -> str:
    """Map the HF pre-tokenizer configurations we can reproduce exactly to a regex."""
    if pre is None:
        raise ValueError("tokenizer.json has no pre_tokenizer; only byte-level BPE with regex splitting is supported")
    steps = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    for s in steps:
        if s.get("type") == "ByteLevel" and s.get("add_prefix_space"):
            raise ValueError("ByteLevel(add_prefix_space=True) is not supported")
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return GPT2_PATTERN
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return SMOLLM_PATTERN
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        split = steps[0]
        if split.get("behavior") != "Isolated" or split.get("invert") or "Regex" not in split.get("pattern", {}):
            raise ValueError(f"unsupported Split pre-tokenizer settings: {split}")
        return split["pattern"]["Regex"]
    raise ValueError(f"unsupported pre_tokenizer sequence {kinds} (supported: ByteLevel, Digits+ByteLevel, "
                     "Split(regex)+ByteLevel)")


def _pre_tokenizer_for(pattern: str) -> dict[str, Any]:
    if pattern == GPT2_PATTERN:
        return dict(_BYTE_LEVEL)
    if pattern == SMOLLM_PATTERN:
        return {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, dict(_BYTE_LEVEL)]}
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
        dict(_BYTE_LEVEL, use_regex=False),
    ]}


def adds_bos(data: dict[str, Any], bos: str | None) -> bool:
    """Does this HF ``tokenizer.json`` put ``bos`` in front of plain text? Its post-processor decides (a
    TemplateProcessing whose single-sequence template starts with that special token: Gemma, Llama 3; also inside
    a Sequence of processors). transformers 5 follows the post-processor only, whatever ``add_bos_token`` in
    ``tokenizer_config.json`` says (measured), so that flag is not read."""
    post = data.get("post_processor") or {}
    steps = post.get("processors", []) if post.get("type") == "Sequence" else [post]
    for step in steps:
        if isinstance(step, dict) and step.get("type") == "TemplateProcessing":
            first = (step.get("single") or [{}])[0]
            return bos is not None and (first.get("SpecialToken") or {}).get("id") == bos
    return False


def bos_template(bos: str, bos_id: int) -> dict[str, Any]:
    """The HF post-processor that puts ``bos`` in front of every sequence (what :func:`adds_bos` reads back)."""
    special = [{"SpecialToken": {"id": bos, "type_id": 0}}]
    return {"type": "TemplateProcessing", "single": special + [{"Sequence": {"id": "A", "type_id": 0}}],
            "pair": special + [{"Sequence": {"id": "A", "type_id": 0}}] + special
            + [{"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}


def token_name(cfg: dict[str, Any], key: str) -> str | None:
    """A special token's text in a ``tokenizer_config.json`` dict: a plain string or ``{"content": ...}``."""
    v = cfg.get(key)
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def apply_config(tok: BPETokenizer, cfg: dict[str, Any]) -> None:
    """bos/eos/pad ids, whether plain text gets BOS (``add_bos_token``, resolved by :func:`read_tokenizer_json`)
    and the chat template from a ``tokenizer_config.json`` dict."""
    def tid(key: str) -> int | None:
        name = token_name(cfg, key)
        return None if name is None else tok.special_tokens.get(name)

    tok.bos_token_id, tok.eos_token_id, tok.pad_token_id = tid("bos_token"), tid("eos_token"), tid("pad_token")
    tok.add_bos_token = bool(cfg.get("add_bos_token")) and tok.bos_token_id is not None
    if isinstance(cfg.get("chat_template"), str):
        tok.chat_template, tok.default_system_prompt = parse_chat_template(cfg["chat_template"])


def read_tokenizer_json(path: str | os.PathLike, pattern: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(BPETokenizer kwargs, tokenizer config) from a HF ``tokenizer.json`` (file or folder); reads
    ``tokenizer_config.json`` (and a ``chat_template.jinja``) beside it if present. Byte-level BPE with a ByteLevel
    or Split(regex) pre-tokenizer and an optional NFC normalizer: GPT-2, SmolLM2, Qwen2/2.5/3."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise ValueError(f"{path}: model type {model.get('type')!r} is not BPE")
    if model.get("byte_fallback"):
        raise ValueError(f"{path}: a SentencePiece-style BPE (byte fallback, '▁' spaces, as Gemma's), not byte-level: "
                         "load it with SentencePieceTokenizer.from_tokenizer_json (or load_hf_tokenizer)")
    norm = data.get("normalizer")
    if norm is not None and norm.get("type") != "NFC":
        raise ValueError(f"{path}: normalizer {norm.get('type')!r} is not supported (only none or NFC, as in Qwen)")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise ValueError(f"{path}: subword prefixes/suffixes are not byte-level BPE")
    pat = pattern if pattern is not None else _pattern_from_pre_tokenizer(data.get("pre_tokenizer"))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    specials = {t["content"]: int(t["id"]) for t in data.get("added_tokens", [])}
    kwargs = build_from_vocab(model["vocab"], merges, specials, pat, ignore_merges=bool(model.get("ignore_merges")))
    kwargs["normalizer"] = "NFC" if norm is not None else None
    cfg_path = path.parent / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    jinja = path.parent / "chat_template.jinja"  # where transformers >= 4.50 saves the template
    if not isinstance(cfg.get("chat_template"), str) and jinja.is_file():
        cfg["chat_template"] = jinja.read_text(encoding="utf-8")
    cfg["add_bos_token"] = adds_bos(data, token_name(cfg, "bos_token"))  # what transformers does, not the flag
    return kwargs, cfg


def read_gpt2_files(vocab_json: str | os.PathLike, merges_txt: str | os.PathLike,
                    special_tokens: tuple[str, ...] = ("<|endoftext|>",)) -> dict[str, Any]:
    """BPETokenizer kwargs from OpenAI/HF GPT-2 ``vocab.json`` + ``merges.txt``."""
    vocab = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
    lines = Path(merges_txt).read_text(encoding="utf-8").splitlines()
    merges = [tuple(ln.split(" ")) for ln in lines if ln and not ln.startswith("#version")]
    bad = [m for m in merges if len(m) != 2]
    if bad:
        raise ValueError(f"{merges_txt}: merge line {' '.join(bad[0])!r} does not have exactly two tokens")
    specials = {s: vocab[s] for s in special_tokens if s in vocab}
    return build_from_vocab(vocab, merges, specials, GPT2_PATTERN)  # type: ignore[arg-type]


def save_hf(tok: BPETokenizer, folder: str | os.PathLike) -> None:
    """Write ``tokenizer.json`` + ``tokenizer_config.json`` that transformers' AutoTokenizer loads with our ids."""
    folder = Path(folder)
    id_to_special = {i: s for s, i in tok.special_tokens.items()}
    vocab: dict[str, int] = {}
    for i in range(tok.vocab_size):
        piece = tok._id_bytes[i]
        if piece is None:
            continue
        vocab[id_to_special[i] if i in id_to_special else bytes_to_token_str(piece)] = i
    merges = [[bytes_to_token_str(tok.vocab[a]), bytes_to_token_str(tok.vocab[b])] for a, b, _ in tok.merges]
    data = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
             "special": True} for s, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
        ],
        "normalizer": {"type": "NFC"} if tok.normalizer == "NFC" else None,
        "pre_tokenizer": _pre_tokenizer_for(tok.pattern),
        "post_processor": (bos_template(id_to_special[tok.bos_token_id], tok.bos_token_id)
                           if tok.add_bos_token and tok.bos_token_id in id_to_special else None),
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": tok.ignore_merges, "vocab": vocab, "merges": merges},
    }

    def name(i: int | None) -> str | None:
        return id_to_special.get(i) if i is not None else None

    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name(tok.bos_token_id),
        "eos_token": name(tok.eos_token_id),
        "pad_token": name(tok.pad_token_id),
        "unk_token": None,
        "add_bos_token": tok.add_bos_token,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000,
        "additional_special_tokens": [s for s in tok.special_tokens if s not in
                                      {name(tok.bos_token_id), name(tok.eos_token_id), name(tok.pad_token_id)}],
    }
    jinja = to_jinja(tok)
    if jinja is not None:
        config["chat_template"] = jinja
    write_text(folder / "tokenizer.json", json.dumps(data, ensure_ascii=False))
    write_text(folder / "tokenizer_config.json", json.dumps(config, ensure_ascii=False, indent=2))
