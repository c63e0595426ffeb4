"""Shared helpers for the finetune tests: a byte-level ChatML tokenizer and a tiny random GPT.

The tokenizer implements the llm_core Tokenizer interface the finetune package relies on (encode with special
tokens, decode, apply_chat_template), so data/LoRA/trainer tests run in seconds without the real model.
"""

from __future__ import annotations

import re

import pytest
import torch

from llm_core.model.config import ModelConfig
from llm_core.model.gpt import GPT

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SPECIALS = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258}


class ByteChatTokenizer:
    vocab_size = 259
    special_tokens = SPECIALS
    bos_token_id = None
    eos_token_id = 258
    pad_token_id = 256
    chat_template = "chatml"

    def encode(self, text: str, allowed_special: str | set = "all") -> list[int]:
        allowed = set(SPECIALS) if allowed_special == "all" else set(allowed_special)
        if not allowed:
            return list(text.encode("utf-8"))
        ids: list[int] = []
        pat = "(" + "|".join(re.escape(s) for s in sorted(allowed)) + ")"
        for part in re.split(pat, text):
            if part in allowed:
                ids.append(SPECIALS[part])
            elif part:
                ids += list(part.encode("utf-8"))
        return ids

    def decode(self, ids: list[int]) -> str:
        inv = {v: k for k, v in SPECIALS.items()}
        out, buf = [], bytearray()
        for i in ids:
            if i in inv:
                out.append(buf.decode("utf-8", "replace"))
                buf = bytearray()
                out.append(inv[i])
            else:
                buf.append(i)
        out.append(buf.decode("utf-8", "replace"))
        return "".join(out)

    def id_to_piece(self, i: int) -> bytes:
        inv = {v: k for k, v in SPECIALS.items()}
        return inv[i].encode() if i in inv else bytes([i])

    def decode_bytes(self, ids: list[int]) -> bytes:
        return b"".join(self.id_to_piece(i) for i in ids)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        s = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return s + ("<|im_start|>assistant\n" if add_generation_prompt else "")




def tiny_gpt(arch: str = "llama", seed: int = 0, vocab_size: int = 259) -> GPT:
    torch.manual_seed(seed)
    preset = "tiny-llama" if arch == "llama" else "tiny-gpt2"
    model = GPT(ModelConfig.from_preset(preset, vocab_size=vocab_size, block_size=128)).eval()
    with torch.no_grad():  # larger (tied) embeddings: logits react to the hidden state as in a trained model
        model.tok_emb.weight.normal_(0.0, 0.5)
    return model


def test_byte_tokenizer_round_trip() -> None:
    tok = ByteChatTokenizer()
    text = tok.apply_chat_template([{"role": "user", "content": "héllo"}])
    ids = tok.encode(text)
    assert ids[0] == SPECIALS["<|im_start|>"] and ids[-1] == ord("\n")
    assert tok.decode(ids) == text
    assert SPECIALS["<|im_start|>"] not in tok.encode(text, allowed_special=set())


def test_resolve_device_uses_bf16_where_native(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto precision: bf16 autocast on an AMX CPU, fp32 on others; asking for bf16 without it names the need."""
    from finetune.device import resolve_device

    for amx in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        auto = resolve_device("cpu", "auto")
        assert auto.autocast_dtype == (torch.bfloat16 if amx else None)
        assert auto.describe() == ("cpu (bf16 autocast)" if amx else "cpu (fp32)")
        assert resolve_device("cpu", "fp32").autocast_dtype is None
        if amx:
            assert resolve_device("cpu", "bf16").autocast_dtype == torch.bfloat16
        else:
            with pytest.raises(ValueError, match="AMX"):
                resolve_device("cpu", "bf16")


def test_saved_runs_with_the_old_setting_names_still_load() -> None:
    """FinetuneConfig took pretraining's names (grad_clip, eval_interval, eval_batches, checkpoint_interval); a
    finetune.json written before that still resumes with its own values, and the old CLI flags still work."""
    from finetune.__main__ import _train_parser
    from finetune.config import FinetuneConfig

    old = {"max_grad_norm": 0.5, "eval_every": 7, "max_eval_batches": 3, "save_every": 9, "rank": 4}
    cfg = FinetuneConfig.from_dict(old)
    assert (cfg.grad_clip, cfg.eval_interval, cfg.eval_batches, cfg.checkpoint_interval, cfg.rank) == (0.5, 7, 3, 9, 4)
    assert FinetuneConfig.from_dict(cfg.to_dict()) == cfg
    a = vars(_train_parser().parse_args(["--eval-every", "5", "--save-every", "6"]))
    b = vars(_train_parser().parse_args(["--eval-interval", "5", "--checkpoint-interval", "6"]))
    assert (a["eval_interval"], a["checkpoint_interval"]) == (b["eval_interval"], b["checkpoint_interval"]) == (5, 6)
