"""GGUF export of Gemma-3-style models: what ``weights.export.write_gguf`` adds for ``general.architecture``
"gemma3", written the way llama.cpp's converter writes Gemma 3 and ``weights.load_gguf`` reads it back.

- Model: llama.cpp fixes GeGLU (tanh), (1 + w) RMSNorms, the sandwich norms, q/k norms and the sqrt(n_embd)
  embedding scale for this architecture, so a model must have all of them; the file says the head size, the
  sliding window with one flag per layer, both RoPE bases and linear RoPE scaling. Norm weights are stored as
  1 + w; q/k rows keep the rotate-half layout (llama.cpp runs gemma3 with NEOX RoPE, no interleave).
- Vocabulary: a SentencePiece-style one, as Gemma's GGUFs carry it: pieces, scores and token types
  (``tokenizer.ggml.model`` "llama"), no merge list. A reader rebuilds the merges from the scores
  (``spm_format.generate_merges``), so each merged piece gets the score that puts its merges at their rank; the
  rebuilt merges are checked against the tokenizer's before anything is written.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from llm_core.model.config import ModelConfig
from llm_core.model.gpt import GPT
from llm_core.weights.gguf import _GGUF_LAYER

HF_HINT = "export it as a Hugging Face folder with --format hf, which llama.cpp's own converter reads"


def is_gemma3(c: ModelConfig) -> bool:
    """Does ``c`` use any Gemma 3 option (then it is exported as "gemma3", or refused)?"""
    return c.arch == "llama" and (c.norm_unit_offset or c.sandwich_norm or c.scale_embeddings
                                  or c.activation == "gelu_tanh" or c.sliding_window is not None)


def check_gemma3(c: ModelConfig, source: str) -> None:
    """Refuse, in one line, what llama.cpp's gemma3 cannot express."""
    missing = [name for name, ok in (("GeGLU (tanh)", c.activation == "gelu_tanh"),
                                     ("(1 + w) norms", c.norm_unit_offset), ("sandwich norms", c.sandwich_norm),
                                     ("q/k norms", c.qk_norm), ("embedding scaling", c.scale_embeddings)) if not ok]
    if missing:
        raise ValueError(f"{source}: GGUF export of Qwen- and Gemma-style models is supported for complete Gemma 3 "
                         "models only (llama.cpp's gemma3 always uses GeGLU, (1 + w) norms, sandwich norms, q/k norms "
                         f"and embedding scaling); this model lacks {', '.join(missing)}. {HF_HINT}")
    if c.qkv_bias or c.bias:
        raise ValueError(f"{source}: llama.cpp's gemma3 has no biases; {HF_HINT}")
    scalar_ok = c.query_pre_attn_scalar in (None, float(c.head_dim or 0))  # llama.cpp: 1/sqrt(head_dim) below 27B
    if not scalar_ok or c.final_logit_softcap is not None:
        raise ValueError(f"{source}: a GGUF has no key for query_pre_attn_scalar={c.query_pre_attn_scalar} (llama.cpp "
                         f"uses the head size, {c.head_dim}) or a final logit softcap "
                         f"({c.final_logit_softcap}); {HF_HINT}")


def write_gemma3_metadata(writer: Any, c: ModelConfig) -> None:
    """The gemma3 keys beyond the Llama ones ``export._write_metadata`` writes."""
    import gguf

    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    if c.sliding_window is not None:
        writer.add_sliding_window(int(c.sliding_window))
        writer.add_sliding_window_pattern([c.is_sliding(i) for i in range(c.n_layer)])
    writer.add_rope_freq_base_swa(float(c.rope_local_theta if c.rope_local_theta is not None else c.rope_theta))
    if c.rope_scaling_factor:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(c.rope_scaling_factor))


def gemma3_tensors(model: GPT) -> list[tuple[str, np.ndarray]]:
    """(llama.cpp name, float32 array (out, in)) for every tensor; every norm weight stored as 1 + w."""
    ours_to_gguf = {v: k for k, v in _GGUF_LAYER.items()}
    out: list[tuple[str, np.ndarray]] = []
    for key, t in model.state_dict().items():
        w = t.detach().to("cpu", torch.float32).contiguous().numpy()
        if key == "tok_emb.weight":
            name = "token_embd.weight"
        elif key == "norm_f.weight":
            name = "output_norm.weight"
        elif key == "lm_head.weight":
            if model.config.tie_embeddings:
                continue
            name = "output.weight"
        else:
            parts = key.split(".")  # blocks.N.<ours...>.weight
            ours = ".".join(parts[2:-1])
            if parts[0] != "blocks" or ours not in ours_to_gguf:
                raise ValueError(f"tensor {key!r} has no llama.cpp gemma3 name")
            name = f"blk.{parts[1]}.{ours_to_gguf[ours]}.{parts[-1]}"
        if name.endswith("norm.weight"):
            w = w + 1.0
        out.append((name, w))
    return out


def spm_tokenizer_fields(tok: Any, n_vocab: int, source: str) -> dict[str, Any]:
    """``tokenizer.ggml.*`` values of a SentencePiece-style tokenizer, padded to ``n_vocab`` rows with UNUSED
    ``[PAD<id>]`` pieces. Raises when the merges rebuilt from the scores would not be the tokenizer's own."""
    from gguf import TokenType

    from llm_core.tokenizer.spm import SentencePieceTokenizer, byte_of_piece
    from llm_core.tokenizer.spm_format import generate_merges

    if tok.vocab_size > n_vocab:
        raise ValueError(f"{source}: the tokenizer has {tok.vocab_size} tokens but the model only {n_vocab} rows")
    if tok.normalized_tokens or tok.ignore_merges:
        raise ValueError(f"{source}: added tokens matched after normalization, or ignore_merges, have no GGUF form; "
                         f"{HF_HINT}")
    specials = {i: s for s, i in tok.special_tokens.items()}
    first_rank: dict[str, int] = {}
    for r, (a, b) in enumerate(tok.merges):
        first_rank.setdefault(a + b, r)
    tokens, scores, types = [], [], []
    for i in range(n_vocab):
        piece = tok.pieces[i] if i < len(tok.pieces) else None
        if i in specials:
            tokens.append(specials[i])
            types.append(TokenType.UNKNOWN if i == tok.unk_token_id else TokenType.CONTROL)
        elif piece is None:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        else:
            tokens.append(piece)
            byte = tok.byte_fallback and byte_of_piece(piece) is not None  # what the tokenizer reads as a byte
            types.append(TokenType.UNKNOWN if i == tok.unk_token_id else TokenType.BYTE if byte else TokenType.NORMAL)
        # a merged piece's merges come at the rank of its first merge; other pieces after every merge
        scores.append(-float(first_rank.get(tokens[-1], len(tok.merges) + i)))
    rebuilt = SentencePieceTokenizer(tokens, generate_merges(tokens, scores), byte_fallback=tok.byte_fallback)

    def order(t: SentencePieceTokenizer) -> list[tuple[int, int, int]]:
        return [(a, b, new) for (a, b), (_, new) in sorted(t._ranks.items(), key=lambda kv: kv[1][0])]

    if order(rebuilt) != order(tok):
        raise ValueError(f"{source}: its merges are not the ones a GGUF reader rebuilds from piece scores (a GGUF "
                         f"stores no merge list for SentencePiece vocabularies); {HF_HINT}")
    return {"model": "llama", "tokens": tokens, "scores": scores, "types": types, "add_space_prefix":
            tok.add_dummy_prefix, "unk": tok.unk_token_id}
