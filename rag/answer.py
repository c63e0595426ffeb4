"""Cited answers: numbered passages packed into the LLM's context window, streamed; or extractive (no LLM).

The LLM is injected (`LLM` protocol) so prompt building and citation mapping are testable without a model;
`CoreLLM` adapts the project's own GPT (llm_core.hub.load_model + llm_core.generate.stream_generate).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from .bm25 import analyze
from .chunking import split_sentences
from .retrieve import SearchResult

DEFAULT_LLM = "smollm2-135m-instruct"
SYSTEM_PROMPT = (
    "You answer questions using only the numbered passages you are given. "
    "Cite the passages you use with their numbers in square brackets, like [1]. "
    "If the passages do not contain the answer, say that you do not know."
)
NO_PASSAGES = "No passages in the collection match the question."
_CITE = re.compile(r"\[(\d+(?:\s*[,;\u2013-]\s*\d+)*)\]")


class LLM(Protocol):
    """What the answerer needs from a chat model."""

    context_window: int

    def count_tokens(self, text: str) -> int: ...

    def prompt_tokens(self, messages: list[dict]) -> int: ...

    def stream(self, messages: list[dict], max_new_tokens: int,
               stop_event: threading.Event | None = None) -> Iterator[str]: ...


@dataclass
class Source:
    """Passage [n] as shown to the model, mapped back to where it came from."""

    n: int
    source: str
    page: int | None
    chunk_id: int
    doc_id: str
    score: float
    text: str  # the passage text given to the model (may be cut to fit)
    snippet: str

    def to_dict(self) -> dict:
        return asdict(self)


def _snippet(text: str, limit: int = 200) -> str:
    t = " ".join(text.split())
    return t if len(t) <= limit else t[: limit - 1].rsplit(" ", 1)[0] + "…"


def _label(r: SearchResult | Source) -> str:
    return f"{r.source}, page {r.page}" if r.page is not None else r.source


def parse_citations(text: str) -> list[int]:
    """Passage numbers cited in `text` ([1], [1, 3], [2-4]) in order of first appearance."""
    seen: list[int] = []
    for m in _CITE.finditer(text):
        for part in re.split(r"\s*[,;]\s*", m.group(1)):
            bounds = [int(x) for x in re.split(r"\s*[\u2013-]\s*", part) if x]
            nums = range(bounds[0], bounds[-1] + 1) if len(bounds) == 2 and 0 < bounds[1] - bounds[0] < 20 else bounds
            for n in nums:
                if n not in seen:
                    seen.append(n)
    return seen


def _defuse(text: str) -> str:
    """Document text must not smuggle chat-template control tokens (e.g. '<|im_start|>') into the prompt."""
    return text.replace("<|", "< |").replace("|>", "| >")


def build_messages(question: str, sources: list[Source], system: str = SYSTEM_PROMPT) -> list[dict]:
    passages = "\n\n".join(f"[{s.n}] ({_label(s)})\n{_defuse(s.text)}" for s in sources)
    question = _defuse(question)
    user = f"Passages:\n\n{passages}\n\nQuestion: {question}" if sources else f"Question: {question}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def pack_passages(question: str, results: list[SearchResult], llm: LLM, max_new_tokens: int,
                  min_tokens: int = 32) -> tuple[list[Source], list[dict]]:
    """Number results [1..n] and keep as many as fit the context window (cutting the last one to fit)."""
    budget = llm.context_window - max_new_tokens - llm.prompt_tokens(build_messages(question, []))
    sources: list[Source] = []
    for r in results:
        label = f"[{len(sources) + 1}] ({_label(r)})\n"
        cost = llm.count_tokens(label + r.text) + 2  # + the blank line between passages
        text = r.text
        if cost > budget:
            room = budget - llm.count_tokens(label) - 2
            if room < min_tokens:
                break
            words = text.split(" ")
            lo, hi = 0, len(words)  # longest word prefix that fits
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if llm.count_tokens(" ".join(words[:mid])) <= room:
                    lo = mid
                else:
                    hi = mid - 1
            text = " ".join(words[:lo])
            cost = llm.count_tokens(label + text) + 2
        sources.append(Source(len(sources) + 1, r.source, r.page, r.chunk_id, r.doc_id, r.score, text,
                              _snippet(text)))
        budget -= cost
        if budget < min_tokens:
            break
    messages = build_messages(question, sources)
    while sources and llm.prompt_tokens(messages) + max_new_tokens > llm.context_window:
        sources.pop()  # token counts of pieces are not exactly additive; trim until the whole prompt fits
        messages = build_messages(question, sources)
    return sources, messages


@dataclass
class Answer:
    question: str
    text: str
    sources: list[Source]
    citations: list[Source] = field(default_factory=list)
    extractive: bool = False

    def to_dict(self) -> dict:
        return {"question": self.question, "answer": self.text, "extractive": self.extractive,
                "sources": [s.to_dict() for s in self.sources], "citations": [s.to_dict() for s in self.citations]}


class AnswerStream:
    """Iterate for text pieces; `sources` are known before the first piece, `citations` after the last."""

    def __init__(self, question: str, sources: list[Source], pieces: Iterator[str], extractive: bool = False):
        self.question = question
        self.sources = sources
        self.extractive = extractive
        self.text = ""
        self._pieces = pieces

    def __iter__(self) -> Iterator[str]:
        for piece in self._pieces:
            self.text += piece
            yield piece

    @property
    def citations(self) -> list[Source]:
        by_n = {s.n: s for s in self.sources}
        return [by_n[n] for n in parse_citations(self.text) if n in by_n]

    def result(self) -> Answer:
        for _ in self:
            pass
        return Answer(self.question, self.text.strip(), self.sources, self.citations, self.extractive)


def _lexical_scores(question: str, sentences: list[str]) -> np.ndarray:
    """Share of the question's IDF mass (IDF over these sentences) that each sentence contains, in [0, 1]."""
    qterms = set(analyze(question))
    sets = [set(analyze(t)) for t in sentences]
    if not qterms:
        return np.zeros(len(sentences))
    idf = {t: np.log((len(sets) + 1) / (sum(t in s for s in sets) + 0.5)) for t in qterms}
    total = sum(idf.values())
    return np.array([sum(idf[t] for t in qterms & s) / total for s in sets])


def extractive_answer(question: str, results: list[SearchResult], embedder, n_sentences: int = 3,
                      max_chars: int = 400) -> tuple[str, list[Source]]:
    """The sentences of the retrieved passages closest to the question (cosine + term overlap), each cited."""
    sources = [Source(i + 1, r.source, r.page, r.chunk_id, r.doc_id, r.score, r.text, _snippet(r.text))
               for i, r in enumerate(results)]
    cands: list[tuple[int, str]] = []
    for s in sources:
        for a, b in split_sentences(s.text):
            sent = " ".join(s.text[a:b].split())
            if len(sent) >= 15:
                cands.append((s.n, sent if len(sent) <= max_chars else _snippet(sent, max_chars)))
    if not cands:
        return NO_PASSAGES, sources
    vecs = embedder.encode([question] + [c[1] for c in cands])  # (1 + C, d)
    cos = vecs[1:] @ vecs[0]
    score = cos + _lexical_scores(question, [c[1] for c in cands])
    score -= np.array([0.3 if len(t.split()) < 5 else 0.0 for _, t in cands])  # headings, stage cues, "A friend."
    score += np.array([0.02 / n for n, _ in cands])  # ties go to the retriever's better-ranked passage
    picked, seen = [], set()
    for i in np.argsort(-score, kind="stable"):
        if cands[i][1] not in seen:
            seen.add(cands[i][1])
            picked.append(cands[i])
        if len(picked) == n_sentences:
            break
    return " ".join(f"{t} [{n}]" for n, t in picked), sources


def answer_stream(collection, question: str, k: int = 5, mode: str = "hybrid", llm: LLM | None = None,
                  extractive: bool = False, mmr: bool = False, max_new_tokens: int = 256,
                  stop_event: threading.Event | None = None) -> AnswerStream:
    """Retrieve, then answer with citations. `llm` defaults to the core model (loaded once per process)."""
    if not question or not question.strip():
        raise ValueError("empty question")
    results = collection.search(question, k=k, mode=mode, mmr=mmr)
    if not results:
        return AnswerStream(question, [], iter([NO_PASSAGES]), extractive)
    if extractive:
        text, sources = extractive_answer(question, results, collection.embedder)
        return AnswerStream(question, sources, iter([text]), True)
    llm = llm or get_core_llm()
    sources, messages = pack_passages(question, results, llm, max_new_tokens)
    return AnswerStream(question, sources, llm.stream(messages, max_new_tokens, stop_event), False)


def answer(collection, question: str, **kwargs) -> Answer:
    return answer_stream(collection, question, **kwargs).result()


class CoreLLM:
    """The project's own GPT as an `LLM` (greedy-ish sampling: answers should stick to the passages)."""

    def __init__(self, name: str = DEFAULT_LLM, device: str | None = None, temperature: float = 0.2,
                 top_p: float = 0.9, repetition_penalty: float = 1.1, seed: int | None = 0):
        from llm_core.hub import load_model

        self.name = name
        self.model, self.tokenizer = load_model(name, device=device)
        self.model.eval()
        self.context_window = int(self.model.config.block_size)
        self.sampling = {"temperature": temperature, "top_p": top_p, "repetition_penalty": repetition_penalty,
                         "seed": seed}

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, name: str = "custom", temperature: float = 0.2,
                   top_p: float = 0.9, repetition_penalty: float = 1.1, seed: int | None = 0) -> CoreLLM:
        """Wrap a model that is already loaded (the app's picker) so answers reuse that copy."""
        self = cls.__new__(cls)
        self.name = name
        self.model, self.tokenizer = model, tokenizer
        self.context_window = int(model.config.block_size)
        self.sampling = {"temperature": temperature, "top_p": top_p, "repetition_penalty": repetition_penalty,
                         "seed": seed}
        return self

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, allowed_special=set()))

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return self.tokenizer.encode(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True))

    def prompt_tokens(self, messages: list[dict]) -> int:
        return len(self.prompt_ids(messages))

    def stream(self, messages: list[dict], max_new_tokens: int,
               stop_event: threading.Event | None = None) -> Iterator[str]:
        from llm_core.generate import GenerationConfig, stream_generate

        cfg = GenerationConfig(max_new_tokens=max_new_tokens, **self.sampling)
        yield from stream_generate(self.model, self.tokenizer, self.prompt_ids(messages), cfg, stop_event=stop_event)


_LLMS: dict[str, CoreLLM] = {}
_LLM_LOCK = threading.Lock()


def get_core_llm(name: str = DEFAULT_LLM) -> CoreLLM:
    with _LLM_LOCK:
        if name not in _LLMS:
            try:
                _LLMS[name] = CoreLLM(name)
            except ImportError as e:
                raise RuntimeError(f"the answering model needs llm_core ({e}); use extractive mode instead") from e
        return _LLMS[name]
