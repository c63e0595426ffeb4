"""Grounded answers (the default mode) on the project's eval documents: right sentence, true citation, honest
abstention; per-document diversity; bad questions. Real embedder, no LLM."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from rag import Collection, answer, diversify
from rag.answer import unmentioned
from rag.grounded import (
    asked_attribute,
    asked_form_missing,
    candidates,
    counted_missing,
    excerpt,
    is_heading,
    lexical_coverage,
    question_identifiers,
    question_names,
    soft_type,
    strict_type,
    topic_free_cosine,
    with_attribute_words,
)
from rag.retrieve import SearchResult
from tests.conftest import ROOT

EVAL = ROOT / "tests" / "fixtures" / "rag_eval"


def has_word(text: str, needle: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(needle.lower()) + r"(?!\w)", " ".join(text.split()).lower()) is not None


@pytest.fixture(scope="module")
def col(tmp_path_factory):
    c = Collection.open("eval", tmp_path_factory.mktemp("eval") / "rag")
    report = c.ingest([EVAL / "docs"])
    assert not report.errors and len(report.added) == 7
    return c


def question(qid: int) -> dict:
    rows = [json.loads(line) for line in (EVAL / "questions.jsonl").read_text().splitlines() if line.strip()]
    return next(r for r in rows if r["id"] == qid)


@pytest.mark.parametrize("qid", [12, 28, 40, 48])  # timeout exit status, www-data, baud rate (PDF), the short note
def test_grounded_answer_is_right_and_cites_the_passage_that_holds_it(col, qid):
    q = question(qid)
    ans = answer(col, q["q"])
    assert ans.answer_mode == "grounded" and not ans.abstained
    assert has_word(ans.text, q["answer"]), ans.text
    (cited,) = ans.citations  # exactly one citation ...
    assert Path(cited.source).name == q["doc"] and has_word(cited.text, q["answer"])  # ... to the right passage
    a, b = cited.highlight
    assert has_word(cited.text[a:b], q["answer"])  # the highlighted sentence is the one that answers
    assert ans.text.endswith(f"[{cited.n}]") and " ".join(cited.text[a:b].split()) in ans.text
    assert ans.to_dict()["abstained"] is False


@pytest.mark.parametrize("q", ["What is the capital of Australia?", "¿Cuál es la receta de la paella valenciana?",
                               "How do I bake sourdough bread?"])
def test_abstains_when_no_document_answers(col, q):
    ans = answer(col, q)
    assert ans.abstained and ans.citations == [] and "could not find" in ans.text
    assert ans.sources  # the closest passages are still shown, for the user to check
    assert ans.to_dict()["abstained"] is True


def test_short_note_is_not_crowded_out_by_a_long_manual(col):
    q = "Where is the spare power supply kept?"
    ans = answer(col, q, k=3)
    assert any(s.source.endswith("lab-note.md") for s in ans.sources)
    assert "cabinet B4" in ans.text and ans.citations[0].source.endswith("lab-note.md")


def _res(i: int, doc: str) -> SearchResult:
    return SearchResult(i, doc, f"{doc}.txt", None, 0, 1, f"text {i}", 1.0 / i, i, "hybrid")


def test_diversify_adds_other_documents_after_a_crowded_top_k():
    top = [_res(i, "manual") for i in range(1, 6)]
    pool = top + [_res(6, "manual"), _res(7, "note"), _res(8, "manual"), _res(9, "memo"), _res(10, "faq")]
    out = diversify(top, pool, max_per_doc=2, extra=2)
    assert [r.chunk_id for r in out] == [1, 2, 3, 4, 5, 7, 9]  # the top 5 stay; the next two documents join
    assert [r.rank for r in out] == list(range(1, 8))
    mixed = [_res(1, "a"), _res(2, "b"), _res(3, "a")]
    assert [r.chunk_id for r in diversify(mixed, mixed + [_res(4, "c")], max_per_doc=2)] == [1, 2, 3]
    with pytest.raises(ValueError):
        diversify(top, pool, max_per_doc=0)


def test_candidates_glue_labels_to_their_text_and_the_excerpt_adds_the_next_sentence():
    text = "-k, --kill-after=DURATION\n\nalso send a KILL signal if COMMAND is still running. It is rare."
    cands = candidates(1, text)
    assert cands[0].text.startswith("-k, --kill-after=DURATION also send a KILL signal")
    w = excerpt(cands, np.array([1.0, 0.0]), 0)
    assert w.text.endswith("It is rare.") and text[w.start : w.end].endswith("It is rare.")


def test_excerpt_spans_the_near_best_sentences_of_one_passage_only():
    text = ("Exit status: 124 if it times out. 125 if timeout itself fails. 126 if it cannot be run. "
            "127 if it cannot be found. 137 if it is killed.")
    cands = candidates(1, text, min_words=3) + candidates(2, "Another passage says 127 if it is lost.", 3)
    assert len(cands) == 6
    score = np.array([2.0, 1.5, 1.0, 1.9, 0.5, 1.95])
    e = excerpt(cands, score, 0, margin=0.3, max_chars=400)
    # 124 (best) ... 127 (within the margin), then the sentence after; never the other passage's sentence
    assert e.n == 1 and e.text.startswith("Exit status: 124") and e.text.endswith("137 if it is killed.")
    assert text[e.start : e.end] == e.text
    tight = excerpt(cands, score, 0, margin=0.3, max_chars=70)  # too far apart for the length cap
    assert tight.text == "Exit status: 124 if it times out. 125 if timeout itself fails."
    assert excerpt(cands, score, 0, margin=0.0, max_chars=10).text == cands[0].text


def test_excerpt_goes_back_to_where_a_continued_sentence_starts():
    text = ("--foreground\n\nwhen not running timeout directly from a shell prompt,\n\nallow COMMAND to read from "
            "the TTY.\n\n-k, --kill-after=DURATION\n\nalso send a KILL signal if COMMAND is still running.")
    cands = candidates(1, text)
    assert [c.text[:12] for c in cands] == ["--foreground", "allow COMMAN", "-k, --kill-a"]
    e = excerpt(cands, np.array([0.0, 2.0, 0.0]), 1, margin=0.0, max_chars=140)
    assert e.text.startswith("--foreground when not running") and "read from the TTY." in e.text
    assert excerpt(cands, np.array([0.0, 2.0, 0.0]), 1, margin=0.0, max_chars=40).text.startswith("allow")


@pytest.mark.parametrize(("text", "heading"), [
    ("# Lab note: borrowing the spare bench supply", True), ("8 Memory presets.", True),
    ("2. Grant of Copyright License.", True), ("TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION", True),
    ("Apache License Version 2.0, January 2004 http://www.apache.org/licenses/", True),
    ("Users and Groups in the Debian System", True), ("Written by Padraig Brady.", False),
    ("Copyright (c) The Regents of the University of California.", False), ("Weight: 2.4 kg.", False),
    ("127 if COMMAND cannot be found", False), ("--foreground", False), ("", False),
    ("Use 115200 baud, 8 data bits, no parity and one stop bit.", False)])
def test_headings_are_told_by_typography(text, heading):
    assert is_heading(text) is heading


def test_a_heading_is_not_glued_to_the_sentence_after_it_and_scores_lower(col):
    text = "10 Remote control. Over USB the PS-305 appears as a virtual serial port. Use 115200 baud."
    cands = candidates(1, text)
    assert [c.heading for c in cands] == [True, False, False]
    assert cands[1].text.startswith("Over USB")  # not "10 Remote control. Over USB ..."
    # the manual's own section title never wins over the sentence holding the answer
    ans = answer(col, "What baud rate does the PS-305 use for remote control?")
    assert not ans.abstained and "115200" in ans.text


@pytest.mark.parametrize(("q", "text", "missing"), [
    ("How many watts does it draw in standby?", "It weighs 2.4 kg and stores 3 presets.", True),
    ("How many watts does it draw in standby?", "In standby it draws 4 W from the mains.", False),
    ("How many presets can it remember?", "The PS-305 stores three presets.", False),
    ("How many employees does the foundation have?", "The Foundation was founded in 1999.", True),
    ("How much current can it deliver?", "Output: 0-5 A.", False)])  # only "how many X" names what is counted
def test_a_count_question_needs_a_sentence_that_names_what_it_counts(q, text, missing):
    assert counted_missing(q, text) is missing


def test_a_name_no_document_mentions_asks_for_stronger_evidence_and_is_named(col):
    assert question_names("Which Python version does timeout need?") == ["Python"]
    assert question_names("Who holds the copyright in the BSD license?") == []  # acronyms are spelt many ways
    ans = answer(col, "Which Kubernetes version does the PS-305 support?")
    assert ans.abstained and ans.citations == [] and ans.sources
    assert any("never mention Kubernetes" in n for n in ans.notes)
    assert unmentioned(col, "Does the Heron supply work with Kubernetes or Kotlin?") == ["Kubernetes", "Kotlin"]


@pytest.mark.parametrize(("q", "kind"), [("Am I allowed to use the brand names?", "permission"),
                                         ("Can we charge a fee for support?", "permission"),
                                         ("By when must it be returned?", "time"),
                                         ("How heavy is the supply?", "weight"),
                                         ("Why are games setgid?", "reason"),
                                         ("Which lamp shows constant current?", None)])
def test_soft_answer_types(q, kind):
    assert soft_type(q) == kind


@pytest.mark.parametrize(("q", "kind"), [("How much does the PS-305 cost?", "price"),
                                         ("What is the price of a spare fuse?", "price"),
                                         ("What colour is the front panel?", "colour"),
                                         ("How much current can it deliver?", None),
                                         ("Which lamp shows constant current?", None), ("", None),
                                         ("In what year was Heron Instruments founded?", "year"),
                                         ("When was version 2.0 released?", "year"),
                                         ("What uid does the www-data user have?", "count"),
                                         ("How many presets can it store?", "count"),
                                         ("How long is the warranty?", None), ("When must it be back?", None)])
def test_strict_answer_types(q, kind):
    assert strict_type(q) == kind


@pytest.mark.parametrize("q", [question(52)["q"], question(60)["q"],  # the manual has no price, no panel colour
                               "In what year was the Heron company founded?",  # its address has a 4, not a year
                               "What uid does the www-data user have?"])  # the page describes www-data, no number
def test_abstains_when_the_question_wants_a_kind_of_answer_no_passage_has(col, q):
    ans = answer(col, q)
    assert ans.abstained and ans.citations == [] and ans.sources


def test_topic_free_cosine_ranks_what_is_asked_above_what_only_names_the_topic():
    topic, asked, other = np.eye(3, dtype=np.float32)  # unit directions: the documents' topic, the thing asked
    q = 0.9 * topic + 0.44 * asked  # "Which court has jurisdiction over the Apache License?"
    cands = np.stack([topic, 0.5 * topic + 0.866 * asked, 0.8 * topic + 0.6 * other])  # boilerplate, answer, off-topic
    passages = np.stack([topic, 0.9 * topic + 0.44 * other])
    plain = cands @ (q / np.linalg.norm(q))
    assert np.argmax(plain) == 0  # the plain cosine prefers the sentence that only names the topic
    free = topic_free_cosine(cands, q / np.linalg.norm(q), passages)
    assert np.argmax(free) == 1 and free[1] > 0.9 and abs(free[0]) < 0.5 and free[2] < free[1] - 0.5


@pytest.mark.parametrize(("q", "want"), [
    ("Which remote command switches the output of the PS-305 off?", "OUT0"),  # was: the USB baud-rate sentence
    ("Which court has jurisdiction over disputes under the Apache License?", None),  # was: the boilerplate notice
])
def test_a_sentence_that_only_shares_the_topic_neither_answers_nor_blocks_abstaining(col, q, want):
    ans = answer(col, q)
    if want is None:
        assert ans.abstained and not ans.citations, ans.text
    else:
        assert not ans.abstained and has_word(ans.text, want), ans.text


def test_long_and_foreign_questions(col):
    long_q = "Which user do some web servers run as? " + "Thanks a lot for any help with this. " * 300
    ans = answer(col, long_q)
    assert len(ans.question) <= 1000 and "first 9" in ans.notes[0]  # answered from its first part, and says so
    assert ans.abstained or "www-data" in ans.text  # the filler may drown the question: then it says so plainly
    ans = answer(col, "Welcher Benutzer betreibt Webserver? " * 3)  # German: must not crash
    assert isinstance(ans.abstained, bool) and ans.text


# --- session 10: the asked attribute's form, identifiers no document has, "how <adjective>" -------------------------


@pytest.mark.parametrize(("q", "words"), [
    ("What is the maximum output current of the PS-305?", ["maximum", "output", "current"]),
    ("What are Ingrid Novak's office hours?", ["ingrid", "novak", "office", "hours"]),
    ("In which apt version was it added?", ["apt", "version"]),
    ("Which suffix sets a timeout duration in minutes?", ["suffix", "sets"]),  # the head is not "duration"
    ("How heavy is it?", []), ("", [])])
def test_the_asked_attribute_is_the_wh_phrase_up_to_its_first_function_word(q, words):
    assert asked_attribute(q) == words


@pytest.mark.parametrize(("q", "quote", "missing"), [
    # a quantity needs a number ...
    ("What are Ingrid Novak's office hours?", "Ingrid Novak has the key; ask her during office hours.", True),
    ("What are Ingrid Novak's office hours?", "Her office hours are 9 to 11 on Mondays.", False),
    ("What is the telephone number of Heron service?", "Include the serial number and the fault.", True),
    ("What is the numeric value of the HUP signal?", "SIGNAL may be a name like 'HUP' or a number.", True),
    # ... and the attribute's name or a measurement with a unit
    ("What is the output impedance of the PS-305?", "The PS-305 is a class I instrument with a three-wire cord.",
     True),
    ("What is the output impedance of the PS-305?", "Output impedance: below 5 milliohm.", False),
    ("What is the operating temperature range of the PS-305?", "Operating temperature: 0 to 40 degrees.", False),
    ("What voltage can two units reach in series?", "Two units may be connected in series to reach 60 V.", False),
    # addresses have their form
    ("What is Ingrid Novak's email address?", "Ingrid Novak has the key to the cabinet.", True),
    ("What is Ingrid Novak's e-mail address?", "Write to ingrid.novak@lab.example.org.", False),
    ("What is the website of Heron Instruments?", "Heron Instruments, Harbour Road 4, Portree.", True),
    # other questions are left alone
    ("Which lamp shows that the supply is limiting the current?", "The red CC lamp shows the mode.", False),
    ("Which suffix sets a timeout duration in minutes?", "'m' for minutes", False)])
def test_a_quantity_or_address_question_needs_a_quote_of_that_form(q, quote, missing):
    assert asked_form_missing(q, quote) is missing


@pytest.mark.parametrize("q", ["What is the fax number of Heron Instruments customer service?",
                               "What are the opening hours of Heron Instruments?",
                               "What is the e-mail address of Heron Instruments customer service?",
                               "What is the output resistance of the PS-305?"])
def test_abstains_when_the_asked_quantity_or_address_is_not_in_the_best_quote(col, q):
    # each was answered with a related sentence before the rule (the service paragraph, the address, the presets)
    ans = answer(col, q)
    assert ans.abstained and not ans.citations, ans.text


@pytest.mark.parametrize(("q", "want"), [("What is the default over-voltage protection threshold?", "31 V"),
                                         ("What is the operating temperature range of the PS-305?", "40 degrees")])
def test_a_quantity_the_documents_give_is_still_answered(col, q, want):
    ans = answer(col, q)
    assert not ans.abstained and has_word(ans.text, want), ans.text


def test_an_identifier_no_document_has_asks_for_stronger_evidence_and_is_named(col):
    assert question_identifiers("Is the PS-310 v2.3 like the PS-305 (error E03, RFC 1234, version 2.0)?") == {
        "PS-310": ["310"], "v2.3": ["v2"], "PS-305": ["305"], "E03": ["e03"]}
    assert unmentioned(col, "Does the PS-310 show E03 like the PS-305?") == ["PS-310"]
    # "Weight: 2.4 kg." scores above the plain threshold, so without the bar this was answered for the wrong model
    ans = answer(col, "What is the weight of the Heron PS-320?")
    assert ans.abstained and not ans.citations and any("never mention PS-320" in n for n in ans.notes)
    ans = answer(col, "What does error E07 mean on the PS-305?")  # the manual lists E01-E03 only
    assert ans.abstained and any("never mention E07" in n for n in ans.notes)
    ans = answer(col, "What does error E03 mean on the PS-305?")
    assert not ans.abstained and "temperature sensor" in ans.text and not ans.notes


def test_how_heavy_is_answered_by_the_weight():
    q, texts = "How heavy is the supply?", ["Weight: 2.4 kg.", "The supply is heavy-duty.", "It has three presets."]
    assert with_attribute_words(q, texts) == ["Weight: 2.4 kg. heavy", "The supply is heavy-duty.",
                                              "It has three presets."]
    assert with_attribute_words("Which lamp shows the mode?", texts) == texts
    plain, attributed = lexical_coverage(q, texts), lexical_coverage(q, with_attribute_words(q, texts))
    assert plain[0] == 0 and attributed[0] > 0 and attributed[2] == 0


def test_how_heavy_question_quotes_the_weight(col):
    q = question(37)  # "How heavy is the Heron bench supply?": abstained before (the title sentence scored best)
    ans = answer(col, q["q"])
    assert not ans.abstained and has_word(ans.text, q["answer"]), ans.text


def test_an_excerpt_never_starts_inside_a_sentence_it_grew_over():
    text = ("-k, --kill-after=DURATION\n\nalso send a KILL signal if COMMAND is still running\n\n"
            "this long after the initial signal was sent\n\n-s, --signal=SIGNAL\n\nspecify the signal to send.\n\n"
            "It is rare.")
    cands = candidates(1, text)
    assert [c.text[:6] for c in cands] == ["-k, --", "this l", "-s, --", "It is "]
    # the best is the -s option; a near-best continuation before it pulls the excerpt back to its sentence's start
    e = excerpt(cands, np.array([0.0, 1.8, 2.0, 0.0]), 2, margin=0.3)
    assert e.text.startswith("-k, --kill-after=DURATION also send") and e.text.endswith("It is rare.")
    assert text[e.start : e.end].startswith("-k, --kill-after")
