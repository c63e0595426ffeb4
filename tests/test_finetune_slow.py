"""End-to-end on the real default model (SmolLM2-135M-Instruct): exact label masking with its tokenizer and
chat template, and a short LoRA run that lowers the validation loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from finetune import FinetuneConfig, FinetuneJob
from finetune.data import Example
from finetune.demo import demo_data_path, load_split
from finetune.render import IGNORE_INDEX, render_example

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    from llm_core.weights.hub import load_model

    torch.set_num_threads(2)
    return load_model("smollm2-135m-instruct")


def test_real_template_masks_exactly_the_prompt(smollm) -> None:
    _, tok = smollm
    msgs = [{"role": "user", "content": "Extract JSON.\n\nAt 41, Clara Cohen works as a gardener in Austin."},
            {"role": "assistant", "content": '{"name": "Clara Cohen", "age": 41}'}]
    r, _ = render_example(tok, Example(msgs, 1), max_length=512)
    prompt = tok.encode(tok.apply_chat_template(msgs[:1], add_generation_prompt=True))
    n = len(prompt)
    assert r.input_ids[:n] == prompt and r.labels[:n] == [IGNORE_INDEX] * n  # incl. the default system prompt
    assert r.labels[n:] == r.input_ids[n:]
    assert tok.decode(r.input_ids[n:]) == msgs[1]["content"] + "<|im_end|>\n"
    assert tok.decode(r.input_ids) == tok.apply_chat_template(msgs, add_generation_prompt=False)


def test_short_real_run_lowers_validation_loss(smollm, tmp_path: Path) -> None:
    model, tok = smollm
    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps(r) + "\n" for r in load_split(demo_data_path()["test"])[:4]))
    cfg = FinetuneConfig(data="demo", val_data=str(val), out_dir=str(tmp_path / "ad"), rank=8, alpha=16,
                         dropout=0.0, lr=3e-3, batch_size=2, max_steps=4, warmup_steps=1, eval_interval=4,
                         eval_batches=2, max_length=128, target_modules=["q_proj", "v_proj", "o_proj"])
    job = FinetuneJob(cfg, model=model, tokenizer=tok)
    st = job.run()
    job.peft_model.unload()  # give the shared fixture model back without LoRA layers
    assert st.state == "done", st.error
    (s0, before), (s1, after) = st.eval_losses
    assert (s0, s1) == (0, 4)
    assert after < 0.7 * before, st.eval_losses
    assert (tmp_path / "ad" / "adapter_model.safetensors").exists()
