"""The learned reader (rag.reader): the shipped weights load, rank the sentence that answers first, give a low
P(answerable) to an off-topic question; its synthetic training data keeps the eval documents out; the training
command runs end to end on a tiny budget. Real MiniLM embedder, no LLM."""

from __future__ import annotations

import json
import re

import pytest

from rag import get_embedder
from rag.reader import FEATURES, READER_DIR, load_reader, read
from rag.reader_data import (
    WRITTEN_QA,
    Passage,
    answer_span,
    build_corpus,
    eval_shingles,
    load_written,
    make_question,
    make_questions,
    shingles,
)

pytestmark = pytest.mark.usefixtures("one_thread")

KETTLE = ("The Zephyr ZK-2 is an electric kettle for offices and small kitchens. It boils up to 1.7 litres of water. "
          "The kettle weighs 1.2 kg when empty. The base has a cord store underneath. Descale the kettle every "
          "four weeks with citric acid if your water is hard.")
GARDEN = ("The Elm Street garden club meets on the first Saturday of every month. New members pay a small yearly "
          "fee. The club keeps its tools in the shed behind the library and lends them to members for a week.")
PASSAGES = [(1, KETTLE), (2, GARDEN)]


@pytest.fixture(scope="module")
def embedder():
    return get_embedder()


def test_shipped_reader_loads_and_is_small():
    w = load_reader()
    assert w.config["features"] == FEATURES and w.mean.shape == (len(FEATURES),)
    assert w.U.shape == w.V.shape and w.U.shape[0] == 384  # MiniLM vectors
    assert (READER_DIR / "reader.safetensors").stat().st_size < 200_000
    assert w.config["data"]["examples"] > 1000  # trained on the full synthetic set, not a test budget
    assert "rag_eval" in w.config["train"]["exclude"]  # eval documents' text was excluded


@pytest.mark.parametrize("q, want", [("How heavy is the Zephyr kettle?", "1.2 kg"),
                                     ("When does the garden club meet?", "first Saturday"),
                                     ("Where are the club's tools kept?", "shed behind the library")])
def test_reader_ranks_the_answering_sentence_first(embedder, q, want):
    p = read(q, PASSAGES, embedder)
    assert not p.abstained and p.score >= 0.5, p
    assert want in p.candidate.text and p.candidate.n == (1 if "Zephyr" in want or "kg" in want else 2)
    text = dict(PASSAGES)[p.candidate.n]
    assert " ".join(text[p.candidate.start : p.candidate.end].split()) == p.candidate.text  # offsets are true


@pytest.mark.parametrize("q", ["What is the capital of Australia?", "Who won the football World Cup in 2018?"])
def test_reader_abstains_on_off_topic_questions(embedder, q):
    p = read(q, PASSAGES, embedder)
    assert p.abstained and p.score < 0.5


def test_reader_answer_mode_quotes_cites_and_abstains(tmp_path):
    from rag import Collection, answer

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "kettle.md").write_text(KETTLE + "\n", encoding="utf-8")
    (docs / "garden.md").write_text(GARDEN + "\n", encoding="utf-8")
    col = Collection.open("r", tmp_path / "rag")
    assert not col.ingest([docs]).errors
    ans = answer(col, "Where are the club's tools kept?", answer_mode="reader")
    assert ans.answer_mode == "reader" and not ans.abstained and 0.5 <= ans.confidence <= 1.0
    (cited,) = ans.citations
    assert cited.source.endswith("garden.md") and "shed behind the library" in ans.text
    a, b = cited.highlight
    assert "shed behind the library" in cited.text[a:b]
    off = answer(col, "What is the capital of Australia?", answer_mode="reader")
    assert off.abstained and off.citations == [] and off.to_dict()["abstained"] is True


def test_reader_refuses_vectors_of_another_embedder():
    class Other:
        name = "some-other-embedder"

    with pytest.raises(ValueError, match="trained on"):
        read("How heavy is the kettle?", PASSAGES, Other())


def test_answer_spans_and_questions_follow_the_rules():
    import random

    rng = random.Random(0)
    sent = "The server waits 30 seconds before it closes an idle connection."
    spans = {answer_span(sent, random.Random(s))[0] for s in range(20)}
    assert "30 seconds" in spans
    q = make_question(sent, "30 seconds", "How long", rng)
    assert q.startswith("How long") and q.endswith("?") and "30" not in q


def test_corpus_drops_passages_that_copy_the_excluded_documents(tmp_path):
    secret = ("Licensor provides the Work on an AS IS BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either "
              "express or implied, including, without limitation, any warranties of merchantability.")
    other = ("The cache keeps the last forty entries in memory and writes them to disk every ten minutes so that a "
             "crash loses little work.")
    filler = " ".join(f"Step {j} of the tutorial explains how the cache handles entry number {j} in detail."
                      for j in range(12))  # ~170 words: a passage of its own
    for i, body in enumerate([secret, other]):
        (tmp_path / f"doc{i}.md").write_text(f"# Doc {i}\n\n{filler} File {i}.\n\n{body}\n", encoding="utf-8")
    passages, names = build_corpus(sorted(tmp_path.glob("*.md")), shingles(secret))
    assert [n.rsplit("/", 1)[-1] for n in names] == ["doc1.md"] and not any("WITHOUT WARRANTIES" in p.text for p in passages)
    kept, _ = build_corpus(sorted(tmp_path.glob("*.md")), set())
    assert any("WITHOUT WARRANTIES" in p.text for p in kept)  # it was there to drop


def test_unanswerable_share_and_topic_words():
    text = ("The Quokka parser reads 12 formats. Quokka writes its output to /var/lib/quokka/out. The parser was "
            "written by Maria Lopez in Lisbon. Quokka needs 256 MB of memory to parse large files.")
    passages = [Passage(0, text), Passage(1, GARDEN), Passage(1, KETTLE)]
    qs = make_questions(passages, 40, unanswerable_share=0.5, seed=1)
    assert len(qs) == 40 and 5 < sum(not q.answerable for q in qs) < 35
    assert all(q.q.endswith("?") and q.span not in q.q for q in qs)


def test_shipped_written_questions_are_checked_and_keep_the_eval_documents_out():
    passages, names, qs = load_written()
    assert len(qs) >= 1000 and len(passages) >= 400 and len(names) >= 50
    answerable = [q for q in qs if q.answerable]
    assert 0.6 < len(answerable) / len(qs) < 0.9  # and the rest are topical unanswerable questions
    assert all(q.span in passages[q.target].text and q.span not in q.q for q in answerable[:50])
    assert not any(q.topical for q in answerable) and all(q.topical and not q.span for q in qs if not q.answerable)
    banned = eval_shingles()
    assert banned and not any(shingles(p.text) & banned for p in passages)  # no eval document's text in them


def test_written_questions_file_is_validated(tmp_path):
    good = {"version": 1, "documents": ["kettle.md"], "passages": [{"doc": 0, "text": KETTLE}],
            "questions": [{"passage": 0, "q": "How much does it weigh?", "answer": "1.2 kg", "kind": "paraphrase"},
                          {"passage": 0, "q": "What does it cost?", "answer": None, "kind": "unanswerable"}]}
    f = tmp_path / "qa.json"
    f.write_text(json.dumps(good), encoding="utf-8")
    _, _, qs = load_written(f)
    assert [(q.answerable, q.topical, q.span) for q in qs] == [(True, False, "1.2 kg"), (False, True, "")]
    for bad, msg in [({**good, "version": 9}, "format 9"),
                     ({**good, "questions": [{"passage": 0, "q": "Colour?", "answer": "red", "kind": "lexical"}]},
                      "'red' is not in passage 0"),
                     ({**good, "questions": [{"passage": 0, "q": "What?", "answer": " ", "kind": "lexical"}]},
                      "' ' is not in passage 0"),
                     ({**good, "questions": [{"passage": -1, "q": "What?", "answer": None, "kind": "unanswerable"}]},
                      "passage -1, which does not exist"),
                     ({**good, "passages": [{"doc": 3, "text": KETTLE}]}, "document that is not in its list")]:
        f.write_text(json.dumps(bad), encoding="utf-8")
        with pytest.raises(ValueError, match=msg):
            load_written(f)
    assert WRITTEN_QA.name == "reader_questions.json"


def test_training_examples_from_written_questions(tmp_path, embedder):
    from rag.reader_train import TrainReaderArgs, build_examples

    docs = [KETTLE, GARDEN, "The Vela lamp runs for 9 hours on one charge. Its shade is made of recycled glass. "
            "A USB-C cable charges it fully in about three hours."]
    data = {"version": 1, "documents": ["kettle.md", "garden.md", "lamp.md"],
            "passages": [{"doc": i, "text": t} for i, t in enumerate(docs)],
            "questions": [{"passage": 0, "q": "How heavy is the Zephyr kettle?", "answer": "1.2 kg", "kind": "paraphrase"},
                          {"passage": 2, "q": "How long does the Vela lamp last between charges?", "answer": "9 hours",
                           "kind": "paraphrase"},
                          {"passage": 1, "q": "How much is the garden club's yearly fee?", "answer": None,
                           "kind": "unanswerable"}]}
    f = tmp_path / "qa.json"
    f.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="only without written questions"):
        build_examples(TrainReaderArgs(written=str(f), corpus=str(tmp_path)), embedder)
    from rag.reader_data import EVAL_DOCS

    leak = tmp_path / "leak.json"
    bsd = " ".join((EVAL_DOCS / "bsd-license.txt").read_text(encoding="utf-8").split())[:600]
    leak.write_text(json.dumps({**data, "passages": [*data["passages"], {"doc": 0, "text": bsd}]}), encoding="utf-8")
    with pytest.raises(ValueError, match="holds text of the excluded"):
        build_examples(TrainReaderArgs(written=str(leak), questions=0), embedder)
    examples, table, stats = build_examples(TrainReaderArgs(written=str(f), questions=0, k=2), embedder)
    assert stats["questions"] == 3 and stats["files"] == 0 and len(examples) == 3
    kettle, lamp, garden = examples
    assert [len(e.positives) for e in (kettle, lamp)] == [1, 1] and garden.positives == []
    assert table.shape[1] == 384 and garden.X.shape[0] >= 2  # the topical question keeps its own passage's sentences


@pytest.mark.slow
def test_train_reader_command_runs_on_a_tiny_budget(tmp_path):
    from rag.__main__ import main, parse_args

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    facts = [("Quokka", "parser", "12 formats", "Maria Lopez", "/var/lib/quokka"),
             ("Wombat", "scheduler", "64 jobs", "Tom Baker", "/etc/wombat/jobs.conf"),
             ("Numbat", "backup tool", "30 days", "Ada Quinn", "/srv/numbat/archive"),
             ("Bilby", "mail filter", "500 rules", "Lee Chen", "/usr/share/bilby/rules")]
    for name, kind, amount, author, path in facts:
        paras = [f"{name} is a small {kind} written by {author} for teams that want fewer moving parts. It handles "
                 f"up to {amount} without extra configuration and keeps its state in {path} by default.",
                 f"To install {name}, copy the release archive to the server and run the setup script. The script "
                 f"checks the Python version, creates a service user and starts the {kind} within 5 seconds.",
                 f"{name} logs every action to the system journal. Old log entries are removed after 14 days, and "
                 f"the retention can be changed with the --keep-days option of the {kind}."]
        (corpus / f"{name.lower()}.md").write_text("\n\n".join(paras * 3) + "\n", encoding="utf-8")
    out = tmp_path / "reader"
    rc = main(parse_args(["train-reader", "--written", "none", "--corpus", str(corpus), "--out", str(out),
                          "--max-passages", "12",
                          "--questions", "60", "--epochs", "3", "--threads", "1", "--json"]))
    assert rc == 0
    w = load_reader(out)
    cfg = json.loads((out / "reader.json").read_text())
    assert cfg["data"]["examples"] >= 10 and set(cfg["metrics"]) >= {"val_top1", "val_abstain_unanswerable"}
    assert not re.search(r"/tmp|/home|/work", json.dumps(cfg["train"]))  # no machine paths in the shipped JSON
    p = read("How long are old log entries kept?", [(1, (corpus / "quokka.md").read_text())], get_embedder(),
             reader=w)
    assert p.candidate is not None and 0.0 <= p.score <= 1.0
