"""The OpenAI-compatible HTTP API under ``/v1``: models, chat completions, completions, embeddings.

Any OpenAI client (the ``openai`` package, Open WebUI, LangChain, curl) can talk to the studio's models:

    POST /v1/chat/completions  {"model": "smollm2-135m-instruct", "messages": [...], "stream": true}

Models are the studio's own (``ui.models.ModelRegistry``, shared with the UI when mounted beside it): the default
model, pretrained checkpoints by folder name, LoRA adapters as ``<base>+<adapter>``. Sampling fields a request
leaves out take the model's own defaults (``llm_core.generation.chat.chat_defaults``), as the Chat tab does.
Extension: a chat request with ``"collection": "<name>"`` answers from that document collection the way the
Documents tab does (``rag.answer``), and the response carries ``sources``.
"""

from __future__ import annotations

import base64
import dataclasses
import hmac
import json
import os
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from .logprobs import chat_logprobs, chat_top_logprobs, completion_logprobs, completion_top_logprobs
from .schemas import ROLES, APIError, ChatRequest, CompletionRequest, EmbeddingRequest, Sampling

MAX_PROMPT_CHARS = 200_000  # refused before tokenizing: no model here has a context this long
MAX_EMBED_INPUTS = 256
MAX_GENERATIONS = 8  # decoding at once; more requests get 429 (on 2 cores more streams only slow everyone down)
_SLOTS = threading.BoundedSemaphore(MAX_GENERATIONS)
EMBED_MODEL = "all-MiniLM-L6-v2"


# ---- models -----------------------------------------------------------------------------------------------------
def model_ids(registry: Any) -> dict[str, str]:
    """API model id -> registry key: the default model's name, checkpoints by folder name, adapters as
    ``<base>+<adapter folder>``."""
    from ui.models import BASE, CKPT, adapter_base_model

    out: dict[str, str] = {}
    for e in registry.entries():
        if e.kind == BASE:
            out[e.ref] = e.key
        elif e.kind == CKPT:
            out.setdefault(Path(e.ref).name, e.key)
        else:
            base = adapter_base_model(Path(e.ref)) or registry.default_model
            out.setdefault(f"{Path(base).name}+{Path(e.ref).name}", e.key)
    return out


def resolve_model(registry: Any, name: str | None) -> tuple[str, Any]:
    """(id, LoadedModel) for a request's ``model``; a missing one means the default model."""
    ids = model_ids(registry)
    if not name:
        name = next(iter(ids))
    if name not in ids:
        raise APIError(404, f"The model {name!r} does not exist. Available: {', '.join(ids)}.", "model",
                       "model_not_found")
    try:
        return name, registry.get(ids[name])
    except Exception as e:  # noqa: BLE001 - any load failure is answered in words
        from ui.errors import readable_error

        raise APIError(500, f"The model {name!r} could not be loaded: {readable_error(e)}", "model",
                       type_="server_error") from e


# ---- sampling ---------------------------------------------------------------------------------------------------
def generation_config(req: Sampling, lm: Any, n_prompt: int) -> Any:
    """The model's defaults, overridden by what the request sets; bad values are refused with their field."""
    from llm_core.generation.chat import chat_defaults

    if req.n != 1:
        raise APIError(400, "Only n=1 is supported: ask again for another sample.", "n")
    cfg = dataclasses.replace(chat_defaults(lm.model, lm.tokenizer).config)
    block = int(lm.model.config.block_size)
    room = block - n_prompt
    if room < 1:
        raise APIError(400, f"The prompt is {n_prompt:,} tokens; this model's context is {block:,} tokens. "
                       "Shorten the prompt.", "messages" if isinstance(req, ChatRequest) else "prompt",
                       "context_length_exceeded")
    wanted = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    if wanted is not None and not 0 < wanted <= room:
        raise APIError(400, f"{param} must be between 1 and {room:,} (the context left after the "
                       f"{n_prompt:,}-token prompt); got {wanted:,}.", param)
    cfg.max_new_tokens = wanted if wanted is not None else min(cfg.max_new_tokens, room)
    if req.temperature is not None:
        cfg.temperature = req.temperature
    if req.top_p is not None:
        cfg.top_p = req.top_p
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > 4 or any(not s for s in stops):
        raise APIError(400, "stop takes up to 4 non-empty strings.", "stop")
    cfg.stop = stops
    cfg.seed = req.seed
    try:
        cfg.validate()
    except ValueError as e:
        raise APIError(400, str(e), "seed" if "seed" in str(e) else None) from e
    return cfg


def chat_prompt(req: ChatRequest, lm: Any) -> list[int]:
    if not req.messages:
        raise APIError(400, "messages must hold at least one message.", "messages")
    for i, m in enumerate(req.messages):
        if m.role not in ROLES:
            raise APIError(400, f"messages[{i}].role {m.role!r} is not one of {', '.join(ROLES)}.",
                           f"messages[{i}].role")
    msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
    if sum(len(m["content"]) for m in msgs) > MAX_PROMPT_CHARS:
        raise APIError(400, f"The messages hold over {MAX_PROMPT_CHARS:,} characters, far more than this "
                       "model's context. Shorten them.", "messages", "context_length_exceeded")
    if not getattr(lm.tokenizer, "chat_template", None):
        raise APIError(400, "This model has no chat template (it continues text): use /v1/completions.", "model")
    from llm_core.generation.chat import build_chat_prompt

    return build_chat_prompt(lm.tokenizer, msgs)


def completion_prompt(req: CompletionRequest, lm: Any) -> list[int]:
    if isinstance(req.prompt, list):
        if len(req.prompt) != 1:
            raise APIError(400, "Send one prompt per request (a list of several is not supported).", "prompt")
        req.prompt = req.prompt[0]
    if len(req.prompt) > MAX_PROMPT_CHARS:
        raise APIError(400, f"The prompt is over {MAX_PROMPT_CHARS:,} characters, far more than this model's "
                       "context. Shorten it.", "prompt", "context_length_exceeded")
    tok = lm.tokenizer
    ids = tok.encode_prompt(req.prompt, allowed_special=set())  # with BOS in front where the model wants it (Gemma)
    if not ids or (tok.add_bos_token and ids == [tok.bos_token_id]):
        raise APIError(400, "The prompt is empty.", "prompt")
    return ids


# ---- generation -------------------------------------------------------------------------------------------------
BATCHING = os.environ.get("STUDIO_BATCHING", "1") != "0"  # concurrent streams share decode steps


def batchable(lm: Any, cfg: Any) -> bool:
    """True for a plain local model (no adapter switched on/off per reply, not wrapped by PEFT) with a KV cache:
    its requests join the shared decode loop of ``llm_core.generation.batching`` (logprobs ones too: their recorder
    observes their row there). An adapter, switched on and off per reply, keeps its own loop."""
    from llm_core.model.gpt import GPT

    core = getattr(lm, "core", None)
    return (BATCHING and cfg.use_cache and type(lm.model) is GPT
            and core is not None and getattr(core, "adapter", None) is None)


class Generation:
    """One generation in its own thread; pieces arrive on a queue. ``stop()`` (a client that went away) ends it
    after the current token, so no thread keeps decoding for nobody. With ``top`` (logprobs asked for), a
    ``llm_core.labs.token_view.TokenRecorder`` records every token while it is generated."""

    def __init__(self, lm: Any, prompt_ids: list[int], cfg: Any, top: int | None = None) -> None:
        from llm_core.generation.generate import GenerationStats
        from llm_core.labs.token_view import TokenRecorder

        self._slots = _SLOTS  # released by the worker even if the module's semaphore is swapped meanwhile
        if not self._slots.acquire(blocking=False):
            raise APIError(429, f"The server is already answering {MAX_GENERATIONS} requests; try again shortly.",
                           type_="rate_limit_error", code="server_busy")
        self.lm, self.prompt_ids, self.cfg = lm, prompt_ids, cfg
        self.stats = GenerationStats()
        self.top = top
        self.recorder = TokenRecorder(lm.tokenizer, cfg) if top is not None else None
        self.n_tokens = 0  # tokens behind the pieces read so far (their logprobs go with them)
        self._sent = 0  # tokens whose logprobs were handed out (streaming)
        self._ids: list[int] = []
        self.stop_event = threading.Event()
        self._q: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._work, name="api-generation", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        from llm_core.generation.generate import stream_generate

        lm = self.lm
        try:
            with lm.generating():
                if batchable(lm, self.cfg):  # shares decode steps with the others
                    from llm_core.generation.batching import scheduler_for

                    stream = scheduler_for(lm.model, lm.tokenizer).submit(
                        self.prompt_ids, self.cfg, stop_event=self.stop_event, stats=self.stats, observe=self.recorder)
                else:
                    stream = stream_generate(lm.model, lm.tokenizer, self.prompt_ids, self.cfg,
                                             stop_event=self.stop_event, stats=self.stats, observe=self.recorder)
                self._ids = stream.token_ids
                for piece in stream:
                    self._q.put((piece, len(stream.token_ids)))
        except Exception as e:  # noqa: BLE001 - handed to the reader, answered in words
            self._q.put(e)
        finally:
            self._slots.release()
            self._q.put(None)

    def pieces(self) -> Iterator[str]:
        while (item := self._q.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield self._take(item)

    async def apieces(self) -> AsyncIterator[str]:
        try:
            while (item := await anyio.to_thread.run_sync(self._q.get)) is not None:
                if isinstance(item, Exception):
                    raise item
                yield self._take(item)
        finally:
            self.stop_event.set()  # the client disconnected (cancelled), or the stream ended

    def _take(self, item: tuple[str, int]) -> str:
        piece, self.n_tokens = item
        return piece

    def new_steps(self) -> list[Any]:
        """The token steps behind the pieces read since the last call (streaming: they go with that chunk)."""
        if self.recorder is None:
            return []
        steps = self.recorder.steps[self._sent:self.n_tokens]
        self._sent = self.n_tokens
        return steps

    def steps(self, text: str) -> list[Any]:
        """All token steps of the finished completion ``text`` (a token cut by a stop string left out)."""
        from llm_core.generation.generate import kept_ids

        if self.recorder is None:
            return []
        return self.recorder.steps[:len(kept_ids(self.lm.tokenizer, self, text))]

    @property
    def token_ids(self) -> list[int]:
        return self._ids

    def stop(self) -> None:
        self.stop_event.set()

    @property
    def finish_reason(self) -> str:
        return "length" if self.stats.stop_reason in ("max_new_tokens", "context") else "stop"

    def usage(self) -> dict:
        p, c = len(self.prompt_ids), self.stats.new_tokens
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


def stream_response(request: Request, gen: Generation, head: dict, chunk: Any, include_usage: bool,
                    first: dict | None = None) -> StreamingResponse:
    """Server-sent events: ``first``, then ``chunk(text, finish_reason)`` objects, the usage chunk when asked,
    then [DONE]. A client that disconnects stops the generation (uvicorn drops writes to a closed connection
    silently, so the stream asks after every piece)."""

    async def events() -> AsyncIterator[str]:
        if first is not None:
            yield sse({**head, **first})
        try:
            async for piece in gen.apieces():
                if await request.is_disconnected():
                    gen.stop()
                    return
                yield sse({**head, **chunk(piece, None)})
            yield sse({**head, **chunk("", gen.finish_reason)})
            if include_usage:
                yield sse({**head, "choices": [], "usage": gen.usage()})
        except Exception as e:  # noqa: BLE001 - after the headers went out, an error can only be an event
            yield sse(APIError(500, f"Generation failed: {e}", type_="server_error").body())
        yield sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


# ---- the app ----------------------------------------------------------------------------------------------------
def _install_error_handlers(app: FastAPI) -> None:
    """Every error as OpenAI's JSON: ours with their status, a bad body as 400 naming the field, the rest as 500
    in words."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        from ui.errors import readable_error

        err = APIError(500, f"The server failed to answer: {readable_error(e)}", type_="server_error")
        return JSONResponse(err.body(), status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0] if e.errors() else {}
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        where = ".".join(loc) or None
        msg = err.get("msg", "invalid request")
        if err.get("type") == "json_invalid":
            msg, where = "The request body is not valid JSON.", None
        return JSONResponse(APIError(400, f"{where}: {msg}" if where else msg, where).body(), status_code=400)


def _install_auth(app: FastAPI, keys: dict[str, str | None], require_key: bool) -> None:
    """The bearer key on every /v1 request (its login, if any, becomes ``request.state.user``)."""

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Any:
        if request.url.path.startswith("/v1") and not request.url.path.startswith("/v1/docs"):
            err, user = match_key(request.headers.get("authorization"), keys, require_key)
            if err is not None:
                return JSONResponse(err.body(), status_code=err.status)
            request.state.user = user
        return await call_next(request)


def chat_completion(req: ChatRequest, request: Request, reg: Any) -> Any:
    """A chat completion from a local model: the whole reply, or server-sent chunks."""
    top = chat_top_logprobs(req)
    name, lm = resolve_model(reg, req.model)
    prompt = chat_prompt(req, lm)
    gen = Generation(lm, prompt, generation_config(req, lm, len(prompt)), top)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": name}
    if req.stream:
        def chunk(text: str, finish: str | None) -> dict:
            delta = {"content": text} if finish is None else {}
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            if top is not None and finish is None:  # the tokens behind this piece of text
                choice["logprobs"] = chat_logprobs(gen.new_steps(), top)
            return {"choices": [choice]}

        first = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        return stream_response(request, gen, {**head, "object": "chat.completion.chunk"}, chunk,
                               bool(req.stream_options and req.stream_options.include_usage), first)
    text = "".join(gen.pieces())
    logprobs = chat_logprobs(gen.steps(text), top) if top is not None else None
    return {**head, "object": "chat.completion", "usage": gen.usage(),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": gen.finish_reason, "logprobs": logprobs}]}


def text_completion(req: CompletionRequest, request: Request, reg: Any) -> Any:
    """A plain-text completion from a local model: the whole text, or server-sent chunks."""
    top = completion_top_logprobs(req)
    name, lm = resolve_model(reg, req.model)
    prompt = completion_prompt(req, lm)
    gen = Generation(lm, prompt, generation_config(req, lm, len(prompt)), top)
    head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": name,
            "object": "text_completion"}
    if req.stream:
        offset = [0]  # characters streamed so far: where each chunk's text_offset starts

        def chunk(text: str, finish: str | None) -> dict:
            lp = None
            if top is not None and finish is None:
                lp = completion_logprobs(gen.new_steps(), top, offset[0])
                offset[0] += len(text)
            return {"choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": lp}]}

        return stream_response(request, gen, head, chunk,
                               bool(req.stream_options and req.stream_options.include_usage))
    text = "".join(gen.pieces())
    logprobs = completion_logprobs(gen.steps(text), top) if top is not None else None
    return {**head, "usage": gen.usage(),
            "choices": [{"index": 0, "text": text, "finish_reason": gen.finish_reason, "logprobs": logprobs}]}


def create_api(registry: Any, api_key: str | None = None, require_key: bool = False,
               rag_dir: str | Path | None = None, api_keys: dict[str, str | None] | None = None,
               key_user: str | None = None, backend: Any = None) -> FastAPI:
    """The ``/v1`` app. With ``api_key`` every request needs ``Authorization: Bearer <key>``; with
    ``require_key`` and no key (a server reachable beyond loopback), every request is refused until one is set.
    ``rag_dir``: the folder of the document collections (default ``rag.rag_home()``).
    ``api_keys``: key -> login (``ui.users.parse_api_keys``): a request with alice's key sees only alice's
    checkpoints, adapters and collections (``ui.users.user_workspace``); ``key_user``: the login the single
    ``api_key`` acts as (None: the deployment's own data folder). ``backend``: an ``api.backend.Backend`` (an
    external OpenAI-compatible server) that answers requests for its model, and those naming none."""
    keys: dict[str, str | None] = dict(api_keys or {})
    if api_key:
        keys.setdefault(api_key, key_user)

    def scope(request: Request) -> tuple[Any, str | Path | None]:
        """(registry, collections folder) of the request's user: their own on a shared deployment."""
        user = getattr(request.state, "user", None)
        if not user:
            return registry, rag_dir
        from ui.users import user_workspace

        ws = user_workspace(user)
        return registry.scoped(ws.root), ws.rag_dir

    app = FastAPI(title="LLM Scratch Studio API", docs_url="/v1/docs", openapi_url="/v1/openapi.json")

    _install_error_handlers(app)
    _install_auth(app, keys, require_key)

    @app.get("/v1/models")
    def list_models(request: Request) -> dict:
        now = int(time.time())
        reg, _ = scope(request)
        data = [backend.listing(now)] if backend is not None else []
        data += [{"id": i, "object": "model", "created": now, "owned_by": "llm-scratch-studio"}
                 for i in model_ids(reg) if backend is None or i != backend.model]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", response_model=None)
    def chat_completions(req: ChatRequest, request: Request) -> Any:
        reg, rag = scope(request)
        if req.collection is not None:
            return collection_answer(req, rag)
        if backend is not None and backend.owns(req.model):
            return backend.forward("/chat/completions", req)
        return chat_completion(req, request, reg)

    @app.post("/v1/completions", response_model=None)
    def completions(req: CompletionRequest, request: Request) -> Any:
        if backend is not None and backend.owns(req.model):
            return backend.forward("/completions", req)
        return text_completion(req, request, scope(request)[0])

    @app.post("/v1/embeddings")
    def embeddings(req: EmbeddingRequest) -> dict:
        return embed(req)

    return app


def check_key(header: str | None, api_key: str | None, require_key: bool) -> APIError | None:
    """None when the request may pass; else the 401 to answer."""
    if not api_key:
        if require_key:
            return APIError(401, "This server is reachable beyond this computer, so its API needs a key: start it "
                            "with STUDIO_API_KEY set, and send it as 'Authorization: Bearer <key>'.",
                            type_="authentication_error", code="api_key_required")
        return None
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return APIError(401, "Missing API key: send 'Authorization: Bearer <key>'.", type_="authentication_error",
                        code="invalid_api_key")
    if not hmac.compare_digest(given.strip().encode(), api_key.encode()):
        return APIError(401, "Incorrect API key.", type_="authentication_error", code="invalid_api_key")
    return None


def match_key(header: str | None, keys: dict[str, str | None],
              require_key: bool) -> tuple[APIError | None, str | None]:
    """(None, the login the key acts as) when the request may pass; else (the 401 to answer, None)."""
    if not keys:
        return check_key(header, None, require_key), None
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return check_key(header, "-", require_key), None
    found, user = False, None
    for key, who in keys.items():  # every key compared in constant time, whichever matches
        if hmac.compare_digest(given.strip().encode(), key.encode()):
            found, user = True, who
    if not found:
        return APIError(401, "Incorrect API key.", type_="authentication_error", code="invalid_api_key"), None
    return None, user


def embed(req: EmbeddingRequest) -> dict:
    """MiniLM sentence embeddings (unit vectors, 384 numbers each), as the document search uses."""
    if req.model not in (None, EMBED_MODEL, f"sentence-transformers/{EMBED_MODEL}"):
        raise APIError(404, f"The embedding model {req.model!r} does not exist. Available: {EMBED_MODEL}.", "model",
                       "model_not_found")
    texts = [req.input] if isinstance(req.input, str) else list(req.input)
    if not texts or len(texts) > MAX_EMBED_INPUTS or any(not t.strip() for t in texts):
        raise APIError(400, f"input must be 1 to {MAX_EMBED_INPUTS} non-empty strings.", "input")
    if sum(map(len, texts)) > MAX_PROMPT_CHARS:
        raise APIError(400, f"input holds over {MAX_PROMPT_CHARS:,} characters; send fewer or shorter texts.",
                       "input")
    from rag import get_embedder

    emb = get_embedder(EMBED_MODEL)
    vecs = emb.encode(texts)
    n_tokens = sum(emb.count_tokens(t) for t in texts)
    return {"object": "list", "model": EMBED_MODEL, "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
            "data": [{"object": "embedding", "index": i, "embedding": _vector(v, req.encoding_format)}
                     for i, v in enumerate(vecs)]}


def _vector(v: Any, encoding: str) -> list[float] | str:
    """A list of floats, or (``base64``, what the openai client asks for by default) float32 bytes."""
    if encoding == "base64":
        return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()
    return [float(x) for x in v]


def collection_answer(req: ChatRequest, rag_dir: str | Path | None) -> Any:
    """The extension: the last user message answered from a document collection (grounded, cited)."""
    from rag import Collection, answer

    question = next((m.text() for m in reversed(req.messages) if m.role == "user"), "")
    if not question.strip():
        raise APIError(400, "messages must end with a user question for a collection answer.", "messages")
    try:
        col = Collection.open(req.collection, data_dir=rag_dir, create=False)
    except (FileNotFoundError, ValueError) as e:
        raise APIError(404, f"There is no document collection named {req.collection!r}.", "collection") from e
    ans = answer(col, question)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
            "model": f"collection:{req.collection}"}
    sources = [{"n": s.n, "source": Path(s.source).name, "page": s.page, "text": s.text, "highlight": s.highlight}
               for s in ans.citations or ans.sources]
    extra = {"sources": sources, "abstained": ans.abstained}
    if req.stream:
        async def events() -> AsyncIterator[str]:
            delta = {"role": "assistant", "content": ans.text}
            yield sse({**head, **extra, "object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            yield sse({**head, "object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            yield sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")
    return {**head, **extra, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ans.text}, "finish_reason": "stop"}]}
