"""Tiny random models shared by the tests: a byte-level tokenizer and transformers' Llama (GQA) beside our GPT
holding the same weights, so parity tests need no download."""

from __future__ import annotations

import torch

from llm_core.model.gpt import GPT
from llm_core.tokenizer import BPETokenizer


def byte_tokenizer() -> BPETokenizer:
    """256 byte tokens and one special: any id sequence below 257 decodes."""
    return BPETokenizer(pattern="gpt2", special_tokens={"<|endoftext|>": 256})


def tiny_llama_pair(seed: int = 0) -> tuple:
    """transformers' LlamaForCausalLM (random, 2 layers, GQA 4:2, untied) and our GPT with the same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from llm_core.weights.hf import llama_config_from_hf, llama_state_dict_from_hf

    torch.manual_seed(seed)
    hcfg = LlamaConfig(vocab_size=257, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                       rope_theta=10000.0, rms_norm_eps=1e-5, initializer_range=0.2, tie_word_embeddings=False)
    hf = LlamaForCausalLM(hcfg).eval()
    cfg = llama_config_from_hf(hcfg.to_dict())
    ours = GPT.from_state_dict(cfg, llama_state_dict_from_hf(hf.state_dict(), cfg)).eval()
    return hf, ours
