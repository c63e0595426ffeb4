"""Documents tab: upload files into a named collection (per-file results, progress), list and delete documents,
ask questions with a streamed, cited answer and a sources table. Retrieval and answering are ``rag``.

Adding files is a job of the server's JobManager (``ui.jobs``): it shows files and chunks done, can be stopped
(nothing is added then), waits its turn behind a training job, and a reloaded page shows it again."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr

from ui.job_panel import create_task_panel, stop_job, task_poll
from ui.jobs import JobBusyError, JobManager
from ui.models import ModelRegistry
from ui.remote_panel import remote_on

DEFAULT_COLLECTION = "my-documents"
MODES = [("Hybrid (dense + BM25, fused)", "hybrid"), ("Dense (embeddings)", "dense"), ("BM25 (keywords)", "bm25")]
ANSWER_MODES = [("Grounded: quote the best sentence and cite it, or say it is not there", "grounded"),
                ("Reader (learned, experimental): quote the sentence a small trained model picks, or say it is "
                 "not there", "reader"),
                ("Extractive: the three best-matching sentences", "extractive"),
                ("Generative: the model writes the answer (slow; best with a larger model)", "generative")]
NO_FILES = "Choose one or more files first (.txt, .md, .pdf, .docx, .html), then press Add."
NO_QUESTION = "Type a question about your documents first."
SOURCE_HEADERS = ["#", "file", "page", "snippet", "score", "cited"]
DOC_HEADERS = ["id", "file", "type", "pages", "chunks", "characters"]
RESULT_HEADERS = ["file", "result", "details"]
FILE_TYPES = [".txt", ".md", ".pdf", ".docx", ".html", ".htm"]
KIND = "ingest"  # the JobManager kind of an upload
STAGES = {"load": (0.0, 0.25, "reading files"), "embed": (0.25, 0.95, "embedding chunks"),
          "save": (0.95, 1.0, "saving the index")}
_STOP: dict[str, threading.Event] = {}


def rag_dir(request: gr.Request | None = None) -> Path:
    """The collections folder of whoever sent ``request`` (``ui.users.workspace``): theirs alone."""
    from ui.users import workspace

    return workspace(request).rag_dir


def collection_names(request: gr.Request | None = None) -> list[str]:
    """The names of the requester's collections (no collection is opened, no SQLite read)."""
    from rag import collection_names as names

    try:
        return names(rag_dir(request))
    except Exception:  # a damaged folder must not take the tab down
        return []


def open_collection(name: str | None, create: bool = False, request: gr.Request | None = None) -> Any:
    from rag import Collection

    name = (name or "").strip()
    if not name:
        raise gr.Error("Choose a collection or type a name for a new one.")
    try:
        return Collection.open(name, data_dir=rag_dir(request), create=create)
    except FileNotFoundError as e:
        raise gr.Error(f"There is no collection named '{name}' yet: upload files into it first.") from e
    except ValueError as e:
        raise gr.Error(str(e)) from e


def collection_rows(col: Any) -> list[list[Any]]:
    """The documents table of an open collection."""
    return [[d.doc_id, d.source, d.kind, d.n_pages, d.n_chunks, d.n_chars] for d in col.documents()]


def documents_rows(name: str | None, request: gr.Request | None = None) -> list[list[Any]]:
    """The documents table of the requester's collection ``name`` (empty when there is none by that name)."""
    from rag import check_collection_name

    try:
        if not name or not (rag_dir(request) / check_collection_name(name) / "collection.json").is_file():
            return []
    except ValueError:
        return []
    return collection_rows(open_collection(name, request=request))


def doc_choices(rows: list[list[Any]]) -> list[tuple[str, str]]:
    return [(f"{r[1]} ({r[0][:8]})", r[0]) for r in rows]


def _upload_items(files: list[Any] | None) -> list[tuple[str, str]]:
    """Gradio upload paths with the user's original file names for display and errors."""
    items = []
    for f in files or []:
        path = f if isinstance(f, str) else getattr(f, "name", None) or getattr(f, "path", None)
        if path:
            items.append((str(path), os.path.basename(str(getattr(f, "orig_name", None) or path))))
    return items


def _upload_bytes(items: list[tuple[str, str]]) -> int:
    total = 0
    for path, _ in items:
        try:
            total += os.path.getsize(path) if os.path.isfile(path) else 0
        except OSError:
            pass
    return total


def _keep_within_quota(col: Any, report: Any, ws: Any) -> str:
    """Undo what this ingest added when it took a scratch space past its quota (what was there before stays);
    returns the reason in words, or "" when it fits."""
    from ui.users import QuotaExceeded

    try:
        ws.check_room()
        return ""
    except QuotaExceeded as e:
        for fr in report.added:
            try:
                col.delete(fr.doc_id)
            except KeyError:
                pass
            fr.status, fr.error, fr.n_chunks = "error", "not kept: the scratch space is full", 0
        return str(e)


def ingest_files(files: list[Any] | None, name: str | None, progress: Any = None,
                 request: gr.Request | None = None,
                 stop_event: threading.Event | None = None) -> tuple[list[list[Any]], str, list[list[Any]]]:
    """Ingest uploads into the requester's collection ``name`` (created if new): (per-file results, summary,
    documents). ``progress(fraction, desc=...)`` hears files read and chunks embedded; ``stop_event`` stops it
    between files or embedding batches (``rag.Cancelled``: nothing is added). On a scratch space with a quota,
    uploads that would not fit are refused in words."""
    from ui.users import workspace

    items = _upload_items(files)
    if not items:
        raise ValueError(NO_FILES)
    ws = workspace(request)
    ws.check_room(_upload_bytes(items))  # QuotaExceeded is a ValueError: shown beside the button
    col = open_collection(name, create=True, request=request)

    def cb(stage: str, done: int, total: int) -> None:
        if progress is None:
            return
        lo, hi, what = STAGES.get(stage, (0.0, 1.0, stage))
        progress(lo + (hi - lo) * (done / total if total else 1.0), desc=f"{what} ({done}/{total})")

    report = col.ingest(items, progress=cb, stop_event=stop_event)
    full = _keep_within_quota(col, report, ws)
    results = []
    for fr in report.files:
        if fr.status == "added":
            res, det = "✅ added", f"{fr.n_chunks} chunks" + (f"; {'; '.join(fr.warnings)}" if fr.warnings else "")
        elif fr.status == "duplicate":
            res, det = "↔️ already there", f"same content as document {fr.doc_id}"
        else:
            res, det = "❌ error", fr.error or "could not be read"
        results.append([fr.source, res, det])
    n_err = len(report.errors)
    summary = (f"**{col.name}**: {len(report.added)} file(s) added ({report.n_chunks} chunks) in "
               f"{report.seconds:.1f} s" + (f", **{n_err} file(s) rejected** (see the table)" if n_err else "") + ".")
    if full:
        summary = f"⚠️ {full}"
    return results, summary, collection_rows(col)


def run_ingest(job: Any, files: list[Any], name: str, request: gr.Request | None = None) -> None:
    """Runner for the JobManager: :func:`ingest_files` reporting into ``job``; its result is what the tab shows
    (``{"collection", "results", "summary"}``)."""
    from rag import Cancelled

    def progress(fraction: float, desc: str = "") -> None:
        job.progress(fraction, desc)

    try:
        results, summary, _ = ingest_files(files, name, progress, request, stop_event=job.stop_event)
    except Cancelled:
        job.result = {"collection": name, "results": [], "summary": "⏹️ Stopped: nothing was added."}
        job.add_log("stopped: nothing was added")
        return None
    job.result = {"collection": name, "results": results, "summary": summary}
    job.add_log(summary.replace("**", ""))
    return None


def start_ingest(files: list[Any] | None, name: str | None, jobs: JobManager,
                 request: gr.Request | None = None) -> str:
    """The Add button: check the request now (files chosen, a valid name, room in a scratch space's quota), then
    ingest as a job (waiting its turn behind a running one). Returns the line beside the button; a ValueError
    in words when there is nothing to start."""
    from rag import check_collection_name
    from ui.users import workspace

    items = _upload_items(files)
    if not items:
        raise ValueError(NO_FILES)
    name = (name or "").strip()
    if not name:
        raise ValueError("Choose a collection or type a name for a new one.")
    check_collection_name(name)  # ValueError in words
    workspace(request).check_room(_upload_bytes(items))
    paths = [p for p, _ in items]
    shown = [n for _, n in items]
    title = f"{len(items)} file(s) → {name}" if len(items) > 1 else f"{shown[0]} → {name}"
    files = [SimpleNamespace(name=p, orig_name=n) for p, n in zip(paths, shown, strict=True)]
    try:
        job = jobs.start(KIND, title, lambda job: run_ingest(job, files, name, request))
    except JobBusyError as e:
        raise ValueError(str(e)) from e
    return jobs.started_message(job, f"⏳ Adding {len(items)} file(s) to **{name}**…")


def ingest_panel(jobs: JobManager, seen: tuple | None) -> tuple[Any, ...]:
    """The ingest job's (status, progress, log, seen, per-file results, summary, collection): the last three
    once when a job ends (the collection it filled, else None), else unchanged."""
    status, prog, log, snap, seen = task_poll(KIND, jobs, seen)
    if snap is None or snap["status"] in ("queued", "starting", "running"):
        return status, prog, log, seen, gr.skip(), gr.skip(), None
    res = snap.get("result") or {}
    if snap["status"] == "failed":
        return status, prog, log, seen, gr.skip(), f"❌ {snap.get('error') or 'the upload failed'}", None
    if snap["status"] == "cancelled":
        return status, prog, log, seen, gr.skip(), "🚫 Cancelled before it started: nothing was added.", None
    return status, prog, log, seen, res.get("results", []), res.get("summary", ""), res.get("collection")


def delete_document(name: str | None, doc_id: str | None,
                    request: gr.Request | None = None) -> tuple[str, list[list[Any]]]:
    if not doc_id:
        raise gr.Error("Pick a document to delete.")
    col = open_collection(name, request=request)
    try:
        col.delete(doc_id)
    except KeyError as e:
        raise gr.Error(str(e).strip("'\"")) from e
    return f"Deleted document {doc_id[:8]} from **{col.name}**.", collection_rows(col)


def sources_rows(stream: Any) -> list[list[Any]]:
    cited = {s.n for s in stream.citations} if stream.text else set()
    return [[s.n, s.source, "" if s.page is None else s.page, s.snippet, round(float(s.score), 4),
             "✓" if s.n in cited else ""] for s in stream.sources]


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def evidence_markdown(stream: Any) -> str:
    """The cited passage with the sentence the answer rests on highlighted (grounded mode), so it can be checked."""
    for s in stream.citations[:1]:
        if s.highlight:
            a, b = s.highlight
            where = f"{s.source}, page {s.page}" if s.page is not None else s.source
            body = (_escape(" ".join(s.text[:a].split())) + " <mark>" + _escape(" ".join(s.text[a:b].split()))
                    + "</mark> " + _escape(" ".join(s.text[b:].split())))
            return f"\n\n---\n**Supporting passage [{s.n}]** ({_escape(where)}):\n\n> {body.strip()}"
    return ""


def answer_markdown(stream: Any) -> str:
    notes = "".join(f"\n\n*{n}*" for n in stream.notes)
    text = stream.text.strip() or "*(no answer)*"
    if getattr(stream, "abstained", False) and stream.answer_mode != "generative":
        text = f"🤷 {text}"
    return text + evidence_markdown(stream) + notes


def ask(question: str, name: str | None, mode: str, k: int, answer_mode: str, model_key: str | None,
        registry: ModelRegistry, request: gr.Request | None = None,
        remote: dict | None = None) -> Iterator[tuple[str, list[list[Any]]]]:
    """Stream (answer markdown, sources rows). The answering model is loaded only for generative answers; with
    ``remote`` on (the Chat tab's OpenAI-compatible server, kept in this browser) it is that server's model."""
    from rag import answer_stream
    from rag.llm import CoreLLM

    if not (question or "").strip():
        raise ValueError(NO_QUESTION)
    col = open_collection(name, request=request)
    registry = registry.for_request(request)  # an answering model of one's own, or the shared default
    stop = _STOP.setdefault(getattr(request, "session_hash", None) or "local", threading.Event())
    stop.clear()

    def load_llm() -> Any:
        if remote_on(remote):
            from api.remote import RemoteLLM

            return RemoteLLM(remote["url"], remote["model"], remote.get("key") or None)
        try:
            lm = registry.get(model_key)
        except Exception as e:
            raise RuntimeError(f"Could not load the answering model ({e}); choose the grounded answer mode, "
                               "which needs no model.") from e
        return CoreLLM.from_model(lm.model, lm.tokenizer, name=lm.entry.key)

    if answer_mode == "generative":
        yield "⏳ *retrieving passages and loading the model…*", []
    try:
        stream = answer_stream(col, question, k=int(k), mode=mode, llm=load_llm, answer_mode=answer_mode,
                               stop_event=stop)
    except (ValueError, RuntimeError) as e:
        raise gr.Error(str(e)) from e
    rows = sources_rows(stream)
    yield "", rows
    for _ in stream:
        yield stream.text, rows
    yield answer_markdown(stream), sources_rows(stream)


def _shared() -> bool:
    from ui.users import shared_deployment

    return shared_deployment()


def _stop_answer(request: gr.Request) -> None:
    _STOP.setdefault(getattr(request, "session_hash", None) or "local", threading.Event()).set()


def _add_column(names: list[str]) -> dict[str, Any]:
    """Step 1's controls: the collection, the upload and its job panel, the documents and Delete."""
    c: dict[str, Any] = {}
    gr.Markdown("### 1 · Add documents")
    c["coll"] = gr.Dropdown(names or [DEFAULT_COLLECTION], value=(names or [DEFAULT_COLLECTION])[0],
                            allow_custom_value=True, label="Collection", elem_id="doc-collection",
                            info="Pick one, or type a new name to create it")
    c["files"] = gr.File(file_count="multiple", file_types=FILE_TYPES, label="Files (.txt .md .pdf .docx .html)",
                         elem_id="doc-files", height=140)
    with gr.Row():
        c["ingest_btn"] = gr.Button("Add to collection", variant="primary", elem_id="doc-ingest", scale=3)
        c["ingest_stop"] = gr.Button("Stop adding", variant="stop", elem_id="doc-ingest-stop", scale=1)
    c["ingest_msg"] = gr.Markdown(elem_id="doc-ingest-msg")
    c["panel"] = create_task_panel(KIND)
    c["ingest_summary"] = gr.Markdown(elem_id="doc-ingest-summary")
    c["results"] = gr.Dataframe(headers=RESULT_HEADERS, label="Per-file results", interactive=False, wrap=True,
                                elem_classes=["per-file-errors"], elem_id="doc-results")
    gr.Markdown("### Documents in the collection")
    c["docs"] = gr.Dataframe(headers=DOC_HEADERS, interactive=False, wrap=True, max_height=260, elem_id="doc-list")
    with gr.Row():
        c["doc_pick"] = gr.Dropdown([], label="Document", scale=4)
        c["delete_btn"] = gr.Button("Delete", variant="stop", scale=1, size="sm")
    c["delete_msg"] = gr.Markdown()
    return c


def _ask_column(registry: ModelRegistry) -> dict[str, Any]:
    """Step 2's controls: the question, retrieval and answer settings, the answer and its sources."""
    c: dict[str, Any] = {}
    gr.Markdown("### 2 · Ask")
    c["question"] = gr.Textbox(label="Question", placeholder="What does the document say about …?",
                               elem_id="doc-question", lines=2)
    with gr.Row():
        c["mode"] = gr.Dropdown(MODES, value="hybrid", label="Retrieval", scale=3)
        c["k"] = gr.Slider(1, 10, value=4, step=1, label="Passages (k)", scale=2)
    c["answer_mode"] = gr.Radio(ANSWER_MODES, value="grounded", label="Answer", elem_id="doc-answer-mode")
    c["model"] = gr.Dropdown(registry.choices(), value=registry.default_key, label="Answering model",
                             info="used by the generative answer; pick a larger instruct model if you have one, "
                                  "or connect a server in the Chat tab (“Use an OpenAI-compatible server”)")
    with gr.Row():
        c["ask_btn"] = gr.Button("Ask", variant="primary", elem_id="doc-ask")
        c["stop_btn"] = gr.Button("Stop", variant="stop")
    c["ask_status"] = gr.Markdown(elem_id="doc-ask-status")
    c["answer_md"] = gr.Markdown(elem_id="doc-answer", min_height=80)
    c["sources"] = gr.Dataframe(headers=SOURCE_HEADERS, label="Sources (the numbers the answer cites)",
                                interactive=False, wrap=True, elem_id="doc-sources",
                                column_widths=["5%", "18%", "7%", "55%", "9%", "6%"])
    return c


def _wire_add(c: dict[str, Any], jobs: JobManager) -> dict[str, Any]:
    """Step 1's events (upload job, its panel, the list, Delete); returns the page-load event's arguments."""
    coll, docs, doc_pick, panel = c["coll"], c["docs"], c["doc_pick"], c["panel"]

    def _refresh(current, request: gr.Request):
        ns = collection_names(request)
        value = current if current in ns else (ns[0] if ns else DEFAULT_COLLECTION)
        rows = documents_rows(value, request)
        return gr.update(choices=ns or [DEFAULT_COLLECTION], value=value), rows, gr.update(
            choices=doc_choices(rows), value=None)

    def _load(current, request: gr.Request):
        """A (re)loaded page: the collections, and the upload job running, waiting or last ended."""
        return (*_refresh(current, request), *ingest_panel(jobs, None)[:6])

    def _tick(seen, request: gr.Request):
        *shown, filled = ingest_panel(jobs, seen)
        if filled is None:
            return (*shown, gr.skip(), gr.skip(), gr.skip())
        rows = documents_rows(filled, request)  # the collection the job filled, listed once when it ends
        return (*shown, rows, gr.update(choices=doc_choices(rows), value=None),
                gr.update(choices=collection_names(request) or [DEFAULT_COLLECTION], value=filled))

    def _show_docs(name, request: gr.Request):
        rows = documents_rows(name, request)
        return rows, gr.update(choices=doc_choices(rows), value=None)

    def _ingest(f, name, request: gr.Request):
        try:
            msg = start_ingest(f, name, jobs, request)
        except ValueError as e:  # nothing to add, or no room: say so beside the button, leave the rest alone
            gr.Warning(str(e))
            return f"⚠️ {e}", gr.update()
        return msg, None

    def _delete(name, doc_id, request: gr.Request):
        msg, rows = delete_document(name, doc_id, request)
        return msg, rows, gr.update(choices=doc_choices(rows), value=None)

    def _names(request: gr.Request):
        return gr.update(choices=collection_names(request) or [DEFAULT_COLLECTION])

    coll.change(_show_docs, coll, [docs, doc_pick])
    coll.focus(_names, None, coll, queue=False)
    shown = [panel["status"], panel["progress"], panel["log"], panel["seen"], c["results"], c["ingest_summary"]]
    c["ingest_btn"].click(_ingest, [c["files"], coll], [c["ingest_msg"], c["files"]])
    c["ingest_stop"].click(lambda: stop_job(KIND, jobs, "Stopping after the current file or batch; nothing is "
                                                        "added."), None, c["ingest_msg"], queue=False)
    panel["timer"].tick(_tick, panel["seen"], [*shown, docs, doc_pick, coll], show_progress="hidden",
                        concurrency_limit=None)
    c["delete_btn"].click(_delete, [coll, doc_pick], [c["delete_msg"], docs, doc_pick])
    return dict(fn=_load, inputs=coll, outputs=[coll, docs, doc_pick, *shown])


def _wire_ask(c: dict[str, Any], coll: Any, registry: ModelRegistry, remote_state: Any) -> None:
    """Step 2's events: Ask (button or Enter) streams the answer; Stop ends it."""

    def _ask(q, name, md, kk, am, mk, rem, request: gr.Request):
        try:
            for text, rows in ask(q, name, md, kk, am, mk, registry, request, rem):
                yield text, rows, ""
        except ValueError as e:  # an empty question: the reason beside the button, the last answer stays
            gr.Warning(str(e))
            yield gr.update(), gr.update(), f"⚠️ {e}"

    inputs = [c["question"], coll, c["mode"], c["k"], c["answer_mode"], c["model"],
              remote_state if remote_state is not None else gr.State(None)]
    outputs = [c["answer_md"], c["sources"], c["ask_status"]]
    c["ask_btn"].click(_ask, inputs, outputs, concurrency_limit=4, concurrency_id="chat-generate")
    c["question"].submit(_ask, inputs, outputs, concurrency_limit=4, concurrency_id="chat-generate")
    c["stop_btn"].click(_stop_answer, None, None, queue=False)
    c["model"].focus(lambda: gr.update(choices=registry.choices()), None, c["model"], queue=False)


def create_documents_tab(registry: ModelRegistry, private: bool = False, remote_state: Any = None,
                         jobs: JobManager | None = None) -> dict[str, Any]:
    """``private``: a shared deployment (login, a Space): nothing is listed at build time; each person's own
    collections arrive on page load. ``remote_state``: the Chat tab's OpenAI-compatible server (BrowserState); when
    it is on, generative answers come from that server. ``jobs``: the JobManager uploads run in (default: JOBS)."""
    from ui.jobs import JOBS

    jobs = JOBS if jobs is None else jobs
    names = [] if private or _shared() else collection_names()
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            add = _add_column(names)
        with gr.Column(scale=3):
            asking = _ask_column(registry)
    on_load = _wire_add(add, jobs)
    _wire_ask(asking, add["coll"], registry, remote_state)
    return dict(collection=add["coll"], panel=add["panel"], on_load=on_load)
