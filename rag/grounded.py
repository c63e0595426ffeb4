"""Grounded answers: the one sentence of the retrieved passages that best answers the question, quoted and cited.

Why extractive-first: a 135M model cannot write free-form answers from passages (bench/rag_answers.py: it rarely
contains the answer and never cites), but the passages already hold the answer word for word. So the default
answer is a quote of the best-supported sentence, cited to exactly the passage it comes from, or an honest
"not found" when the best candidate is too weak (thresholds calibrated on the eval set's dev split).

Candidates are sentences (short heading/label fragments are glued to the text that follows them, so an option
name and its description stay together). Scores: the topic-free cosine between question and candidate (the
collection's own embedder, see `topic_free_cosine`), IDF-weighted share of the question's terms the candidate
contains, a bonus when the question asks for a number and the candidate has one, and a penalty for candidates that
add nothing beyond the question's words. Besides the score threshold, a pick is declined when it lacks the kind of
answer the question insists on (`lacks_asked_kind`: a price, a colour, a year, a count, a quantity, an address).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .bm25 import analyze
from .chunking import split_sentences
from .embed import single_thread

MIN_WORDS = 5  # fragments shorter than this (headings, option names, list labels) join the next fragment
MAX_CHARS = 600  # longer candidates are cut at clause boundaries
# weights and the abstain threshold were picked on the dev split of tests/fixtures/rag_eval (grid search; the
# test split is reported separately by bench/rag_answers.py)
W_COS, W_LEX, W_TYPE, W_PASSAGE, P_NOTHING_NEW = 1.5, 1.0, 0.3, 1.0, 0.4
P_HEADING = 0.5  # a heading names a topic, it rarely answers a question about it (unless it has the kind asked)
# session 9: W_COS weighs the topic-free cosine; the threshold was set again on all 191 questions of the seven
# splits then (1.4 with the plain cosine)
ABSTAIN_BELOW = 1.25
WINDOW_CHARS = 400  # the answer: the best sentence, its passage's near-best ones and the next one, under this length
EXCERPT_MARGIN = 0.3  # "near-best": within this much of the best score
_CACHE_MAX = 20_000
_VEC_CACHE: dict[tuple[str, str], np.ndarray] = {}
_NUMBER_Q = re.compile(r"\b(how (many|much|long|far|heavy|often|old|big|fast|high|large|wide)|what (year|date|time|"
                       r"percentage|share|temperature|speed|status|exit status|number|size|uid|gid|port|version)|"
                       r"which (year|uid|gid|version|number|port)|when)\b", re.I)
_HAS_NUMBER = re.compile(r"\d")
_NAME = re.compile(r"\b[A-Z][a-z]+(?: [A-Z][a-z]+)+")  # "Padraig Brady", "Linus Tech Tips"
_WHO_Q = re.compile(r"^\W*who\b", re.I)
# Questions whose answer must be of a kind a sentence either has or lacks: a price, a colour. When the best sentence
# lacks it, the documents do not answer ("How much does the PS-305 cost?" over a manual without prices).
STRICT_TYPES = {
    "price": (re.compile(r"\b(cost|costs|price|priced|how much (do|does|did|will|would) .*\b(pay|charge))\b", re.I),
              re.compile(r"[$\u20ac\u00a3\u00a5]|\b(eur|usd|gbp|dollars?|euros?|pounds?|cents?|prices?|free of charge)\b",
                         re.I)),
    "colour": (re.compile(r"\b(colou?rs?)\b", re.I),
               re.compile(r"\b(red|green|blue|yellow|orange|purple|violet|black|white|gr[ae]y|silver|brown|pink|"
                          r"beige|colou?red)\b", re.I)),
    # a year ("In what year was Heron Instruments founded?" is not answered by "Harbour Road 4")
    "year": (re.compile(r"\b(what|which) year\b|\bwhen was\b.*\b(founded|established|born|created|formed|"
                        r"started|released|published)\b", re.I),
             re.compile(r"\b(1[0-9]|20)\d\d\b")),
    # a count or an id ("What uid does www-data have?" is not answered by a sentence without a number)
    "count": (re.compile(r"\bhow many\b|\b(what|which) (uid|gid|port|number)\b", re.I),
              re.compile(r"\d|\b(one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|"
                         r"forty|fifty|hundred|thousand|million|dozen|single|both|none)\b", re.I)),
}


# Softer answer types: a sentence of the kind scores W_TYPE more (classic QA answer-type matching).
SOFT_TYPES = {
    "permission": (re.compile(r"^\W*(can|may|must|am|is|are|do|does)\b.*\b(i|we|you|one|allowed|permitted)\b", re.I),
                   re.compile(r"\b(may|must|shall|not|permission|allowed|permitted|grants?|prohibited|free to|"
                              r"required|without)\b", re.I)),
    "time": (re.compile(r"^\W*(when|by when|until when)\b|\b(what|which) (day|time|date|deadline)\b", re.I),
             re.compile(r"\b(monday|tuesday|wednesday|thursday|friday|saturday|sunday|january|february|march|"
                        r"april|may|june|july|august|september|october|november|december|today|tomorrow|"
                        r"\d{1,2}:\d{2}|\d{4}|daily|weekly|monthly|hours?|days?|weeks?|months?|years?)\b", re.I)),
    "weight": (re.compile(r"\b(how heavy|weigh|weight)\b", re.I),
               re.compile(r"\d\s*(kg|g|lb|lbs|grams?|kilograms?|pounds?)\b", re.I)),
    "reason": (re.compile(r"^\W*why\b", re.I), re.compile(r"\b(because|so that|so they|in order to|since|due to|"
                                                          r"so as to)\b", re.I)),
}


_SMALL_WORDS = {"a", "an", "and", "as", "at", "by", "for", "from", "in", "of", "on", "or", "the", "to", "with"}
_NUMBERED_TITLE = re.compile(r"^\(?\d+(\.\d+)*[.)]?\s+[A-Z]")  # "8 Memory presets.", "2. Grant of Copyright License."


def is_heading(fragment: str) -> bool:
    """True for a title or section heading ("# Lab note: ...", "8 Memory presets.", "TERMS AND CONDITIONS",
    "Apache License Version 2.0"), told by typography alone: a markdown '#', a section number before a few words,
    all capitals, or title case without a sentence's final stop. Headings match every question about their topic
    (the bench's most common wrong pick was a document or section title), but rarely hold the answer."""
    s = fragment.strip()
    words = s.split()
    if not words:
        return False
    if s.startswith("#"):
        return True
    if len(words) > 10 or re.search(r":\s", s):  # a sentence, or a "label: value" line ("Weight: 2.4 kg.")
        return False
    if _NUMBERED_TITLE.match(s) and len(words) <= 6:
        return True
    alpha = [w for w in words if w[0].isalpha() and w.lower() not in _SMALL_WORDS]
    if not alpha:
        return False
    if all(not any(ch.islower() for ch in w) for w in alpha) and any(len(w) > 1 for w in alpha):
        return True  # NAME, SYNOPSIS, TERMS AND CONDITIONS FOR USE
    titled = sum(w[0].isupper() for w in alpha) / len(alpha) >= 0.75
    return titled and not s.endswith((".", "!", "?", ";", ","))


# "How many X": the answer counts X, so a sentence that never names X (or its unit symbol) does not answer it
# ("How many watts does it draw in standby?" over a manual that gives no power draw).
_COUNTED = re.compile(r"\bhow many ([a-z][a-z-]+)", re.I)
_UNIT_SYMBOLS = {"watt": r"\d\s*[kmM]?W\b", "volt": r"\d\s*[mk]?V\b", "amp": r"\d\s*m?A\b", "ampere": r"\d\s*m?A\b",
                 "ohm": r"\d\s*[kM]?(\u03a9|ohms?)\b", "hertz": r"\d\s*[kMG]?Hz\b", "byte": r"\d\s*[kMGT]i?B\b"}
# Names in a question: capitalised words after the first ("Which Python version ...", "PostgreSQL"). All-capital
# acronyms are left out: documents often spell them otherwise ("BSD" licence text that never says "BSD").
_NAME_WORD = re.compile(r"^[A-Z][a-z]+[A-Za-z]*$")


def counted_missing(question: str, text: str) -> bool:
    """True when `question` asks "how many X" and `text` names neither X nor, for a unit, its symbol."""
    m = _COUNTED.search(question)
    if not m:
        return False
    noun = analyze(m.group(1))
    if not noun or noun[0] in set(analyze(text)):
        return False
    unit = _UNIT_SYMBOLS.get(noun[0].rstrip("s"))
    return not (unit and re.search(unit, text))


# Session 10: what a "what/which <attribute>" question asks for is told by the head noun of its wh-phrase ("What is
# the maximum output [current] of ...", "What are Ingrid Novak's office [hours]?"). A measurable attribute is answered
# by a number, and by a sentence that names the attribute or gives a measurement with a unit ("0 to 40 degrees" for
# "temperature range"); a related sentence without either ("The PS-305 is a class I instrument ...") does not.
QUANTITY_HEADS = frozenset("""number value voltage current temperature weight mass length width height depth size
    dimension capacity frequency rate speed impedance resistance coefficient regulation ripple efficiency percentage
    price cost fee duration hour distance threshold range limit accuracy resolution consumption humidity pressure age
    uid gid port""".split())
_WH_START = re.compile(r"^\W*(?:(?:in|on|at|for|from|to|with|by|of|after|before|since|until) )?(what|which)\s+"
                       r"(?:(?:is|are|was|were)\s+)?(?:(?:the|a|an)\s+)?", re.I)
_PHRASE_END = frozenset("the a an of for does do did is are was were can could in on at that will would must should "
                        "has have to from by with and or".split())
_NUMBERISH = STRICT_TYPES["count"][1]  # a digit or a number word
_MEASUREMENT = re.compile(
    r"\d\s*(%|\u00b0|\u2126|\u03a9|(?-i:(k|m|M|G|u|\u00b5)?(V|A|W|Hz|Wh|Ah|B|iB|bit|bps)\b|(mm|cm|km|m|kg|g|mg|lb|lbs|s|"
    r"ms|us|ns|h|min)\b)|(volts?|amps?|amperes?|watts?|ohms?|hertz|degrees?|celsius|fahrenheit|kelvin|percent|grams?|"
    r"kilograms?|pounds?|met(er|re)s?|millimet(er|re)s?|centimet(er|re)s?|inch(es)?|feet|foot|seconds?|minutes?|"
    r"hours?|days?|weeks?|months?|years?|baud|bits?|bytes?|[kmgt]ilobytes?|megabytes?|gigabytes?|dollars?|euros?|"
    r"cents?)\b)", re.I)
# contact details have a form of their own: an e-mail address has an '@', a web address a scheme or "www."
_FORMS = {"email": re.compile(r"\S@\S|\bmailto:", re.I), "url": re.compile(r"\bhttps?://|\bwww\.", re.I)}


def asked_attribute(question: str) -> list[str]:
    """The wh-phrase of a "what/which X ..." question, lowercased, up to the first function word or punctuation:
    "What is the maximum output current of the PS-305?" -> ["maximum", "output", "current"]; [] for other questions.
    Its last word is the head: the attribute asked for."""
    m = _WH_START.match(question)
    if not m:
        return []
    words: list[str] = []
    for raw in question[m.end():].split():
        w = re.sub(r"'s$", "", raw.strip("?!.,;:\"'()").lower())
        if not w or w in _PHRASE_END:
            break
        words.append(w)
        if raw.endswith((",", "?", ";", ":")):
            break
    return words


def asked_form_missing(question: str, quote: str) -> bool:
    """True when the question's wh-phrase asks for a quantity (its head is a measurable attribute, or it says
    "numeric"), an e-mail or a web address, and the quote cannot be that answer: a quantity needs a number, and the
    attribute's name or a number with a unit; an address needs its form. Veto only, no score bonus: a bonus for
    numbers lifted wrong sentences that merely hold digits (session 9)."""
    words = asked_attribute(question)
    if not words:
        return False
    head = words[-1]
    if head in ("address", "addresses") and any(w in ("email", "e-mail", "mail") for w in words):
        return not _FORMS["email"].search(quote)
    if head in ("website", "url", "homepage") or words[-2:] == ["web", "site"]:
        return not _FORMS["url"].search(quote)
    if not (head in QUANTITY_HEADS or head.rstrip("s") in QUANTITY_HEADS or "numeric" in words):
        return False
    if not _NUMBERISH.search(quote):
        return True
    return not (set(analyze(head)) & set(analyze(quote))) and not _MEASUREMENT.search(quote)


def lacks_asked_kind(question: str, quote: str) -> bool:
    """True when the question insists on a kind of answer (a price, a colour, a year, a count of X, a quantity, an
    address) that the quote does not have: then the documents do not answer it, however well the quote matches."""
    kind = strict_type(question)
    return ((kind is not None and not STRICT_TYPES[kind][1].search(quote)) or counted_missing(question, quote)
            or asked_form_missing(question, quote))


def question_names(question: str) -> list[str]:
    """Capitalised words of a question other than its first word: the names of things it is about."""
    words = [w.strip("?!.,;:\"'()") for w in question.split()[1:]]
    return [w for w in words if _NAME_WORD.match(w)]


# Model numbers, versions and codes: a word with both letters and digits ("PS-310", "v2.3", "E03", "RFC1234")
_IDENTIFIER = re.compile(r"(?<![\w.-])(?=[\w.+-]*\d)(?=[\w.+-]*[A-Za-z])[A-Za-z0-9][\w.+-]*[A-Za-z0-9]")


def question_identifiers(question: str) -> dict[str, list[str]]:
    """Identifiers in a question (words mixing letters and digits: "PS-310", "v2.3", "E03"), each with its
    digit-bearing index terms ("PS-310" -> ["310"], "v2.3" -> ["v2"]): the part that tells one model or version
    from its siblings, which a document about the thing must contain."""
    out: dict[str, list[str]] = {}
    for ident in _IDENTIFIER.findall(question):
        terms = [t for t in analyze(ident) if any(ch.isdigit() for ch in t)]
        if terms:
            out[ident] = terms
    return out


def _asked(types: dict, question: str) -> str | None:
    return next((name for name, (asks, _) in types.items() if asks.search(question)), None)


def soft_type(question: str) -> str | None:
    """The kind of answer the question leans to (a key of SOFT_TYPES), if any."""
    return _asked(SOFT_TYPES, question)


def strict_type(question: str) -> str | None:
    """The kind of answer the question insists on (a key of STRICT_TYPES), if any."""
    return _asked(STRICT_TYPES, question)


@dataclass
class Candidate:
    """A sentence (or glued fragment run) of passage `n`, at [start, end) of that passage's text."""

    n: int
    start: int
    end: int
    text: str
    heading: bool = False


@dataclass
class Pick:
    """The grounded answer: the chosen candidate, its score parts, and whether the evidence was too weak."""

    candidate: Candidate | None
    score: float
    cos: float
    lex: float
    abstained: bool


def candidates(n: int, text: str, min_words: int = MIN_WORDS, max_chars: int = MAX_CHARS) -> list[Candidate]:
    """Sentence candidates of one passage; a short fragment is merged with the fragment after it ("--foreground"
    with its description), unless either is a heading: a heading stays a candidate of its own, marked, so that its
    topic words do not lift the sentence after it."""
    spans = split_sentences(text)
    heads = [is_heading(text[a:b]) for a, b in spans]
    out: list[Candidate] = []
    i = 0
    while i < len(spans):
        a, b = spans[i]
        heading = heads[i]
        while (not heading and len(text[a:b].split()) < min_words and i + 1 < len(spans)
               and not heads[i + 1]):
            i += 1
            b = spans[i][1]
        i += 1
        for s, e in _cut_long(text, a, b, max_chars):
            out.append(Candidate(n, s, e, " ".join(text[s:e].split()), heading))
    return out


def _cut_long(text: str, a: int, b: int, max_chars: int) -> list[tuple[int, int]]:
    """Split [a, b) at '; ' / ': ' / line ends so that no piece is much over max_chars (lists, run-on clauses)."""
    if b - a <= max_chars:
        return [(a, b)]
    cuts = [m.end() for m in re.finditer(r"[;:]\s+|\n", text[a:b])]
    pieces, start = [], a
    for c in cuts:
        if a + c - start >= max_chars // 2:
            pieces.append((start, a + c))
            start = a + c
    pieces.append((start, b))
    return [(s, e) for s, e in pieces if text[s:e].strip()]


def lexical_coverage(question: str, texts: list[str], idf: dict[str, float] | None = None) -> np.ndarray:
    """Share of the question's IDF mass each text contains, in [0, 1]. IDF defaults to one over `texts`."""
    qterms = set(analyze(question))
    sets = [set(analyze(t)) for t in texts]
    if not qterms or not texts:
        return np.zeros(len(texts))
    if idf is None:
        idf = {t: float(np.log((len(sets) + 1) / (sum(t in s for s in sets) + 0.5))) for t in qterms}
    w = {t: max(idf.get(t, 1.0), 0.05) for t in qterms}
    total = sum(w.values())
    return np.array([sum(w[t] for t in qterms & s) / total for s in sets])


# "How heavy is it?" is answered by "Weight: 2.4 kg", which shares no word with it: after "how", an adjective of
# measure stands for the nouns that name its attribute, so a sentence with such a noun counts as holding the adjective
# (lexical coverage only; the cosine sees the words as written).
ATTRIBUTE_NOUNS = {"heavy": ("weight", "weigh", "mass"), "deep": ("depth", "dimension"), "wide": ("width", "dimension"),
                   "tall": ("height", "dimension"), "high": ("height", "dimension"),
                   "long": ("length", "dimension", "duration"), "big": ("size", "dimension"),
                   "large": ("size", "dimension"), "fast": ("speed", "rate"), "far": ("distance", "range"),
                   "hot": ("temperature",), "old": ("age",)}
_HOW_ADJ = re.compile(r"\bhow (" + "|".join(ATTRIBUTE_NOUNS) + r")\b", re.I)


def with_attribute_words(question: str, texts: list[str]) -> list[str]:
    """`texts`, each followed by the question's "how <adjective>" adjectives whose attribute noun it names
    ("Weight: 2.4 kg." -> "Weight: 2.4 kg. heavy" for "How heavy is it?"); unchanged for other questions."""
    adjectives = {m.lower() for m in _HOW_ADJ.findall(question)}
    if not adjectives:
        return texts
    out = []
    for t in texts:
        terms = set(analyze(t))
        extra = sorted(a for a in adjectives if terms & set(ATTRIBUTE_NOUNS[a]))
        out.append(" ".join([t, *extra]))
    return out


def asks_for_number(question: str) -> bool:
    return bool(_NUMBER_Q.search(question))


def topic_free_cosine(cand_vecs: np.ndarray, qvec: np.ndarray, passage_vecs: np.ndarray) -> np.ndarray:
    """Cosine between question and candidates after removing, from both, their component along the retrieved
    passages' mean direction: the topic every candidate shares with the question ("the Apache License", "the
    PS-305").
    Why: with the plain cosine, a boilerplate sentence that only names the topic ("Licensed under the Apache
    License, Version 2.0 ...") outscored the sentence that answers, and an unanswerable question about the topic
    ("What is the phone number of Heron customer service?") found a confident match. What is left after the
    topic is what the question asks about (bench/rag_answers.py: more right picks, and more honest abstentions,
    on every split)."""
    topic = _unit(passage_vecs.mean(axis=0))  # (d,)
    c = _unit(cand_vecs - np.outer(cand_vecs @ topic, topic))  # (C, d)
    q = _unit(qvec - (qvec @ topic) * topic)  # (d,)
    return c @ q  # (C,)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


def score_candidates(question: str, cands: list[Candidate], cand_vecs: np.ndarray, qvec: np.ndarray,
                     passage_cos: dict[int, float], passage_vecs: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(score, cosine, lexical) per candidate; see the module docstring for the parts. The cosine is
    `topic_free_cosine` against the retrieved passages' vectors `passage_vecs` (P, d)."""
    cos = topic_free_cosine(cand_vecs, qvec, passage_vecs)  # (C,)
    lex = lexical_coverage(question, with_attribute_words(question, [c.text for c in cands]))
    qterms = set(analyze(question))
    nothing_new = np.array([not (set(analyze(c.text)) - qterms) for c in cands], dtype=float)
    typed = np.zeros(len(cands))
    if kind := strict_type(question) or soft_type(question):
        wants = (STRICT_TYPES.get(kind) or SOFT_TYPES[kind])[1]
        typed = np.array([bool(wants.search(c.text)) for c in cands], dtype=float)
    elif asks_for_number(question):
        typed = np.array([bool(_HAS_NUMBER.search(_strip_question_numbers(c.text, question))) for c in cands],
                         dtype=float)
    elif _WHO_Q.search(question):  # a "who" question wants a name the question does not already hold
        typed = np.array([any(m not in question for m in _NAME.findall(c.text)) for c in cands], dtype=float)
    pas = np.array([passage_cos.get(c.n, 0.0) for c in cands])
    heading = np.array([c.heading for c in cands], dtype=float)
    if strict_type(question):
        heading *= 1 - typed  # a title line may hold exactly what is asked: "Version 2.0, January 2004"
    score = (W_COS * cos + W_LEX * lex + W_TYPE * typed + W_PASSAGE * pas - P_NOTHING_NEW * nothing_new
             - P_HEADING * heading)
    score += np.array([0.01 / c.n for c in cands])  # ties go to the retriever's better-ranked passage
    return score, cos, lex


def _strip_question_numbers(text: str, question: str) -> str:
    """Numbers the question itself mentions (e.g. 'PS-305') are no evidence of an answer."""
    for num in set(re.findall(r"\d+(?:\.\d+)?", question)):
        text = re.sub(rf"(?<![\d.]){re.escape(num)}(?![\d.])", " ", text)
    return text


def encode_cached(embedder, texts: list[str]) -> np.ndarray:
    """(N, d) unit vectors, single-threaded (a few dozen sentences: intra-op threads only add waiting on a busy
    CPU) and cached per process, since the same passages come back for related questions."""
    name = getattr(embedder, "name", "")
    todo = list(dict.fromkeys(t for t in texts if (name, t) not in _VEC_CACHE))
    if todo:
        with single_thread():
            vecs = embedder.encode(todo)
        if len(_VEC_CACHE) + len(todo) > _CACHE_MAX:
            _VEC_CACHE.clear()
        _VEC_CACHE.update({(name, t): v for t, v in zip(todo, vecs)})
    return np.stack([_VEC_CACHE[(name, t)] for t in texts]) if texts else np.zeros((0, 1), dtype=np.float32)


def embedded_candidates(question: str, passages: list[tuple[int, str]], embedder, qvec: np.ndarray | None = None,
                        passage_vecs: np.ndarray | None = None
                        ) -> tuple[list[Candidate], np.ndarray, np.ndarray, dict[int, float]] | None:
    """The candidate sentences of numbered passages [(n, text)] with what every scorer reads: their vectors
    (C, d), the question's vector and each passage's cosine to it; None when no passage has a sentence."""
    cands = [c for n, text in passages for c in candidates(n, text) if len(c.text) >= 12]
    if not cands:
        return None
    qvec = embedder.encode_query(question) if qvec is None else qvec
    if passage_vecs is None:
        passage_vecs = encode_cached(embedder, [t for _, t in passages])
    passage_cos = {n: float(v @ qvec) for (n, _), v in zip(passages, passage_vecs)}
    return cands, encode_cached(embedder, [c.text for c in cands]), qvec, passage_cos


def pick(question: str, passages: list[tuple[int, str]], embedder, qvec: np.ndarray | None = None,
         passage_vecs: np.ndarray | None = None, abstain_below: float = ABSTAIN_BELOW) -> Pick:
    """Best candidate over numbered passages [(n, text)]; abstains when its score is under `abstain_below`.
    `passage_vecs` (the stored chunk embeddings) spare encoding the passages again."""
    pooled = embedded_candidates(question, passages, embedder, qvec, passage_vecs)
    if pooled is None:
        return Pick(None, 0.0, 0.0, 0.0, True)
    cands, vecs, qvec, passage_cos = pooled
    if passage_vecs is None:
        passage_vecs = encode_cached(embedder, [t for _, t in passages])  # (P, d), cached by embedded_candidates
    score, cos, lex = score_candidates(question, cands, vecs, qvec, passage_cos, passage_vecs)
    i = int(np.argmax(score))
    best, quote = float(score[i]), excerpt(cands, score, i)
    return Pick(quote, best, float(cos[i]), float(lex[i]), best < abstain_below or lacks_asked_kind(question, quote.text))


def excerpt(cands: list[Candidate], score: np.ndarray, i: int, margin: float = EXCERPT_MARGIN,
            max_chars: int = WINDOW_CHARS) -> Candidate:
    """The best sentence, grown to a contiguous stretch of its passage: back to where it starts when it continues
    a fragment before it (a lowercase start: "allow COMMAND to read from the TTY" after "--foreground"), over
    that passage's other near-best sentences (score within `margin`), then the sentence after it, while under
    `max_chars`.
    Why: the scores of a passage's sentences are often within a hair of each other ("124 if COMMAND times out"
    vs "127 if COMMAND cannot be found"), and the answer often follows a sentence that names the topic
    ("10 Remote control. ... Use 115200 baud"); one short quoted stretch with one citation covers both."""
    c = cands[i]
    idx = [j for j, d in enumerate(cands) if d.n == c.n]  # this passage's candidates, in text order
    near = sorted((j for j in idx if j != i and score[j] >= score[i] - margin), key=lambda j: -score[j])

    def sentence_start(a: int, b: int) -> int:  # a continuation: back to where its sentence starts
        while cands[a].text[:1].islower() and a - 1 in idx and cands[b].end - cands[a - 1].start <= max_chars:
            a -= 1
        return a

    lo, hi = sentence_start(i, i), i
    for j in near:
        b = max(hi, j)
        a = sentence_start(min(lo, j), b)
        if cands[b].end - cands[a].start <= max_chars:
            lo, hi = a, b
    if hi + 1 in idx and cands[hi + 1].end - cands[lo].start <= max_chars:
        hi += 1
    if lo == hi:
        return c
    return Candidate(c.n, cands[lo].start, cands[hi].end, " ".join(d.text for d in cands[lo : hi + 1]))
