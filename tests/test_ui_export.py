"""The Model tab's Export panel: a BPE checkpoint and a LoRA adapter become GGUF + Modelfile in the studio's
exports folder, readable by our own GGUF loader; a character-level checkpoint is refused in words."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")


def _bpe_checkpoint(folder):
    from llm_core.model.config import ModelConfig
    from llm_core.model.gpt import GPT
    from llm_core.tokenizer import train_bpe
    from llm_core.training.data import shakespeare_text
    from llm_core.weights.checkpoint import save_checkpoint

    tok = train_bpe(shakespeare_text()[:20_000], 320)
    torch.manual_seed(0)
    save_checkpoint(folder, GPT(ModelConfig.from_preset("tiny-llama", vocab_size=tok.vocab_size)), tok)
    return folder


def test_export_panel_writes_gguf_and_modelfile_our_loader_reads(registry, home):
    from llm_core.weights.gguf import load_gguf
    from ui.export_panel import export_model

    ckpt = _bpe_checkpoint(home / "checkpoints" / "bpe-tiny")
    key = next(k for _, k in registry.choices() if k.endswith("bpe-tiny"))
    status = export_model(key, "f32", registry)
    assert status.startswith("✅") and "bpe-tiny-f32.gguf" in status and ".Modelfile" in status
    gguf = home / "exports" / "bpe-tiny-f32.gguf"
    assert gguf.stat().st_size > 0 and (home / "exports" / "bpe-tiny-f32.Modelfile").is_file()
    from llm_core.weights.checkpoint import load_checkpoint

    ours, _ = load_checkpoint(ckpt)
    back = load_gguf(gguf)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(ours.eval()(ids)[0], back.eval()(ids)[0])


def test_export_panel_refuses_a_character_level_checkpoint_in_words(registry, home):
    from ui.export_panel import export_model

    status = export_model(None, "q8_0", registry)  # the registry's default: a character-level checkpoint
    assert status.startswith("⚠️") and "character" in status and "--format hf" in status
    assert not (home / "exports").exists() or not any((home / "exports").iterdir())
