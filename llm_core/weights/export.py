"""Export a model to GGUF (llama.cpp, Ollama, LM Studio...) with an Ollama ``Modelfile`` beside it.

``export_gguf(model, out, outtype)`` writes what llama.cpp's own converter (``convert_hf_to_gguf.py``) writes:

    general.architecture   "llama" (Llama/SmolLM2 family), "gemma3" (``export_gemma``) or "gpt2"
    <arch>.*               context/embedding/feed-forward lengths, heads, norm eps, RoPE base
    tokenizer.ggml.*       model "gpt2" (byte-level BPE), pre-tokenizer name, tokens, merges, token types, ids;
                           or model "llama" (SentencePiece-style, Gemma): pieces, scores, token types
    tokenizer.chat_template  the Jinja template equal to our chat rendering
    tensors                llama.cpp names (token_embd, blk.N.attn_q, ...); Llama q/k rows permuted to llama.cpp's
                           interleaved RoPE pairs (``weights.permute_qk``; ``weights.load_gguf`` undoes it)

Quantization (``gguf.quants``): 1-D tensors (norms, biases) and GPT-2's position table stay float32; q4_0 keeps the
embedding / output matrix in q8_0, as llama.cpp's quantizer keeps it at higher precision (q6_K there).
A character-level model cannot be written: llama.cpp only knows subword vocabularies (see ``CHAR_MESSAGE``).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm_core.atomic import atomic_path
from llm_core.model.config import ModelConfig
from llm_core.model.gpt import GPT
from llm_core.weights import export_gemma as gemma3
from llm_core.weights.gguf import permute_qk

__all__ = ["OUTTYPES", "ExportResult", "ExportStopped", "export_gguf", "write_gguf", "export_hf_folder",
           "load_for_export", "gguf_tokenizer_fields"]

OUTTYPES = ("f32", "f16", "q8_0", "q4_0")
PRE_TOKENIZERS = {"gpt2": "gpt-2", "smollm": "smollm", "gpt4": "llama-bpe"}  # our pattern -> llama.cpp pre name
CHAR_MESSAGE = ("{source} uses a character-level tokenizer, and a GGUF that llama.cpp or Ollama can run needs a "
                "subword (BPE) vocabulary: llama.cpp has no character tokenizer. Export it as a Hugging Face "
                "folder instead: python -m llm_core export {source} --format hf --out DIR "
                "(or retrain with --tokenizer bpe:4096 to get a GGUF-exportable model).")
Progress = Callable[[int, int], None]


class ExportStopped(Exception):
    """The export was stopped (``stop_event``); nothing was written."""


@dataclass
class ExportResult:
    path: Path
    bytes: int
    outtype: str
    format: str = "gguf"
    arch: str = ""
    modelfile: Path | None = None
    n_tensors: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["path"], d["modelfile"] = str(self.path), str(self.modelfile) if self.modelfile else None
        return d


# ---------------------------------------------------------------------------------------------------------------
# Loading (with a LoRA adapter merged in)
# ---------------------------------------------------------------------------------------------------------------


def load_for_export(model_name_or_path: str | Path | None, adapter: str | Path | None = None) -> tuple[GPT, Any]:
    """(plain GPT, tokenizer): ``load_model`` of the model, with a PEFT LoRA adapter folder merged into it.
    ``model_name_or_path`` None takes the adapter's recorded base model."""
    from llm_core.weights.hub import load_model

    if adapter is None:
        if model_name_or_path is None:
            raise ValueError("name a model to export (or an adapter, whose base model is recorded)")
        return load_model(model_name_or_path)
    cfg_file = Path(adapter) / "adapter_config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
    base = model_name_or_path or json.loads(cfg_file.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{cfg_file}: base_model_name_or_path is not set; name the base model")
    model, tok = load_model(base)
    import warnings

    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return merged.eval(), tok


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer metadata
# ---------------------------------------------------------------------------------------------------------------


def _jinja_template(tok: Any) -> str:
    from llm_core.tokenizer.chat_template import to_jinja

    jinja = to_jinja(tok)
    if jinja is not None:
        return jinja
    return ("{% for message in messages %}{{ (message['role'] | capitalize) + ': ' + message['content'] + '\n\n' }}"
            "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")


def gguf_tokenizer_fields(tok: Any, n_vocab: int, source: str = "model") -> dict[str, Any]:
    """``tokenizer.ggml.*`` values for a byte-level BPE tokenizer, the token list padded to the model's
    ``n_vocab`` rows (unused ids become ``[PAD<id>]`` tokens of type UNUSED, as llama.cpp's converter does)."""
    from gguf import TokenType

    from llm_core.tokenizer import BPETokenizer, CharTokenizer, SentencePieceTokenizer
    from llm_core.tokenizer.patterns import bytes_to_token_str, pattern_name

    if tok is None or isinstance(tok, CharTokenizer):
        raise ValueError(CHAR_MESSAGE.format(source=shlex.quote(source)) if tok is not None else
                         f"{source} was saved without a tokenizer: a GGUF needs its vocabulary")
    if isinstance(tok, SentencePieceTokenizer):
        return dict(gemma3.spm_tokenizer_fields(tok, n_vocab, source), chat_template=_jinja_template(tok),
                    bos=tok.bos_token_id, eos=tok.eos_token_id, pad=tok.pad_token_id, add_bos=tok.add_bos_token)
    if not isinstance(tok, BPETokenizer):
        raise ValueError(f"{source}: tokenizer {type(tok).__name__} cannot be written to GGUF (byte-level BPE only)")
    pre = PRE_TOKENIZERS.get(pattern_name(tok.pattern) or "")
    if pre is None:
        raise ValueError(f"{source}: its tokenizer splits text with a custom regex that llama.cpp has no "
                         f"pre-tokenizer for (known: {sorted(PRE_TOKENIZERS)} patterns)")
    if tok.vocab_size > n_vocab:
        raise ValueError(f"{source}: the tokenizer has {tok.vocab_size} tokens but the model only {n_vocab} rows")
    specials = {i: s for s, i in tok.special_tokens.items()}
    tokens, types = [], []
    for i in range(n_vocab):
        piece = tok._id_bytes[i] if i < tok.vocab_size else None
        if i in specials:
            tokens.append(specials[i])
            types.append(TokenType.CONTROL)
        elif piece is None:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        else:
            tokens.append(bytes_to_token_str(piece))
            types.append(TokenType.NORMAL)
    merges = [f"{bytes_to_token_str(tok.vocab[a])} {bytes_to_token_str(tok.vocab[b])}" for a, b, _ in tok.merges]
    if not merges:
        raise ValueError(f"{source}: the BPE tokenizer has no merges; llama.cpp requires them")
    return {"model": "gpt2", "pre": pre, "tokens": tokens, "types": types, "merges": merges, "chat_template": _jinja_template(tok),
            "bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id,
            "add_bos": bool(getattr(tok, "add_bos_token", False))}


# ---------------------------------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------------------------------


def _gguf_tensors(model: GPT) -> list[tuple[str, np.ndarray]]:
    """(llama.cpp name, float32 array in PyTorch (out, in) layout) for every tensor of ``model``."""
    c = model.config
    sd = {k: v.detach().to("cpu", torch.float32).contiguous().numpy() for k, v in model.state_dict().items()}
    out = [("token_embd.weight", sd["tok_emb.weight"])]
    if c.arch == "gpt2":
        out.append(("position_embd.weight", sd["pos_emb.weight"]))
    out.append(("output_norm.weight", sd["norm_f.weight"]))
    if "norm_f.bias" in sd or c.arch == "gpt2":
        out.append(("output_norm.bias", sd.get("norm_f.bias", np.zeros(c.n_embd, np.float32))))
    if not c.tie_embeddings:
        out.append(("output.weight", sd["lm_head.weight"]))

    def get(key: str, rows: int) -> np.ndarray:  # a missing bias: zeros (llama.cpp's gpt2 requires biases)
        return sd[key] if key in sd else np.zeros(rows, np.float32)

    for i in range(c.n_layer):
        b, g = f"blocks.{i}.", f"blk.{i}."
        if c.arch == "gpt2":
            C = c.n_embd
            out += [(g + "attn_norm.weight", sd[b + "attn_norm.weight"]), (g + "attn_norm.bias", get(b + "attn_norm.bias", C)),
                    (g + "attn_qkv.weight", np.concatenate([sd[b + f"attn.{p}_proj.weight"] for p in "qkv"])),  # (3C, C)
                    (g + "attn_qkv.bias", np.concatenate([get(b + f"attn.{p}_proj.bias", C) for p in "qkv"])),
                    (g + "attn_output.weight", sd[b + "attn.o_proj.weight"]),
                    (g + "attn_output.bias", get(b + "attn.o_proj.bias", C)),
                    (g + "ffn_norm.weight", sd[b + "mlp_norm.weight"]), (g + "ffn_norm.bias", get(b + "mlp_norm.bias", C)),
                    (g + "ffn_up.weight", sd[b + "mlp.up_proj.weight"]),
                    (g + "ffn_up.bias", get(b + "mlp.up_proj.bias", c.intermediate_size)),  # type: ignore[arg-type]
                    (g + "ffn_down.weight", sd[b + "mlp.down_proj.weight"]),
                    (g + "ffn_down.bias", get(b + "mlp.down_proj.bias", C))]
            continue
        names = {"attn_norm": "attn_norm", "attn_q": "attn.q_proj", "attn_k": "attn.k_proj", "attn_v": "attn.v_proj",
                 "attn_output": "attn.o_proj", "ffn_norm": "mlp_norm", "ffn_gate": "mlp.gate_proj",
                 "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
        for gname, ours in names.items():
            for kind in ("weight", "bias"):
                if (key := f"{b}{ours}.{kind}") in sd:
                    w = sd[key]
                    if gname == "attn_q":
                        w = permute_qk(w, c.n_head)  # rotate-half -> llama.cpp's interleaved pairs
                    elif gname == "attn_k":
                        w = permute_qk(w, c.n_kv_head)  # type: ignore[arg-type]
                    out.append((f"{g}{gname}.{kind}", w))
    return out


def _encode(name: str, w: np.ndarray, outtype: str, warnings: list[str]) -> tuple[np.ndarray, Any]:
    """(data, raw GGML type or None) for one tensor in ``outtype``."""
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    if w.ndim == 1 or name == "position_embd.weight" or outtype == "f32":
        return np.ascontiguousarray(w, dtype=np.float32), None
    if outtype == "f16":
        return w.astype(np.float16), None
    qtype = Q.Q8_0 if outtype == "q8_0" or name in ("token_embd.weight", "output.weight") else Q.Q4_0
    block = quants.GGML_QUANT_SIZES[qtype][0]
    if w.shape[-1] % block:
        warnings.append(f"{name}: rows of {w.shape[-1]} values are not a multiple of {block}; kept in f16")
        return w.astype(np.float16), None
    return quants.quantize(np.ascontiguousarray(w, dtype=np.float32), qtype), qtype


_FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0"}


def _write_metadata(writer: Any, c: ModelConfig, tokf: dict[str, Any], name: str, outtype: str) -> None:
    """The GGUF key/values llama.cpp reads: architecture sizes, RoPE/norm settings, tokenizer and chat template."""
    import gguf

    writer.add_name(name)
    writer.add_file_type(int(getattr(gguf.LlamaFileType, _FILE_TYPES[outtype])))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(c.block_size)
    writer.add_embedding_length(c.n_embd)
    writer.add_feed_forward_length(c.intermediate_size)  # type: ignore[arg-type]
    writer.add_block_count(c.n_layer)
    writer.add_head_count(c.n_head)
    if c.arch == "gpt2":
        writer.add_layer_norm_eps(float(c.norm_eps))  # type: ignore[arg-type]
    else:
        writer.add_head_count_kv(c.n_kv_head)  # type: ignore[arg-type]
        writer.add_layer_norm_rms_eps(float(c.norm_eps))  # type: ignore[arg-type]
        writer.add_rope_freq_base(float(c.rope_theta))
        writer.add_rope_dimension_count(c.head_dim)
        writer.add_vocab_size(c.vocab_size)
    if gemma3.is_gemma3(c):
        gemma3.write_gemma3_metadata(writer, c)
    writer.add_tokenizer_model(tokf["model"])
    writer.add_token_list(tokf["tokens"])
    writer.add_token_types(tokf["types"])
    if tokf["model"] == "gpt2":
        writer.add_tokenizer_pre(tokf["pre"])
        writer.add_token_merges(tokf["merges"])
    else:  # SentencePiece-style: scores instead of merges
        writer.add_token_scores(tokf["scores"])
        writer.add_add_space_prefix(bool(tokf["add_space_prefix"]))
        if tokf["unk"] is not None:
            writer.add_unk_token_id(int(tokf["unk"]))
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("pad", writer.add_pad_token_id)):
        if tokf[key] is not None:
            add(int(tokf[key]))
    writer.add_add_bos_token(tokf["add_bos"])  # plain prompts start with BOS only if the tokenizer says so
    writer.add_chat_template(tokf["chat_template"])


def write_gguf(model: GPT, tokenizer: Any, out_path: str | Path, outtype: str = "f32", name: str | None = None,
               progress: Progress | None = None, stop_event: threading.Event | None = None,
               source: str | None = None) -> ExportResult:
    """Write ``model`` + ``tokenizer`` as one GGUF file (temp file + os.replace: never half a file).
    ``name``: ``general.name``; ``source``: how error messages name the model (default: ``name``)."""
    import gguf

    if outtype not in OUTTYPES:
        raise ValueError(f"unknown outtype {outtype!r}: choose one of {', '.join(OUTTYPES)}")
    c, out_path = model.config, Path(out_path)
    name = name or c.name
    tokf = gguf_tokenizer_fields(tokenizer, c.vocab_size, source or name)  # char models fail here, before any work
    gemma = gemma3.is_gemma3(c)
    if gemma:
        gemma3.check_gemma3(c, source or name)
    beyond_llama = c.arch == "llama" and not gemma and (
        c.qk_norm or c.head_dim not in (None, c.n_embd // c.n_head) or (c.qkv_bias and not c.bias)
        or c.activation != "silu")
    if beyond_llama:
        raise ValueError(f"{source or name}: GGUF export of Qwen- and Gemma-style models (q/k/v biases, q/k norms, "
                         "a separate head size) is supported for complete Gemma 3 models only; export it as a "
                         "Hugging Face folder with --format hf, which llama.cpp's own converter reads")
    if gemma != (tokf["model"] == "llama"):
        raise ValueError(f"{source or name}: a {'Gemma 3' if gemma else c.arch} model with a "
                         f"{'byte-level BPE' if gemma else 'SentencePiece-style'} vocabulary has no GGUF form here; "
                         "export it as a Hugging Face folder with --format hf")
    warnings: list[str] = []
    if c.arch == "gpt2" and c.activation == "gelu":
        warnings.append("this GPT-2 uses exact (erf) GELU; llama.cpp's gpt2 runs the tanh GELU, so its outputs "
                        "differ slightly from ours")
    tensors = gemma3.gemma3_tensors(model) if gemma else _gguf_tensors(model)
    with atomic_path(out_path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "gemma3" if gemma else c.arch)
        try:
            _write_metadata(writer, c, tokf, name, outtype)
            for k, (tname, w) in enumerate(tensors):
                if stop_event is not None and stop_event.is_set():
                    raise ExportStopped("export stopped; nothing was written")
                data, raw = _encode(tname, w, outtype, warnings)
                writer.add_tensor(tname, data, raw_dtype=raw)
                if progress is not None:
                    progress(k + 1, len(tensors))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return ExportResult(out_path, out_path.stat().st_size, outtype, "gguf", c.arch, None, len(tensors), warnings)


def default_out_path(model_name_or_path: str | Path | None, adapter: str | Path | None, outtype: str) -> Path:
    """``data_dir()/exports/<model>[+<adapter>]-<outtype>.gguf``."""
    from llm_core.paths import data_dir

    stem = Path(str(model_name_or_path or "model")).name.removesuffix(".gguf")
    if adapter is not None:
        stem += "+" + Path(adapter).name
    return data_dir() / "exports" / f"{stem}-{outtype}.gguf"


def export_gguf(model_name_or_path: str | Path | None, out_path: str | Path | None = None, outtype: str = "f32",
                adapter: str | Path | None = None, modelfile: bool = True, progress: Progress | None = None,
                stop_event: threading.Event | None = None) -> ExportResult:
    """Load a model (name, checkpoint, HF folder or .gguf; a LoRA ``adapter`` merged in), write it as a GGUF
    and, with ``modelfile``, an Ollama ``<stem>.Modelfile`` beside it. ``out_path`` None: ``default_out_path``."""
    from llm_core.generation.chat import chat_defaults
    from llm_core.weights.modelfile import write_modelfile

    if outtype not in OUTTYPES:  # before the (slow) load
        raise ValueError(f"unknown outtype {outtype!r}: choose one of {', '.join(OUTTYPES)}")
    model, tok = load_for_export(model_name_or_path, adapter)
    source = str(model_name_or_path or adapter)
    out = Path(out_path) if out_path is not None else default_out_path(model_name_or_path, adapter, outtype)
    result = write_gguf(model, tok, out, outtype, name=Path(source).name, progress=progress, stop_event=stop_event,
                        source=source)
    if modelfile:
        result.modelfile = write_modelfile(out, tok, chat_defaults(model, tok).config, model.config.block_size)
    return result


def export_hf_folder(model_name_or_path: str | Path | None, out_dir: str | Path,
                     adapter: str | Path | None = None) -> ExportResult:
    """A Hugging Face folder (``weights.export_hf``: config.json + model.safetensors + tokenizer files, written
    atomically), plus our ``tokenizer_scratch.json`` so that character-level models keep their vocabulary too."""
    from llm_core.weights.hf import export_hf

    model, tok = load_for_export(model_name_or_path, adapter)
    out = export_hf(model, out_dir, tok)
    if tok is not None:
        tok.save(out)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return ExportResult(out, size, "f32", "hf", model.config.arch, None, len(model.state_dict()))
