"""Cited answers in three modes (`ANSWER_MODES`):

- "grounded" (default): the one sentence that best answers the question, quoted and cited to exactly the passage it
  comes from, or an honest "not found" when the evidence is weak (rag.grounded). No LLM, ~0.1-0.5 s.
- "reader": the same quoted, cited sentence, picked by the learned reader (rag.reader: a small model trained on
  synthetic questions from installed packages' prose), which abstains when its P(answerable) < 0.5. Measured
  below the hand-weighted grounded score on the eval set (bench/rag_answers.py), so it is not the default.
- "extractive": the three best-matching sentences of any passages, each cited (the older quote mode).
- "generative": numbered passages packed into the LLM's context window and a streamed free-form answer. Right
  for a larger instruct model; the bundled 135M model rambles (bench/rag_answers.py measures all three).

The LLM is injected (`LLM` protocol, or a factory so nothing loads when it is not needed) so prompt building and
citation mapping are testable without a model; `rag.llm.CoreLLM` adapts the project's own GPT.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from .bm25 import analyze
from .chunking import split_sentences
from .grounded import ABSTAIN_BELOW, Pick, lexical_coverage, pick, question_identifiers, question_names
from .llm import DEFAULT_LLM, LLM, CoreLLM, LLMOrFactory, get_core_llm, resolve_llm
from .retrieve import SearchResult, diversify, fetch_chunks

ANSWER_MODES = ("grounded", "reader", "extractive", "generative")
DEFAULT_ANSWER_MODE = "grounded"
MAX_QUESTION_CHARS = 1000  # a longer question is answered from its first part (embedders see ~256 tokens anyway)
SYSTEM_PROMPT = (
    "You answer questions using only the numbered passages you are given. "
    "Cite the passages you use with their numbers in square brackets, like [1]. "
    "If the passages do not contain the answer, say that you do not know."
)
NO_PASSAGES = "No passages in the collection match the question."
NO_DOCUMENTS = "There are no documents in this collection yet: add some first."
NOT_FOUND = ("I could not find an answer to this question in the documents. "
             "The closest passages are listed below, if you want to check them yourself.")
_DONT_KNOW = re.compile(r"\b(do not know|don't know|not (provide|mention|contain|say)|no (information|answer))\b",
                        re.I)
_CITE = re.compile(r"\[(\d+(?:\s*[,;\u2013-]\s*\d+)*)\]")


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
    highlight: list[int] | None = None  # [start, end) in `text` of the sentence the answer rests on

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
    answer_mode: str = DEFAULT_ANSWER_MODE
    abstained: bool = False
    notes: list[str] = field(default_factory=list)
    confidence: float | None = None  # grounded: the chosen sentence's score (abstains below the threshold);
    # reader: P(answerable) (abstains below 0.5)

    def to_dict(self) -> dict:
        return {"question": self.question, "answer": self.text, "answer_mode": self.answer_mode,
                "abstained": self.abstained, "confidence": self.confidence, "extractive": self.extractive,
                "notes": self.notes,
                "sources": [s.to_dict() for s in self.sources], "citations": [s.to_dict() for s in self.citations]}


class AnswerStream:
    """Iterate for text pieces; `sources` are known before the first piece, `citations` after the last."""

    def __init__(self, question: str, sources: list[Source], pieces: Iterator[str], extractive: bool = False,
                 answer_mode: str = DEFAULT_ANSWER_MODE, abstained: bool | None = None,
                 notes: list[str] | None = None, confidence: float | None = None):
        self.question = question
        self.confidence = confidence
        self.verified: set[int] | None = None  # generative: passage numbers whose citation was verified
        self.sources = sources
        self.extractive = extractive
        self.answer_mode = answer_mode
        self.notes = notes or []
        self._abstained = abstained
        self.text = ""
        self._pieces = pieces

    def __iter__(self) -> Iterator[str]:
        for piece in self._pieces:
            self.text += piece
            yield piece

    @property
    def citations(self) -> list[Source]:
        by_n = {s.n: s for s in self.sources}
        cited = [by_n[n] for n in parse_citations(self.text) if n in by_n]
        if self.verified is not None:  # generative: only the [n] that verified_pieces checked against passage n
            cited = [s for s in cited if s.n in self.verified]
        return cited

    @property
    def abstained(self) -> bool:
        """Known up front for grounded answers; a generated one counts as abstaining when it says it does not know."""
        if self._abstained is not None:
            return self._abstained
        return bool(_DONT_KNOW.search(self.text)) or not self.text.strip()

    def result(self) -> Answer:
        for _ in self:
            pass
        return Answer(self.question, self.text.strip(), self.sources, self.citations, self.extractive,
                      self.answer_mode, self.abstained, self.notes, self.confidence)


def _segments_citing(text: str, n: int) -> list[str]:
    """The stretches of `text` before each [..] marker that cites n (back to the previous marker)."""
    out, prev = [], 0
    for m in _CITE.finditer(text):
        if n in parse_citations(m.group(0)):
            out.append(text[prev : m.start()])
        prev = m.end()
    return out


MIN_SUPPORT = 0.3  # share of a generated answer's content words that its cited passage must contain


def support(answer_text: str, passage: str) -> float:
    """Share of the answer's content words (citation markers aside) found in the passage: a cheap check that a
    generated claim comes from that passage and not from the model's imagination."""
    terms = set(analyze(_CITE.sub(" ", answer_text)))
    return len(terms & set(analyze(passage))) / len(terms) if terms else 0.0


def verified_pieces(pieces: Iterator[str], sources: list[Source], verified: set[int],
                    fallback: Callable[[], tuple[str, Source] | None] | None = None) -> Iterator[str]:
    """Stream the generated answer, then check it against the passages: keep the model's [n] that its passage
    supports; else add the [n] of the passage that best supports it; else (the model wandered off) add the
    supporting quote from `fallback` (the grounded pick) with its citation, so the answer is never uncited."""
    text = ""
    for piece in pieces:
        text += piece
        yield piece
    by_n = {s.n: s for s in sources}
    verified.update(n for n in parse_citations(text) if n in by_n
                    and any(support(seg, by_n[n].text) >= MIN_SUPPORT for seg in _segments_citing(text, n)))
    if verified:
        return
    scored = [(support(text, s.text), -s.n, s) for s in sources]
    best = max(scored, key=lambda t: (t[0], t[1]), default=None)
    if best is not None and best[0] >= MIN_SUPPORT:
        verified.add(best[2].n)
        yield f" [{best[2].n}]"
        return
    quote = fallback() if fallback is not None else None
    if quote is not None:
        sentence, src = quote
        verified.add(src.n)
        yield f"\n\n(The passages do not support that answer. What they say: \"{sentence}\" [{src.n}])"


def to_sources(results: list[SearchResult]) -> list[Source]:
    return [Source(i + 1, r.source, r.page, r.chunk_id, r.doc_id, r.score, r.text, _snippet(r.text))
            for i, r in enumerate(results)]


def extractive_answer(question: str, results: list[SearchResult], embedder, n_sentences: int = 3,
                      max_chars: int = 400) -> tuple[str, list[Source]]:
    """The sentences of the retrieved passages closest to the question (cosine + term overlap), each cited."""
    sources = to_sources(results)
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
    score = cos + lexical_coverage(question, [c[1] for c in cands])
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


def stored_vectors(collection, results: list[SearchResult]) -> np.ndarray | None:
    """The results' chunk embeddings as stored at ingest (None if any is missing), so they are not computed again."""
    rows = fetch_chunks(collection.store.refresh(), [r.chunk_id for r in results], with_vectors=True)
    if any(r.chunk_id not in rows for r in results):
        return None
    return np.stack([np.frombuffer(rows[r.chunk_id][7], dtype=np.float32) for r in results])


P_UNMENTIONED = 0.4  # grounded: how much more score a pick needs when the question names something no document has
DEMANDING_P = 0.8  # reader: the P(answerable) it needs then


def unmentioned(collection, question: str) -> list[str]:
    """Names ("Which Python version ...") and model numbers or versions ("PS-310", "v2.3") in the question that no
    document of the collection contains. Such a question is often about something the documents never cover ("the
    PS-310" over the PS-305's manual), but not always ("Who did the French translation?" over a changelog that says
    "fr translation"), so a missing name asks for stronger evidence rather than vetoing. One look at the index."""
    bm25 = collection.store.refresh().bm25
    if bm25 is None:
        return []
    wanted = [(w, analyze(w)) for w in question_names(question)] + list(question_identifiers(question).items())
    return [w for w, terms in wanted if not all(bm25.has_term(t) for t in terms)]


def grounded_answer(question: str, results: list[SearchResult], embedder, qvec: np.ndarray | None = None,
                    passage_vecs: np.ndarray | None = None, learned: bool = False,
                    demanding: bool = False) -> tuple[str, list[Source], Pick]:
    """(text, sources, pick): the best-supported sentence quoted with its one citation, or NOT_FOUND. `learned`:
    the learned reader (rag.reader) picks and decides to abstain, instead of the hand-weighted score. `demanding`
    (the question names something no document mentions): answer only on stronger evidence."""
    sources = to_sources(results)
    passages = [(s.n, s.text) for s in sources]
    if learned:
        from .reader import read

        p = read(question, passages, embedder, qvec=qvec, passage_vecs=passage_vecs,
                 min_answerable=DEMANDING_P if demanding else 0.5)
    else:
        p = pick(question, passages, embedder, qvec=qvec, passage_vecs=passage_vecs,
                 abstain_below=ABSTAIN_BELOW + (P_UNMENTIONED if demanding else 0.0))
    if p.abstained or p.candidate is None:
        return NOT_FOUND, sources, p
    c = p.candidate
    sources[c.n - 1].highlight = [c.start, c.end]
    return f"{c.text} [{c.n}]", sources, p


def check_question(question: str) -> tuple[str, list[str]]:
    """(question to use, notes): empty is an error; a very long one is cut to its first part, and says so."""
    if not question or not question.strip():
        raise ValueError("empty question")
    question = " ".join(question.split())
    if len(question) <= MAX_QUESTION_CHARS:
        return question, []
    cut = question[:MAX_QUESTION_CHARS].rsplit(" ", 1)[0] or question[:MAX_QUESTION_CHARS]
    return cut, [f"The question is {len(question):,} characters long; it was answered from its first "
                 f"{len(cut):,} characters."]


def retrieve(collection, question: str, k: int = 5, mode: str = "hybrid", mmr: bool = False,
             max_per_doc: int | None = 2, query_vector: np.ndarray | None = None) -> list[SearchResult]:
    """Top-k passages, plus other documents' best chunks when one document fills more than `max_per_doc` slots
    (rag.retrieve.diversify)."""
    results = collection.search(question, k=k, mode=mode, mmr=mmr, query_vector=query_vector)
    counts = [sum(r.doc_id == d for r in results) for d in {r.doc_id for r in results}]
    if not max_per_doc or max(counts, default=0) <= max_per_doc:
        return results
    pool = collection.search(question, k=max(2 * k, 10), mode=mode, mmr=mmr, query_vector=query_vector)
    return diversify(results, pool, max_per_doc)


def answer_stream(collection, question: str, k: int = 5, mode: str = "hybrid", llm: LLMOrFactory | None = None,
                  extractive: bool = False, mmr: bool = False, max_new_tokens: int = 256,
                  stop_event: threading.Event | None = None, answer_mode: str | None = None,
                  max_per_doc: int | None = 2) -> AnswerStream:
    """Retrieve, then answer with citations (`answer_mode`, default grounded; `extractive=True` is the older
    spelling of answer_mode="extractive"). `llm` (or a factory) is used, and loaded, by generative mode only."""
    amode = answer_mode or ("extractive" if extractive else DEFAULT_ANSWER_MODE)
    if amode not in ANSWER_MODES:
        raise ValueError(f"unknown answer mode {amode!r}; choose one of {', '.join(ANSWER_MODES)}")
    question, notes = check_question(question)
    if collection.info().n_documents == 0:
        return AnswerStream(question, [], iter([NO_DOCUMENTS]), amode == "extractive", amode, True, notes)
    quoted = amode in ("grounded", "reader")
    qvec = collection.embedder.encode_query(question) if mode != "bm25" or quoted else None
    results = retrieve(collection, question, k, mode, mmr, max_per_doc, qvec)
    if not results:
        return AnswerStream(question, [], iter([NO_PASSAGES]), amode == "extractive", amode, True, notes)
    if quoted:
        missing = unmentioned(collection, question)
        text, sources, p = grounded_answer(question, results, collection.embedder, qvec,
                                           stored_vectors(collection, results), learned=amode == "reader",
                                           demanding=bool(missing))
        if missing and p.abstained:
            notes = [*notes, f"The documents never mention {', '.join(missing)}."]
        return AnswerStream(question, sources, iter([text]), False, amode, p.abstained, notes, round(p.score, 4))
    if amode == "extractive":
        text, sources = extractive_answer(question, results, collection.embedder)
        return AnswerStream(question, sources, iter([text]), True, amode, False, notes)
    model = resolve_llm(llm)
    sources, messages = pack_passages(question, results, model, max_new_tokens)
    def fallback() -> tuple[str, Source] | None:
        text, _, p = grounded_answer(question, results[: len(sources)], collection.embedder, qvec)
        return (p.candidate.text, sources[p.candidate.n - 1]) if p.candidate and not p.abstained else None

    verified: set[int] = set()
    pieces = verified_pieces(model.stream(messages, max_new_tokens, stop_event), sources, verified, fallback)
    stream = AnswerStream(question, sources, pieces, False, amode, None, notes)
    stream.verified = verified
    return stream


def answer(collection, question: str, **kwargs) -> Answer:
    return answer_stream(collection, question, **kwargs).result()


__all__ = ["ANSWER_MODES", "DEFAULT_ANSWER_MODE", "DEFAULT_LLM", "LLM", "Answer", "AnswerStream", "CoreLLM",
           "Source", "answer", "answer_stream", "build_messages", "extractive_answer", "get_core_llm",
           "grounded_answer", "pack_passages", "parse_citations", "retrieve"]
