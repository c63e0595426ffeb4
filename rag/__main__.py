"""CLI: python -m rag ingest|query|list|delete|train-reader  (see `python -m rag -h`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from .answer import ANSWER_MODES, DEFAULT_ANSWER_MODE
from .collection import DEFAULT_MAX_BYTES, Collection, list_collections, rag_home
from .retrieve import MODES


@dataclass
class RagArgs:
    command: str  # ingest | query | list | delete | train-reader
    collection: str = "default"
    paths: list[str] = field(default_factory=list)
    question: str = ""
    k: int = 5
    mode: str = DEFAULT_ANSWER_MODE  # answer mode: grounded | extractive | generative
    retrieval: str = "hybrid"
    mmr: bool = False
    json: bool = False
    extractive: bool = False  # older spelling of --mode extractive
    doc: str = ""
    data_dir: str | None = None
    embed_model: str | None = None
    llm: str = "smollm2-135m-instruct"
    llm_url: str | None = None  # an OpenAI-compatible server (its key from $OPENAI_API_KEY); --llm names its model
    max_new_tokens: int = 128
    max_file_mb: float = DEFAULT_MAX_BYTES / 2**20
    reader: dict = field(default_factory=dict)  # train-reader: TrainReaderArgs fields


def parse_args(argv: list[str] | None = None) -> RagArgs:
    p = argparse.ArgumentParser(prog="python -m rag", description="Ask questions about your documents.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=None, help="folder holding the collections (default: "
                        "$LLM_STUDIO_HOME/rag or ./data/rag)")
    common.add_argument("--json", action="store_true", help="print one JSON object")
    sub = p.add_subparsers(dest="command", required=True)
    ing = sub.add_parser("ingest", parents=[common], help="add files or folders to a collection")
    ing.add_argument("paths", nargs="+")
    ing.add_argument("--collection", "-c", default="default")
    ing.add_argument("--embed-model", default=None, help="embedding model (only when creating the collection)")
    ing.add_argument("--max-file-mb", type=float, default=DEFAULT_MAX_BYTES / 2**20)
    q = sub.add_parser("query", parents=[common], help="answer a question from a collection")
    q.add_argument("question")
    q.add_argument("--collection", "-c", default="default")
    q.add_argument("--k", type=int, default=5)
    q.add_argument("--mode", choices=ANSWER_MODES + MODES, default=DEFAULT_ANSWER_MODE,
                   help="grounded (default): the best sentence, quoted and cited, or 'not found'; extractive: the "
                   "three best sentences; generative: the LLM writes the answer (a retrieval mode given here is "
                   "taken as --retrieval, the older spelling)")
    q.add_argument("--retrieval", choices=MODES, default="hybrid")
    q.add_argument("--mmr", action="store_true", help="diversify passages (maximal marginal relevance)")
    q.add_argument("--extractive", action="store_true", help="same as --mode extractive")
    q.add_argument("--llm", default="smollm2-135m-instruct", help="answering model for --mode generative: a name, "
                   "a checkpoint or HF folder (e.g. a larger instruct model), or a .gguf file")
    q.add_argument("--llm-url", default=None, help="answer with an OpenAI-compatible server instead (e.g. "
                   "http://127.0.0.1:8080/v1 of llama.cpp, vLLM or Ollama; --llm names its model; key from "
                   "$OPENAI_API_KEY)")
    q.add_argument("--max-new-tokens", type=int, default=128)
    sub.add_parser("list", parents=[common], help="list collections and their documents")
    d = sub.add_parser("delete", parents=[common], help="delete a document from a collection")
    d.add_argument("--collection", "-c", required=True)
    d.add_argument("--doc", required=True, help="document id (or a unique prefix of at least 4 characters)")
    tr = sub.add_parser("train-reader", parents=[common], help="train the learned reader (answer mode 'reader') "
                        "on written and rule-made questions about installed packages' prose; never on the eval "
                        "questions")
    from .reader_train import TrainReaderArgs

    defaults = TrainReaderArgs()
    tr.add_argument("--out", default=defaults.out, help="folder for reader.safetensors + reader.json")
    for name in ("max_passages", "questions", "epochs", "seed", "threads"):
        tr.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    tr.add_argument("--corpus", default=None, help="folder of prose files (default: installed packages; only "
                    "with --written none)")
    tr.add_argument("--written", default=defaults.written, help="written questions and their passages (JSON, "
                    "rag/data/reader_questions.json); 'none': rule-made questions about --corpus only")
    tr.add_argument("--embed-model", default=None, help="embedding model the reader's collections use")
    ns = p.parse_args(argv)
    if ns.command == "train-reader":
        keys = ("out", "max_passages", "questions", "epochs", "seed", "threads", "corpus", "embed_model", "written")
        if ns.written and ns.written.lower() == "none":
            ns.written = None
        return RagArgs("train-reader", json=ns.json, data_dir=ns.data_dir, reader={k: getattr(ns, k) for k in keys})
    if getattr(ns, "mode", None) in MODES:  # `--mode bm25`: the retrieval mode, as before answer modes existed
        ns.retrieval, ns.mode = ns.mode, DEFAULT_ANSWER_MODE
    if getattr(ns, "extractive", False):
        ns.mode = "extractive"
    return RagArgs(**{k: v for k, v in vars(ns).items() if v is not None or k == "data_dir"})


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _train_reader(args: RagArgs) -> int:
    from .reader_train import TrainReaderArgs, tqdm_progress
    from .reader_train import main as train_main

    try:
        cfg = train_main(TrainReaderArgs(**args.reader), progress=None if args.json else tqdm_progress())
    except ValueError as e:
        return _err(str(e))
    summary = {"out": args.reader.get("out"), "seconds": cfg["seconds"], "data": cfg["data"], "metrics": cfg["metrics"]}
    print(json.dumps(summary) if args.json else "\n".join(f"{k}: {v}" for k, v in summary.items()))
    return 0


def main(args: RagArgs) -> int:
    if args.command == "train-reader":
        return _train_reader(args)
    if args.command == "list":
        cols = list_collections(args.data_dir)
        if args.json:
            out = []
            for c in cols:
                docs = Collection.open(c.name, args.data_dir, create=False).documents()
                out.append({**vars(c), "documents": [vars(d) for d in docs]})
            print(json.dumps({"data_dir": str(rag_home(args.data_dir)), "collections": out}))
        else:
            if not cols:
                print(f"no collections in {rag_home(args.data_dir)}")
            for c in cols:
                print(f"{c.name}: {c.n_documents} documents, {c.n_chunks} chunks ({c.embed_model})")
                for d in Collection.open(c.name, args.data_dir, create=False).documents():
                    print(f"  {d.doc_id}  {d.source}  ({d.n_chunks} chunks)")
        return 0
    try:
        if args.command == "ingest":
            col = Collection.open(args.collection, args.data_dir, embed_model=args.embed_model)
            report = col.ingest(args.paths, show_progress=not args.json, max_bytes=int(args.max_file_mb * 2**20))
            if args.json:
                print(json.dumps(report.to_dict()))
            else:
                for f in report.files:
                    extra = f" ({f.n_chunks} chunks, id {f.doc_id})" if f.status == "added" else ""
                    extra = f" (already there as {f.doc_id})" if f.status == "duplicate" else extra
                    print(f"{f.status:9s} {f.source}{extra}" + (f": {f.error}" if f.error else ""))  # error: no name
                    for w in f.warnings:
                        print(f"  warning: {w}")
                print(f"{len(report.added)} added, {len(report.errors)} failed, {report.n_chunks} chunks "
                      f"in {report.seconds:.1f}s -> collection {col.name!r}")
            return 1 if report.errors and not report.added else 0
        col = Collection.open(args.collection, args.data_dir, create=False)
        if args.command == "delete":
            full = col.resolve_doc_id(args.doc)
            col.delete(full)
            print(json.dumps({"deleted": full}) if args.json else f"deleted {full} from {col.name!r}")
            return 0
        return _query(col, args)
    except (FileNotFoundError, KeyError, ValueError, RuntimeError) as e:
        return _err(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))


def _query(col: Collection, args: RagArgs) -> int:
    """Answer one question; the LLM is loaded only if generative mode gets that far (not for an empty collection)."""
    from .answer import answer_stream
    from .llm import core_llm_factory

    llm = core_llm_factory(args.llm)
    if args.llm_url:
        def llm() -> Any:  # loaded (checked) only when generative mode gets that far
            from api.remote import RemoteLLM

            return RemoteLLM(args.llm_url, args.llm, os.environ.get("OPENAI_API_KEY")).check()
    stream = answer_stream(col, args.question, k=args.k, mode=args.retrieval, llm=llm,
                           answer_mode=args.mode, mmr=args.mmr, max_new_tokens=args.max_new_tokens)
    if args.json:
        res = stream.result()
        print(json.dumps({**res.to_dict(), "retrieval": args.retrieval, "collection": col.name}))
        return 0
    for note in stream.notes:
        print(f"note: {note}")
    for piece in stream:
        print(piece, end="", flush=True)
    print("\n")
    cited = {s.n for s in stream.citations}
    for s in stream.sources:
        page = f", page {s.page}" if s.page is not None else ""
        mark = "*" if s.n in cited else " "
        print(f"{mark}[{s.n}] {s.source}{page} (chunk {s.chunk_id}, score {s.score:.3f}): {s.snippet}")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
