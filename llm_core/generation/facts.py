"""A factual smoke set for small chat models (``chat_facts.json``): simple questions a 135M instruct model should
know, and how many of them a model gets right when it answers greedily.

Why it lives in the core: perplexity alone did not keep the chat's answers right. On a Xeon with AVX512, SmolLM2's
int8 and int4 models stayed within 2% of fp32's perplexity (+1.6%, +0.3%) yet answered 13 of these 20 questions
where fp32 answered 16 (France's capital came out as "L'Étoile, ..."). :mod:`precision_choice` therefore also
asks these questions of each candidate precision. ``bench/chat_defaults.py`` scores chat settings with them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

__all__ = ["FACTS", "load_facts", "is_right", "facts_right"]

FACTS = Path(__file__).with_name("chat_facts.json")


def load_facts(path: Path = FACTS) -> list[dict[str, Any]]:
    """The questions: [{"q": ..., "answers": [...]}, ...]."""
    return json.loads(path.read_text(encoding="utf-8"))["questions"]


def is_right(reply: str, answers: list[str]) -> bool:
    """Whole-word, case-insensitive: "Paris" counts in "It is Paris.", "4" does not count in "14"."""
    return any(re.search(rf"(?<!\w){re.escape(a)}(?!\w)", reply, flags=re.I) for a in answers)


def facts_right(model, tok, questions: list[dict[str, Any]] | None = None,  # noqa: ANN001
                max_new_tokens: int = 24) -> int:
    """How many ``questions`` (default: all of :data:`FACTS`) ``model`` answers right: one greedy chat turn each,
    with the model's own chat template and system prompt, as the Chat tab sends it. A reply stops as soon as it holds
    an answer (most do within a few tokens), so this costs little more than the wrong replies."""
    from llm_core.generation.chat import ChatSession
    from llm_core.generation.generate import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    right = 0
    for q in load_facts() if questions is None else questions:
        reply = ""
        for piece in ChatSession(model, tok, config=cfg).stream(q["q"]):
            reply += piece
            if is_right(re.sub(r"\w+$", "", reply), q["answers"]):  # (a last word may go on: "Paris" -> "Parisian")
                break
        right += is_right(reply, q["answers"])
    return right
